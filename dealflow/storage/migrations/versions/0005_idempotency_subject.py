"""Idempotency keys belong to the subject (the token's `sub`) that used them,
and expire: the primary key becomes (subject, key), `created_at` is indexed.

Existing rows are kept. A desk form's key names its staff id
(`desk:<staff_id>:<form key>`), which becomes its subject, so a clerk's
resent form still finds its deal; a key sent to the API before this revision
names no one and gets the subject "", which no token has: it is kept for the
record and expires like any other.

The table is copied into its new shape (SQLite cannot change a primary key in
place; the copy works the same on PostgreSQL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-16 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
TABLE = "idempotency_keys"
COPY = "idempotency_keys_copy"
DESK_PREFIX = "desk:"


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("request_sha256", sa.String(), nullable=False),
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    ]


def subject_of(key: str) -> str:
    """The staff id a desk form's key names; "" for a key that names no one."""
    if not key.startswith(DESK_PREFIX):
        return ""
    staff_id, sep, _ = key[len(DESK_PREFIX) :].partition(":")
    return staff_id if sep else ""


def _rows(table: str) -> list[sa.Row[Any]]:
    # Typed, so each backend's datetimes come back as datetimes and go in as such.
    source = sa.table(table, *(sa.column(c.name, c.type) for c in _columns()))
    return list(op.get_bind().execute(sa.select(source)))


def upgrade() -> None:
    copy = op.create_table(
        COPY,
        sa.Column("subject", sa.String(), nullable=False),
        *_columns(),
        sa.PrimaryKeyConstraint("subject", "key", name="pk_idempotency_keys"),
    )
    rows = [dict(row._mapping) for row in _rows(TABLE)]
    if rows:
        op.bulk_insert(copy, [{"subject": subject_of(row["key"]), **row} for row in rows])
    op.drop_table(TABLE)
    op.rename_table(COPY, TABLE)
    op.create_index(op.f("ix_idempotency_keys_created_at"), TABLE, ["created_at"])


def downgrade() -> None:
    copy = op.create_table(
        COPY, *_columns(), sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys_key")
    )
    # One row per key: its first use, whoever made it.
    first: dict[str, dict[str, Any]] = {}
    for row in sorted(_rows(TABLE), key=lambda r: r.created_at):
        first.setdefault(row.key, dict(row._mapping))
    if first:
        op.bulk_insert(copy, list(first.values()))
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name=TABLE)
    op.drop_table(TABLE)
    op.rename_table(COPY, TABLE)
