"""Desk sessions carry the dealers their sign-in was scoped to
(DEALFLOW_DEALERS_CLAIM): a comma-separated list, NULL for every dealer.

Sessions open before this revision get NULL and see every dealer, as they
did; they expire within DEALFLOW_DESK_SESSION_HOURS and the next sign-in
carries the scope.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-17 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("desk_sessions") as sessions:
        sessions.add_column(sa.Column("dealers", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("desk_sessions") as sessions:
        sessions.drop_column("dealers")
