"""`Idempotency-Key`s of `POST /api/deals`: a retried request gets the deal
its first use created."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session

from dealflow.storage.db.engine import dialect_insert, writing, wrote
from dealflow.storage.db.tables import IDEMPOTENCY_KEYS, IdempotencyKeyRow


def remember_idempotency_key(
    engine: Engine,
    *,
    key: str,
    request_sha256: str,
    deal_id: str,
    response_status: int,
    created_at: datetime,
) -> tuple[IdempotencyKeyRow, bool]:
    """Store the key's first use; return the stored row and whether it is new.

    The caller compares `row.request_sha256` with its own to tell a retry
    (same body → same deal) from a misuse (other body → 422).
    """
    with writing(engine) as conn:
        stmt = (
            dialect_insert(conn, IDEMPOTENCY_KEYS)
            .values(
                key=key,
                request_sha256=request_sha256,
                deal_id=deal_id,
                response_status=response_status,
                created_at=created_at,
            )
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(IDEMPOTENCY_KEYS.c.key)
        )
        inserted = wrote(conn, stmt)
        with Session(bind=conn) as session:
            row = session.get(IdempotencyKeyRow, key)
    assert row is not None
    return row, inserted


def get_idempotency_key(engine: Engine, key: str) -> IdempotencyKeyRow | None:
    with Session(engine) as session:
        return session.get(IdempotencyKeyRow, key)
