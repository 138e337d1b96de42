"""The webhook inbox: every lender webhook as received, stored once per
(lender, webhook id), then marked delivered or rejected."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import Engine, bindparam, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from dealflow.storage.db.engine import dialect_insert_for, writing
from dealflow.storage.db.tables import INBOX, InboxRow

WebhookStatus = Literal["received", "delivered", "rejected"]
StoreOutcome = Literal["new", "duplicate", "conflict"]


def _body_text(body: bytes) -> str:
    # The column is text. A lender body that is not UTF-8 (or holds NUL, which
    # PostgreSQL text cannot) is still kept for audit, with U+FFFD in place of
    # the bad bytes; body_sha256 is always over the original bytes.
    return body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


@dataclass(frozen=True)
class WebhookIn:
    """A received webhook, as `store_webhooks` stores it."""

    lender_id: str
    webhook_id: str
    body: bytes
    received_at: datetime
    event_type: str | None
    deal_id: str | None


@dataclass(frozen=True)
class WebhookMark:
    """A stored webhook's new status, as `mark_webhooks` writes it."""

    row_id: int
    status: WebhookStatus
    error: str | None = None
    at: datetime | None = None


def store_webhook(
    engine: Engine,
    *,
    lender_id: str,
    webhook_id: str,
    body: bytes,
    received_at: datetime,
    event_type: str | None,
    deal_id: str | None,
) -> tuple[InboxRow, StoreOutcome]:
    """Store a received webhook once per (lender_id, webhook_id); see `store_webhooks`."""
    hook = WebhookIn(lender_id, webhook_id, body, received_at, event_type, deal_id)
    with writing(engine) as conn:
        return _store_webhook(conn, hook)


def write_inbox(
    engine: Engine, ops: Sequence[WebhookIn | WebhookMark]
) -> list[tuple[InboxRow, StoreOutcome] | bool]:
    """Store and mark many webhooks in one transaction: one commit (one fsync)
    for a whole batch of concurrent requests. Results in the order of `ops`."""
    with writing(engine) as conn:
        return [
            _store_webhook(conn, op) if isinstance(op, WebhookIn) else _mark_webhook(conn, op)
            for op in ops
        ]


def _store_webhook(conn: Connection, hook: WebhookIn) -> tuple[InboxRow, StoreOutcome]:
    """'new': stored now. 'duplicate': stored before with the same body (a lender
    retry). 'conflict': that id was stored with a different body, which stays
    as it was. ON CONFLICT DO NOTHING on the unique key makes concurrent
    deliveries of the same id race-free: exactly one of them is 'new'.
    """
    sha = hashlib.sha256(hook.body).hexdigest()
    values: dict[str, Any] = {
        "lender_id": hook.lender_id,
        "webhook_id": hook.webhook_id,
        "received_at": hook.received_at,
        "body_sha256": sha,
        "body": _body_text(hook.body),
        "event_type": hook.event_type,
        "deal_id": hook.deal_id,
        "status": "received",
    }
    new_id = conn.execute(_store_webhook_statement(conn.dialect.name), values).scalar()
    if new_id is not None:
        return InboxRow(id=new_id, **values), "new"
    key = {"lender_id": hook.lender_id, "webhook_id": hook.webhook_id}
    found = conn.execute(_find_webhook_statement(), key).mappings().one()
    row = InboxRow(**found)
    return row, "duplicate" if row.body_sha256 == sha else "conflict"


# The inbox is written once or twice per webhook: its statements are built once,
# with values bound at execution (building them was most of a write's CPU).
@functools.cache
def _store_webhook_statement(dialect: str) -> Any:
    return (
        dialect_insert_for(dialect, INBOX)
        .on_conflict_do_nothing(index_elements=["lender_id", "webhook_id"])
        .returning(INBOX.c.id)
    )


@functools.cache
def _find_webhook_statement() -> Any:
    return sa_select(INBOX).where(
        INBOX.c.lender_id == bindparam("lender_id"),
        INBOX.c.webhook_id == bindparam("webhook_id"),
    )


@functools.cache
def _mark_webhook_statement(delivered: bool) -> Any:
    values: dict[str, Any] = {"status": bindparam("new_status"), "error": bindparam("new_error")}
    if delivered:
        values["delivered_at"] = bindparam("new_delivered_at")
    return update(INBOX).where(INBOX.c.id == bindparam("row_id")).values(**values)


def pending_webhooks(engine: Engine, received_before: datetime, limit: int = 100) -> list[InboxRow]:
    """Stored webhooks never marked delivered or rejected (the API stopped in between)."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(InboxRow)
                .where(
                    col(InboxRow.status) == "received",
                    col(InboxRow.received_at) < received_before,
                )
                .order_by(col(InboxRow.id))
                .limit(limit)
            ).all()
        )


def get_webhook(engine: Engine, row_id: int) -> InboxRow | None:
    with Session(engine) as session:
        return session.get(InboxRow, row_id)


def mark_webhook(
    engine: Engine,
    row_id: int,
    status: WebhookStatus,
    error: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Set a stored webhook's status; `delivered_at` is set when delivered.

    Returns False if there is no such row.
    """
    mark = WebhookMark(row_id, status, error, at)
    with writing(engine) as conn:
        return _mark_webhook(conn, mark)


def _mark_webhook(conn: Connection, mark: WebhookMark) -> bool:
    if mark.status not in get_args(WebhookStatus):
        raise ValueError(f"unknown webhook status {mark.status!r}")
    delivered = mark.status == "delivered"
    params: dict[str, Any] = {
        "row_id": mark.row_id,
        "new_status": mark.status,
        "new_error": mark.error,
    }
    if delivered:
        params["new_delivered_at"] = mark.at or datetime.now(UTC)
    result = conn.execute(_mark_webhook_statement(delivered), params)
    return bool(result.rowcount == 1)
