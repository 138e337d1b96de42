"""Desk sessions: who is signed in to the deal desk, until when.

Kept server-side so that signing out ends the session everywhere at once and
an expired or stolen cookie is worth nothing: the browser holds only an
opaque random token, the table only that token's sha256.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Engine, bindparam, select, update

from dealflow.storage.db.engine import writing
from dealflow.storage.db.tables import DESK_SESSIONS, DeskSessionRow


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_desk_session(
    engine: Engine,
    *,
    staff_id: str,
    roles: list[str],
    now: datetime,
    expires_at: datetime,
    dealers: Collection[str] | None = None,
) -> tuple[str, DeskSessionRow]:
    """A new session; returns the cookie token (shown once, never stored) and
    the row. `dealers`: the dealer ids it sees (None: every dealer)."""
    token = secrets.token_urlsafe(32)
    row = DeskSessionRow(
        token_sha256=_digest(token),
        staff_id=staff_id,
        roles=",".join(roles),
        dealers=None if dealers is None else ",".join(sorted(dealers)),
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=expires_at,
    )
    with writing(engine) as conn:
        conn.execute(DESK_SESSIONS.insert().values(**row.model_dump()))
    return token, row


_LIVE_SESSION = select(DESK_SESSIONS).where(DESK_SESSIONS.c.token_sha256 == bindparam("digest"))


def live_desk_session(engine: Engine, token: str, now: datetime) -> DeskSessionRow | None:
    """The session of this cookie token, unless it ended or expired."""
    # Core and a statement built once, not the ORM: every desk request asks
    # this first, and the ORM's session tripled a one-row primary-key read.
    with engine.connect() as conn:
        found = conn.execute(_LIVE_SESSION, {"digest": _digest(token)}).first()
    if found is None:
        return None
    row = DeskSessionRow(**found._mapping)
    if row.ended_at is not None or row.expires_at <= now:
        return None
    return row


def end_desk_session(engine: Engine, token: str, now: datetime) -> None:
    with writing(engine) as conn:
        conn.execute(
            update(DESK_SESSIONS)
            .where(DESK_SESSIONS.c.token_sha256 == _digest(token))
            .where(DESK_SESSIONS.c.ended_at.is_(None))
            .values(ended_at=now)
        )
