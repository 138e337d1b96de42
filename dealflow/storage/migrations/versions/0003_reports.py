"""Reports: each deal's stage changes, lender applications with their answers,
and how the deal ended, projected beside the deal's row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deal_transitions",
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("from_stage", sa.String(), nullable=True),
        sa.Column("to_stage", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("deal_id", "seq"),
    )
    op.create_index(op.f("ix_deal_transitions_at"), "deal_transitions", ["at"])
    op.create_table(
        "lender_decisions",
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("submission_no", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("lender_id", sa.String(), nullable=False),
        sa.Column("submitted_at", TS, nullable=True),
        sa.Column("first_decided_at", TS, nullable=True),
        sa.Column("decision", sa.String(), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("reason_codes", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("deal_id", "submission_no"),
    )
    for column in ("lender_id", "first_decided_at"):
        op.create_index(op.f(f"ix_lender_decisions_{column}"), "lender_decisions", [column])
    op.create_table(
        "deal_closures",
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("closed_at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reason_codes", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("deal_id"),
    )
    op.create_index(op.f("ix_deal_closures_closed_at"), "deal_closures", ["closed_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deal_closures_closed_at"), table_name="deal_closures")
    op.drop_table("deal_closures")
    for column in ("first_decided_at", "lender_id"):
        op.drop_index(op.f(f"ix_lender_decisions_{column}"), table_name="lender_decisions")
    op.drop_table("lender_decisions")
    op.drop_index(op.f("ix_deal_transitions_at"), table_name="deal_transitions")
    op.drop_table("deal_transitions")
