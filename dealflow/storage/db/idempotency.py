"""`Idempotency-Key`s of `POST /api/deals`, per subject (the token's `sub`):
a retried request gets the deal its first use created. A key is another
subject's to use too, as an independent key, and expires: once older than
`expires_before`, it is treated as never used and its row is removed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete
from sqlmodel import Session

from dealflow.storage.db.engine import dialect_insert, writing, wrote
from dealflow.storage.db.tables import IDEMPOTENCY_KEYS, IdempotencyKeyRow


def remember_idempotency_key(
    engine: Engine,
    *,
    subject: str,
    key: str,
    request_sha256: str,
    deal_id: str,
    response_status: int,
    created_at: datetime,
    expires_before: datetime | None = None,
) -> tuple[IdempotencyKeyRow, bool]:
    """Store the key's first use by `subject`; return the stored row and whether it is new.

    Keys created before `expires_before` (every subject's) are removed first,
    so an expired key is stored anew. The caller compares `row.request_sha256`
    with its own to tell a retry (same body → same deal) from a misuse
    (other body → 422).
    """
    if not subject:
        raise ValueError("an idempotency key belongs to a subject")
    with writing(engine) as conn:
        if expires_before is not None:
            expired = IDEMPOTENCY_KEYS.c.created_at < expires_before
            conn.execute(delete(IDEMPOTENCY_KEYS).where(expired))
        stmt = (
            dialect_insert(conn, IDEMPOTENCY_KEYS)
            .values(
                subject=subject,
                key=key,
                request_sha256=request_sha256,
                deal_id=deal_id,
                response_status=response_status,
                created_at=created_at,
            )
            .on_conflict_do_nothing(index_elements=["subject", "key"])
            .returning(IDEMPOTENCY_KEYS.c.key)
        )
        inserted = wrote(conn, stmt)
        with Session(bind=conn) as session:
            row = session.get(IdempotencyKeyRow, (subject, key))
    assert row is not None
    return row, inserted


def get_idempotency_key(
    engine: Engine, subject: str, key: str, *, expires_before: datetime | None = None
) -> IdempotencyKeyRow | None:
    """`subject`'s use of `key`, unless it expired (created before `expires_before`)."""
    with Session(engine) as session:
        row = session.get(IdempotencyKeyRow, (subject, key))
    if row is None or (expires_before is not None and row.created_at < expires_before):
        return None
    return row


def forget_idempotency_key(engine: Engine, subject: str, key: str, deal_id: str) -> None:
    """Remove `subject`'s key if it still names `deal_id` (a start that failed)."""
    with writing(engine) as conn:
        conn.execute(
            delete(IDEMPOTENCY_KEYS).where(
                IDEMPOTENCY_KEYS.c.subject == subject,
                IDEMPOTENCY_KEYS.c.key == key,
                IDEMPOTENCY_KEYS.c.deal_id == deal_id,
            )
        )
