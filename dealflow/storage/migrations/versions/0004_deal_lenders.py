"""The lenders a deal may be sent to (its routing list), so the webhook
receiver can refuse an event from any other lender before it reaches the deal.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-15 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deals") as deals:
        # Comma-separated lender ids; "" for rows older workers wrote (unknown).
        deals.add_column(sa.Column("lender_ids", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("deals") as deals:
        deals.drop_column("lender_ids")
