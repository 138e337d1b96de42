"""How audit values read as text: amounts, durations, actors, payload fields, lender events."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any


def format_actor(actor: Any) -> str:
    """Who acted: `staff_id (role)`, from an actor object or a `staff_id/role` string."""
    if isinstance(actor, dict) and "staff_id" in actor:
        if actor.get("staff_id") == "dealflow":
            return "dealflow (system)"
        return f"{actor['staff_id']} ({actor.get('role', '?')})"
    if isinstance(actor, str) and "/" in actor:
        staff_id, role = actor.split("/", 1)
        return "dealflow (system)" if staff_id == "dealflow" else f"{staff_id} ({role})"
    return str(actor or "")


def format_money(amount: Any) -> str:
    """An amount with two decimals and thousands separators (as given if not a number)."""
    try:
        return f"{Decimal(str(amount)).quantize(Decimal('0.01')):,.2f}"
    except (InvalidOperation, ValueError):
        return str(amount)


def format_duration(duration: timedelta) -> str:
    """A duration as `1d 2h 3m 4s`, leaving out the zero parts."""
    days, remainder = divmod(int(duration.total_seconds()), 86400)
    hours, remainder = divmod(remainder, 3600)
    minutes, seconds = divmod(remainder, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{seconds}s" if seconds else "",
    ]
    return " ".join(part for part in parts if part) or "0s"


_SKIP_FIELDS = {"actor"}


_MONEY_FIELDS = frozenset({"amount", "down_payment", "total_repayable"})


def format_fields(value: Any, skip: set[str] | None = None) -> str:
    """A compact `key: value; ...` rendering of a JSON object."""
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    parts = []
    for key, field_value in value.items():
        if key in (skip or _SKIP_FIELDS) or field_value in (None, "", [], {}):
            continue
        if isinstance(field_value, dict):
            field_value = "{" + format_fields(field_value, set()) + "}"
        elif isinstance(field_value, list):
            field_value = ", ".join(
                format_fields(item, set()) if isinstance(item, dict) else str(item)
                for item in field_value
            )
        elif key in _MONEY_FIELDS or key.endswith("_amount"):
            field_value = format_money(field_value)
        parts.append(f"{key}: {field_value}")
    return "; ".join(parts)


def describe_lender_event(event: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A lender event as a timeline row's action, details and data."""
    kind = event.get("type", "lender-event")
    detail: list[str] = [f"webhook {event.get('webhook_id')}"]
    if event.get("decided"):
        payload = event["decided"]
        action = f"decision: {payload.get('decision')}"
        detail.append(
            f"application {payload.get('application_ref')} seq {payload.get('decision_seq')}"
        )
        if payload.get("approved_amount") is not None:
            detail.append(f"amount {format_money(payload['approved_amount'])}")
        if payload.get("apr") is not None:
            detail.append(f"APR {payload['apr']}%")
        if payload.get("term_months"):
            detail.append(f"term {payload['term_months']} months")
        for reason in payload.get("reasons") or []:
            detail.append(f"reason {reason.get('code')}: {reason.get('text')}")
        for stipulation in payload.get("stipulations") or []:
            # A condition that is no document says so; a document one (or one
            # from before the field) reads as it always did.
            kind = stipulation.get("kind") or "document"
            detail.append(
                f"stipulation {stipulation.get('code')}"
                + (f" ({kind})" if kind != "document" else "")
                + f": {stipulation.get('description')}"
            )
    elif event.get("disbursed"):
        payload = event["disbursed"]
        action = "disbursement completed"
        amount = format_money(payload.get("amount"))
        detail.append(f"amount {amount}; transaction {payload.get('transaction_ref')}")
    elif event.get("failed"):
        action = "disbursement failed"
        detail.append(f"reason: {event['failed'].get('reason')}")
    else:
        action = kind
    return action, "; ".join(detail), event
