"""Lender webhooks: whose event a deal takes, and how it knows one it applied."""

from __future__ import annotations

from collections.abc import Iterable

from dealflow.rules.errors import invalid


def lender_webhook_key(lender_id: str, webhook_id: str) -> str:
    """A webhook id is unique only within one lender's webhooks (Standard
    Webhooks), so a deal records "lender_id webhook_id" as applied: one lender
    cannot claim another's id. Lender ids hold no space, so the key is unambiguous."""
    return f"{lender_id} {webhook_id}"


def check_event_lender(lender_id: str, deal_id: str, deal_lenders: Iterable[str]) -> None:
    """An event may come only from a lender on the deal's routing list: any
    other lender was never sent the deal's application."""
    lenders = sorted(set(deal_lenders))
    if lender_id not in lenders:
        raise invalid(
            f"lender {lender_id} was never sent an application of deal {deal_id}; "
            "the event was not applied"
        )


def disbursement_request_id(deal_id: str, attempt: int) -> str:
    """The id of a deal's disbursement request: also its Idempotency-Key at the
    lender, and echoed in the lender's answer."""
    return f"{deal_id}:disbursement:{attempt}"
