"""The deal desk: server-side sign-in sessions; the read model's pending
actions and customer name for the desk's lists.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "desk_sessions",
        sa.Column("token_sha256", sa.String(), primary_key=True),
        sa.Column("staff_id", sa.String(), nullable=False),
        sa.Column("roles", sa.String(), nullable=False),
        sa.Column("csrf_token", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
    )
    op.create_index("ix_desk_sessions_expires_at", "desk_sessions", ["expires_at"])
    with op.batch_alter_table("deals") as deals:
        deals.add_column(sa.Column("pending_actions", sa.String(), nullable=False, server_default="[]"))
        deals.add_column(sa.Column("customer_name", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deals") as deals:
        deals.drop_column("customer_name")
        deals.drop_column("pending_actions")
    op.drop_index("ix_desk_sessions_expires_at", table_name="desk_sessions")
    op.drop_table("desk_sessions")
