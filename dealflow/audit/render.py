"""A timeline as text, Markdown, JSON or HTML (`dealflow-audit timeline --format`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dealflow.audit.formatting import format_money
from dealflow.audit.timeline import Entry, Timeline
from dealflow.templating import render_template

COLUMNS = ("time", "stage", "actor", "kind", "action", "details")
FORMATS = ("text", "markdown", "json", "html")


def _cells(entry: Entry) -> list[str]:
    """An entry's cells, one per column of `COLUMNS`."""
    at = entry.at.strftime("%Y-%m-%d %H:%M:%S")
    return [at, entry.stage, entry.actor, entry.kind, entry.action, entry.details]


def _condition_text(condition: dict[str, Any]) -> str:
    """A lender's condition as of a time: code, kind, state, what answers it."""
    text = f"{condition['code']} ({condition['kind']}): {condition['status']}"
    if condition.get("doc_id"):
        text += f", document {condition['doc_id']}"
    if condition.get("note"):
        text += f", note: {condition['note']}"
    if condition.get("reason"):
        text += f", reason: {condition['reason']}"
    if condition.get("answered_in"):
        text += f"; sent with submission {condition['answered_in']}"
    return text


def _state_lines(state: dict[str, Any]) -> list[str]:
    """The state as of a time (`as_of.state_as_of`) as indented lines of text."""
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
    for item in state["checklist"]:
        lines.append(
            f"    [{'x' if item['satisfied'] else ' '}] {item['item']} ({item['party']})"
            + (f" — {item['detail']}" if item.get("detail") else "")
        )
    lines.append("  lender decisions:")
    for submission in state["submissions"]:
        sent = f"submission {submission['submission_no']} to {submission['lender']}"
        lines.append(f"    {sent}: {submission['status']}")
        for decision in submission["decisions"]:
            amount = (
                f" {format_money(decision['approved_amount'])}"
                if decision.get("approved_amount")
                else ""
            )
            applied = "" if decision["applied"] else f" (not applied: {decision['note']})"
            lines.append(f"      seq {decision['seq']} {decision['decision']}{amount}{applied}")
        for condition in submission.get("conditions") or []:
            lines.append(f"      condition {_condition_text(condition)}")
    if state["compensations"]:
        lines.append(
            "  compensations: "
            + ", ".join(_compensation_text(step) for step in state["compensations"])
        )
    if state["pending"]:
        lines.append(
            "  pending: "
            + "; ".join(f"{action['role']}: {action['what']}" for action in state["pending"])
        )
    return lines


@dataclass(frozen=True)
class TimelineRow:
    kind: str
    cells: list[str]


@dataclass(frozen=True)
class TimelineView:
    """What the timeline templates show (`audit/timeline.html` as a page of its own,
    `audit/_timeline.html` inside another page, bound to the name `timeline`)."""

    title: str
    warnings: list[str]
    columns: tuple[str, ...]
    rows: list[TimelineRow]
    state_lines: list[str]


def timeline_view(timeline: Timeline) -> TimelineView:
    return TimelineView(
        title=_title(timeline),
        warnings=_warnings(timeline),
        columns=COLUMNS,
        rows=[TimelineRow(entry.kind, _cells(entry)) for entry in timeline.entries],
        state_lines=_state_lines(timeline.state) if timeline.state else [],
    )


def render(timeline: Timeline, output_format: str) -> str:
    """The timeline in one of `FORMATS` (anything else reads as text)."""
    if output_format == "json":
        return _render_json(timeline)
    if output_format == "markdown":
        return _render_markdown(timeline)
    if output_format == "html":
        return render_template("audit/timeline.html", timeline=timeline_view(timeline))
    return _render_text(timeline)


def _title(timeline: Timeline) -> str:
    title = f"Deal {timeline.deal_id} ({timeline.workflow_id}), {len(timeline.runs)} run(s)"
    if timeline.as_of:
        title += f", as of {timeline.as_of.isoformat()}"
    return title


def _warnings(timeline: Timeline) -> list[str]:
    return [f"WARNING: {error}" for error in timeline.decode_errors]


def _render_json(timeline: Timeline) -> str:
    document = {
        "deal_id": timeline.deal_id,
        "workflow_id": timeline.workflow_id,
        "runs": timeline.runs,
        "as_of": timeline.as_of.isoformat() if timeline.as_of else None,
        "decode_errors": timeline.decode_errors,
        "entries": [entry.as_json() for entry in timeline.entries],
        "state": timeline.state,
    }
    return json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"


def _render_markdown(timeline: Timeline) -> str:
    lines = [f"# {_title(timeline)}", ""] + [f"> {warning}" for warning in _warnings(timeline)]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for entry in timeline.entries:
        cells = (cell.replace("|", "\\|").replace("\n", " ") for cell in _cells(entry))
        lines.append("| " + " | ".join(cells) + " |")
    if timeline.state:
        lines += ["", "```", *_state_lines(timeline.state), "```"]
    return "\n".join(lines) + "\n"


def _render_text(timeline: Timeline) -> str:
    """Columns padded to their widest cell, but the last (details), which runs on."""
    rows = [_cells(entry) for entry in timeline.entries]
    padded = len(COLUMNS) - 1
    widths = [
        max([len(COLUMNS[column])] + [len(row[column]) for row in rows]) for column in range(padded)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(widths[column]) if column < padded else cell
            for column, cell in enumerate(cells)
        )

    lines = [_title(timeline), *_warnings(timeline), line([column.upper() for column in COLUMNS])]
    lines += [line(row) for row in rows]
    if timeline.state:
        lines += ["", *_state_lines(timeline.state)]
    return "\n".join(lines) + "\n"


def _compensation_text(step: dict[str, Any]) -> str:
    """A step to undo, with its evidence and who recorded it once done."""
    text = f"{step['kind']} {step['status']}"
    if step.get("evidence"):
        text += f" ({step['evidence']} by {step.get('done_by') or '?'})"
    return text
