"""A timeline as text, Markdown, JSON or HTML (`dealflow-audit timeline --format`)."""

from __future__ import annotations

import html
import json
from typing import Any

from dealflow.audit.formatting import format_money
from dealflow.audit.timeline import Entry, Timeline

_COLUMNS = ("time", "stage", "actor", "kind", "action", "details")


def _row(e: Entry) -> list[str]:
    return [e.at.strftime("%Y-%m-%d %H:%M:%S"), e.stage, e.actor, e.kind, e.action, e.details]


def _state_lines(state: dict[str, Any]) -> list[str]:
    lines = [f"State as of {state['as_of']}"]
    if not state.get("exists", True) or "stage" not in state:
        return lines + [f"  {state.get('note', '')}"]
    lines += [
        f"  derived from: {state['derived_from']}",
        f"  stage: {state['stage']} since {state['stage_entered_at']}",
        f"  lender: {state.get('lender') or '-'}; approved amount: "
        f"{format_money(state['approved_amount']) if state.get('approved_amount') else '-'}",
        "  checklist:",
    ]
    for c in state["checklist"]:
        lines.append(
            f"    [{'x' if c['satisfied'] else ' '}] {c['item']} ({c['party']})"
            + (f" — {c['detail']}" if c.get("detail") else "")
        )
    lines.append("  lender decisions:")
    for sub in state["submissions"]:
        lines.append(f"    submission {sub['submission_no']} to {sub['lender']}: {sub['status']}")
        for d in sub["decisions"]:
            amount = f" {format_money(d['approved_amount'])}" if d.get("approved_amount") else ""
            applied = "" if d["applied"] else f" (not applied: {d['note']})"
            lines.append(f"      seq {d['seq']} {d['decision']}{amount}{applied}")
    if state["compensations"]:
        lines.append(
            "  compensations: "
            + ", ".join(f"{c['kind']} {c['status']}" for c in state["compensations"])
        )
    if state["pending"]:
        lines.append(
            "  pending: " + "; ".join(f"{p['role']}: {p['what']}" for p in state["pending"])
        )
    return lines


def render(tl: Timeline, fmt: str) -> str:
    title = f"Deal {tl.deal_id} ({tl.workflow_id}), {len(tl.runs)} run(s)"
    if tl.as_of:
        title += f", as of {tl.as_of.isoformat()}"
    if fmt == "json":
        return (
            json.dumps(
                {
                    "deal_id": tl.deal_id,
                    "workflow_id": tl.workflow_id,
                    "runs": tl.runs,
                    "as_of": tl.as_of.isoformat() if tl.as_of else None,
                    "decode_errors": tl.decode_errors,
                    "entries": [e.as_json() for e in tl.entries],
                    "state": tl.state,
                },
                indent=2,
                ensure_ascii=False,
                default=str,
            )
            + "\n"
        )
    rows = [_row(e) for e in tl.entries]
    warn = [f"WARNING: {x}" for x in tl.decode_errors]
    if fmt == "markdown":
        out = [f"# {title}", ""] + [f"> {w}" for w in warn]
        out += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for r in rows:
            out.append(
                "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |"
            )
        if tl.state:
            out += ["", "```", *_state_lines(tl.state), "```"]
        return "\n".join(out) + "\n"
    if fmt == "html":
        esc = html.escape
        body = [f"<h1>{esc(title)}</h1>"] + [f"<p class=warn>{esc(w)}</p>" for w in warn]
        body.append(
            "<table><thead><tr>"
            + "".join(f"<th>{c}</th>" for c in _COLUMNS)
            + "</tr></thead><tbody>"
        )
        for e, r in zip(tl.entries, rows, strict=True):
            body.append(
                f"<tr class='{esc(e.kind)}'>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
            )
        body.append("</tbody></table>")
        if tl.state:
            body.append("<pre>" + esc("\n".join(_state_lines(tl.state))) + "</pre>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>body{{font-family:sans-serif}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
            "vertical-align:top;text-align:left}tr.stage{background:#eef}"
            "tr.lender{background:#efe}tr.compensation{background:#fee}"
            ".warn{color:#a00}</style></head><body>" + "\n".join(body) + "</body></html>\n"
        )
    widths = [max([len(_COLUMNS[i])] + [len(r[i]) for r in rows]) for i in range(5)]
    out = [
        title,
        *warn,
        "  ".join(
            c.upper().ljust(widths[i]) if i < 5 else c.upper() for i, c in enumerate(_COLUMNS)
        ),
    ]
    for r in rows:
        out.append("  ".join(c.ljust(widths[i]) if i < 5 else c for i, c in enumerate(r)))
    if tl.state:
        out += ["", *_state_lines(tl.state)]
    return "\n".join(out) + "\n"
