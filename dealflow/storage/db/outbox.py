"""What a deal asks to be done outside it, recorded once per key: notifications
to send and compensations to run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from dealflow.models import CompensationInput, NotificationInput
from dealflow.storage.db.engine import insert_if_absent, writing
from dealflow.storage.db.tables import COMPENSATIONS, OUTBOX, OutboxRow


def add_notification(engine: Engine, notification: NotificationInput, created_at: datetime) -> bool:
    """Queue a notification once per key; True if it was not queued before."""
    return insert_if_absent(
        engine,
        OUTBOX,
        {
            "key": notification.key,
            "deal_id": notification.deal_id,
            "kind": notification.kind,
            "stage": notification.stage.value,
            "roles": ",".join(role.value for role in notification.roles),
            "message": notification.message,
            "created_at": created_at,
            "sent_at": None,
        },
    )


def unsent_notifications(engine: Engine, limit: int = 100) -> list[OutboxRow]:
    query = (
        select(OutboxRow)
        .where(col(OutboxRow.sent_at).is_(None))
        .order_by(col(OutboxRow.created_at), col(OutboxRow.key))
        .limit(limit)
    )
    with Session(engine) as session:
        return list(session.exec(query).all())


def mark_notification_sent(engine: Engine, key: str, at: datetime | None = None) -> bool:
    """Record the send; the first time wins. True if this call recorded it."""
    stmt = (
        update(OUTBOX)
        .where(OUTBOX.c.key == key, OUTBOX.c.sent_at.is_(None))
        .values(sent_at=at or datetime.now(UTC))
    )
    with writing(engine) as conn:
        return bool(conn.execute(stmt).rowcount == 1)


def record_compensation(
    engine: Engine, compensation: CompensationInput, created_at: datetime
) -> bool:
    """Record a compensation once per key; True if it was not recorded before."""
    return insert_if_absent(
        engine,
        COMPENSATIONS,
        {
            "key": compensation.key,
            "deal_id": compensation.deal_id,
            "kind": compensation.kind,
            "detail": json.dumps(compensation.detail, sort_keys=True, ensure_ascii=False),
            "created_at": created_at,
        },
    )
