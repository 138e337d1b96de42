"""Initial schema: deal read model, webhook inbox, documents, outbox,
compensations, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain SQLAlchemy types on purpose: a migration must keep meaning what it
# meant when written, whatever later happens to dealflow.storage.db. The tz-aware
# UTC handling of dealflow.storage.db.UTCDateTime is Python-side only; its DDL is
# DateTime(timezone=True).
TS = sa.DateTime(timezone=True)
MONEY = sa.Numeric(14, 2)


def upgrade() -> None:
    op.create_table(
        "deals",
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dealer_id", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("stage_entered_at", TS, nullable=False),
        sa.Column("lender_id", sa.String(), nullable=True),
        sa.Column("vehicle_price", MONEY, nullable=False),
        sa.Column("amount_financed", MONEY, nullable=False),
        sa.Column("approved_amount", MONEY, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("next_due_at", TS, nullable=True),
        sa.Column("pending_roles", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("deal_id"),
    )
    for column in ("dealer_id", "stage", "lender_id", "updated_at", "next_due_at"):
        op.create_index(op.f(f"ix_deals_{column}"), "deals", [column])

    op.create_table(
        "webhook_inbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lender_id", sa.String(), nullable=False),
        sa.Column("webhook_id", sa.String(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("body_sha256", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=True),
        sa.Column("deal_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lender_id", "webhook_id", name="uq_webhook_inbox_lender_webhook"),
        sa.CheckConstraint(
            "status IN ('received', 'delivered', 'rejected')", name="ck_webhook_inbox_status"
        ),
    )

    op.create_table(
        "documents",
        sa.Column("doc_id", sa.String(), nullable=False),
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("party", sa.String(), nullable=False),
        sa.Column("file_name", sa.String(), nullable=False),
        sa.Column("content_type", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("storage_key", sa.String(), nullable=False),
        sa.Column("uploaded_by", sa.String(), nullable=False),
        sa.Column("uploaded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("doc_id"),
    )
    op.create_index(op.f("ix_documents_deal_id"), "documents", ["deal_id"])
    op.create_index(op.f("ix_documents_sha256"), "documents", ["sha256"])

    op.create_table(
        "outbox",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("roles", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_outbox_deal_id"), "outbox", ["deal_id"])

    op.create_table(
        "compensations",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_compensations_deal_id"), "compensations", ["deal_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("request_sha256", sa.String(), nullable=False),
        sa.Column("deal_id", sa.String(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_index(op.f("ix_compensations_deal_id"), table_name="compensations")
    op.drop_table("compensations")
    op.drop_index(op.f("ix_outbox_deal_id"), table_name="outbox")
    op.drop_table("outbox")
    op.drop_index(op.f("ix_documents_sha256"), table_name="documents")
    op.drop_index(op.f("ix_documents_deal_id"), table_name="documents")
    op.drop_table("documents")
    op.drop_table("webhook_inbox")
    for column in ("next_due_at", "updated_at", "lender_id", "stage", "dealer_id"):
        op.drop_index(op.f(f"ix_deals_{column}"), table_name="deals")
    op.drop_table("deals")
