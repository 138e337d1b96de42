"""Lender webhooks (docs/architecture.md §3.4): verify, store, then deliver to the deal.

A webhook is answered 2xx only after it is stored in the inbox; the deal
applies each webhook id once, so a lender's retries are harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from temporalio.service import RPCError

from dealflow import client as deals
from dealflow import rules
from dealflow.api.deps import Services
from dealflow.api.errors import Problem
from dealflow.models import (
    ApplicationDecided,
    DisbursementCompleted,
    DisbursementFailed,
    LenderEventInput,
)
from dealflow.models.base import is_ref
from dealflow.storage import db

log = logging.getLogger("dealflow.webhooks")
router = APIRouter(tags=["lender webhooks"])

# The default of DEALFLOW_MAX_WEBHOOK_BODY_BYTES.
MAX_WEBHOOK_BYTES = 256 * 1024
REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_DATA_MODELS: dict[str, type[BaseModel]] = {
    "application.decided": ApplicationDecided,
    "disbursement.completed": DisbursementCompleted,
    "disbursement.failed": DisbursementFailed,
}
_FIELD = {
    "application.decided": "decided",
    "disbursement.completed": "disbursed",
    "disbursement.failed": "failed",
}


def parse_event(lender_id: str, webhook_id: str, payload: Any) -> LenderEventInput:
    """The normalised event, or ValueError saying exactly what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object with type, timestamp and data")
    etype = payload.get("type")
    if etype not in _DATA_MODELS:
        raise ValueError(f"unknown event type {etype!r}; expected one of {', '.join(_DATA_MODELS)}")
    if not isinstance(payload.get("data"), dict):
        raise ValueError(f"{etype}: data must be a JSON object with the event's fields")
    try:
        data = _DATA_MODELS[etype].model_validate(payload["data"])
    except ValidationError as e:
        raise ValueError(f"{etype} data: {deals.format_validation_error(e)}") from None
    ref = getattr(data, "application_ref", None)
    # The deal compares it with the reference the lender gave at submission
    # (which the activity checked the same way); a malformed one is refused here.
    if not is_ref(ref):
        raise ValueError(
            f"{etype} data: application_ref {str(ref)[:80]!r} is not a reference (1 to 64 of "
            "A-Z a-z 0-9 . _ / : -, starting with a letter or digit)"
        )
    return LenderEventInput.model_validate(
        {
            "webhook_id": webhook_id,
            "lender_id": lender_id,
            "type": etype,
            "received_at": datetime.now(UTC),
            _FIELD[etype]: data,
            "raw": payload,
        }
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed `limit`
    (from Content-Length, or while streaming): a huge body is never buffered."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"webhook body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"webhook body exceeds the limit of {limit} bytes")
    return bytes(body)


def verify_signature(secret: str, request: Request, body: bytes) -> None:
    """Standard Webhooks check, or WebhookVerificationError saying why not.

    The library's own `verify` is called with json_parse=False (a well-signed body
    that is not JSON is a malformed event, 422, not a crash), and the ValueErrors
    it lets through for garbled headers become verification failures.
    """
    missing = [header for header in REQUIRED_HEADERS if not request.headers.get(header)]
    if missing:
        raise WebhookVerificationError(f"missing header(s) {', '.join(missing)}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookVerificationError("body is not UTF-8, so it cannot be verified") from None
    try:
        Webhook(secret).verify(body, dict(request.headers), json_parse=False)
    except ValueError:  # e.g. "v1" without a comma, bad base64 in webhook-signature
        raise WebhookVerificationError("malformed webhook-signature header") from None


async def _not_found_reason(svc: Services, deal_id: str) -> str:
    """Why a signal found no deal: none by that id, or one that has already ended
    (Temporal says NOT_FOUND for both; the inbox row should say which)."""
    try:
        desc = await svc.client.get_workflow_handle(deals.workflow_id(deal_id)).describe()
    except RPCError:
        return f"unknown deal {deal_id}"
    status = desc.status.name if desc.status else "closed"
    return f"deal {deal_id} has ended (workflow {status}); the event was not applied"


async def _not_this_deals_lender(svc: Services, lender_id: str, deal_id: str) -> str | None:
    """Why an event of `lender_id` must not reach the deal, or None: a lender
    not on the deal's routing list was never sent its application. The read
    model knows the list from the deal's first projection on; where it does
    not (a row an older worker wrote, or none yet), the deal decides itself."""
    lenders = svc.deal_lenders.get(deal_id)
    if lenders is None:
        try:
            row = await asyncio.to_thread(db.get_deal, svc.engine, deal_id)
        except SQLAlchemyError:
            return None  # the read model is unreachable: the deal itself ignores such events
        if row is None or not row.lender_id_list:
            return None
        lenders = tuple(row.lender_id_list)
        svc.deal_lenders.put(deal_id, lenders)
    try:
        rules.check_event_lender(lender_id, deal_id, lenders)
    except rules.RuleError as e:
        return e.message
    return None


async def _applied_before_close(
    svc: Services, deal_id: str, lender_id: str, webhook_id: str
) -> bool:
    """Whether a deal that has ended applied this webhook while it ran: a stored
    event whose "delivered" mark was lost (the API stopped between the signal
    and the mark) comes back after its deal closed, and was not refused then."""
    try:
        final = await deals.closed_status(svc.client, deal_id)
    except RPCError:
        return False
    if final is None:
        return False
    key = rules.lender_webhook_key(lender_id, webhook_id)
    return key in final.applied_lender_webhooks or webhook_id in final.applied_webhooks


@router.post(
    "/webhooks/lenders/{lender_id}",
    status_code=204,
    responses={
        204: {"description": "stored and delivered to the deal (or a duplicate of one that was)"},
        401: {"description": "bad or missing signature, or timestamp outside 5 minutes"},
        404: {"description": "unknown lender"},
        409: {"description": "webhook-id reused with a different body; the first one stays"},
        413: {"description": "body too large"},
        422: {
            "description": "unknown or ended deal, a lender not on the deal, or a malformed "
            "body; stored as rejected for audit"
        },
    },
)
async def receive(lender_id: str, request: Request) -> Response:
    svc: Services = request.app.state.services
    lender = svc.lenders.get(lender_id)
    if lender is None:
        raise Problem(404, f"unknown lender {lender_id!r}")
    body = await read_body(request, svc.settings.max_webhook_body_bytes)
    try:
        verify_signature(lender.webhook_secret, request, body)
    except WebhookVerificationError as e:
        # Not stored under its id: an unsigned request must not be able to
        # claim a webhook id before the lender's genuine event arrives.
        log.warning("webhook rejected: %s", e, extra={"lender_id": lender_id})
        raise Problem(401, f"webhook signature check failed: {e}") from None
    webhook_id = request.headers["webhook-id"]

    error: str | None = None
    event: LenderEventInput | None = None
    try:
        payload = json.loads(body)
    except ValueError as e:
        error = f"body is not valid JSON: {e}"
    else:
        try:
            event = parse_event(lender_id, webhook_id, payload)
        except ValueError as e:
            error = str(e)
    data = (event.decided or event.disbursed or event.failed) if event else None
    deal_id = data.deal_id if data else None

    row, outcome = await _store(
        svc,
        db.WebhookIn(
            lender_id=lender_id,
            webhook_id=webhook_id,
            body=body,
            received_at=datetime.now(UTC),
            event_type=event.type if event else None,
            deal_id=deal_id,
        ),
    )
    if outcome == "conflict":
        raise Problem(409, f"webhook-id {webhook_id} was already received with a different body")
    if outcome == "duplicate" and row.status == "delivered":
        return Response(status_code=204)
    if outcome == "duplicate" and row.status == "rejected":
        raise Problem(422, row.error or "rejected")
    if event is None or deal_id is None:
        await _mark(svc, db.WebhookMark(row.id or 0, "rejected", error))
        raise Problem(422, error or "malformed body")
    rejected = await deliver(svc, row.id or 0, deal_id, event)
    if rejected is not None:
        raise Problem(422, rejected)
    svc.metrics.webhooks.labels(lender_id=lender_id, outcome=outcome).inc()
    return Response(status_code=204)


# Stores and marks from concurrent requests share commits (one fsync per
# batch): the inbox is the API's hot write path under a webhook burst.
async def _store(svc: Services, hook: db.WebhookIn) -> tuple[db.InboxRow, db.StoreOutcome]:
    result = await svc.inbox.submit(hook)
    assert isinstance(result, tuple)
    return result


async def _mark(svc: Services, mark: db.WebhookMark) -> None:
    await svc.inbox.submit(mark)


async def deliver(svc: Services, row_id: int, deal_id: str, event: LenderEventInput) -> str | None:
    """Signal a stored event to its deal and mark the inbox row; the reason if rejected."""
    refusal = await _not_this_deals_lender(svc, event.lender_id, deal_id)
    if refusal is not None:
        await _mark(svc, db.WebhookMark(row_id, "rejected", refusal))
        log.warning(
            "webhook from a lender not on the deal",
            extra={
                "lender_id": event.lender_id,
                "deal_id": deal_id,
                "webhook_id": event.webhook_id,
            },
        )
        return refusal
    try:
        await deals.signal_lender_event(svc.client, deal_id, event)
    except deals.DealNotFound:
        if not await _applied_before_close(svc, deal_id, event.lender_id, event.webhook_id):
            msg = await _not_found_reason(svc, deal_id)
            await _mark(svc, db.WebhookMark(row_id, "rejected", msg))
            return msg
    # Committed before the 2xx (with the other requests' writes): a row left
    # "received" is redelivered later, and by then its deal may have ended,
    # which would record a delivered event as rejected.
    await _mark(svc, db.WebhookMark(row_id, "delivered"))
    log.info(
        "webhook delivered",
        extra={
            "lender_id": event.lender_id,
            "deal_id": deal_id,
            "webhook_id": event.webhook_id,
            "type": event.type,
        },
    )
    return None


async def redeliver_pending(svc: Services, older_than: timedelta = timedelta(seconds=5)) -> int:
    """Deliver inbox rows the API stored but never marked (it stopped in between).

    The lender got no 2xx for them and may retry, or may have given up; either
    way the deal applies each webhook id once, so signalling again is safe.
    """
    rows = await asyncio.to_thread(db.pending_webhooks, svc.engine, datetime.now(UTC) - older_than)
    for row in rows:
        try:
            event = parse_event(row.lender_id, row.webhook_id, json.loads(row.body))
        except ValueError as e:
            await _mark(svc, db.WebhookMark(row.id or 0, "rejected", str(e)))
            continue
        event.received_at = row.received_at
        data = event.decided or event.disbursed or event.failed
        assert data is not None
        await deliver(svc, row.id or 0, data.deal_id, event)
        log.info(
            "stored webhook redelivered",
            extra={"lender_id": row.lender_id, "webhook_id": row.webhook_id},
        )
    return len(rows)


async def redelivery_loop(svc: Services, every: float = 10.0) -> None:
    while True:
        try:
            await redeliver_pending(svc)
        except Exception:  # noqa: BLE001 - Temporal or the DB may be down; try later
            log.warning("webhook redelivery pass failed", exc_info=True)
        await asyncio.sleep(every)
