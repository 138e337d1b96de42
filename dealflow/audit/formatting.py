"""How audit values read as text: amounts, durations, actors, payload fields, lender events."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any


def format_actor(a: Any) -> str:
    """Who acted: `staff_id (role)`, from an actor object or a `staff_id/role` string."""
    if isinstance(a, dict) and "staff_id" in a:
        if a.get("staff_id") == "dealflow":
            return "dealflow (system)"
        return f"{a['staff_id']} ({a.get('role', '?')})"
    if isinstance(a, str) and "/" in a:
        sid, role = a.split("/", 1)
        return "dealflow (system)" if sid == "dealflow" else f"{sid} ({role})"
    return str(a or "")


def format_money(v: Any) -> str:
    """An amount with two decimals and thousands separators (as given if not a number)."""
    try:
        return f"{Decimal(str(v)).quantize(Decimal('0.01')):,.2f}"
    except (InvalidOperation, ValueError):
        return str(v)


def format_duration(d: timedelta) -> str:
    """A duration as `1d 2h 3m 4s`, leaving out the zero parts."""
    s = int(d.total_seconds())
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    mins, secs = divmod(rem, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{mins}m" if mins else "",
        f"{secs}s" if secs else "",
    ]
    return " ".join(p for p in parts if p) or "0s"


_SKIP_FIELDS = {"actor"}


def format_fields(d: Any, skip: set[str] | None = None) -> str:
    """A compact `key: value; ...` rendering of a JSON object."""
    if not isinstance(d, dict):
        return "" if d is None else str(d)
    parts = []
    for k, v in d.items():
        if k in (skip or _SKIP_FIELDS) or v in (None, "", [], {}):
            continue
        if isinstance(v, dict):
            v = "{" + format_fields(v, set()) + "}"
        elif isinstance(v, list):
            v = ", ".join(format_fields(x, set()) if isinstance(x, dict) else str(x) for x in v)
        elif k in ("amount", "approved_amount", "cover_amount", "down_payment") or k.endswith(
            "_amount"
        ):
            v = format_money(v)
        parts.append(f"{k}: {v}")
    return "; ".join(parts)


def describe_lender_event(ev: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A lender event as a timeline row's action, details and data."""
    kind = ev.get("type", "lender-event")
    detail: list[str] = [f"webhook {ev.get('webhook_id')}"]
    if ev.get("decided"):
        d = ev["decided"]
        action = f"decision: {d.get('decision')}"
        detail.append(f"application {d.get('application_ref')} seq {d.get('decision_seq')}")
        if d.get("approved_amount") is not None:
            detail.append(f"amount {format_money(d['approved_amount'])}")
        if d.get("apr") is not None:
            detail.append(f"APR {d['apr']}%")
        if d.get("term_months"):
            detail.append(f"term {d['term_months']} months")
        for r in d.get("reasons") or []:
            detail.append(f"reason {r.get('code')}: {r.get('text')}")
        for s in d.get("stipulations") or []:
            detail.append(f"stipulation {s.get('code')}: {s.get('description')}")
    elif ev.get("disbursed"):
        d = ev["disbursed"]
        action = "disbursement completed"
        detail.append(
            f"amount {format_money(d.get('amount'))}; transaction {d.get('transaction_ref')}"
        )
    elif ev.get("failed"):
        action = "disbursement failed"
        detail.append(f"reason: {ev['failed'].get('reason')}")
    else:
        action = kind
    return action, "; ".join(detail), ev
