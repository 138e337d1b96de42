"""The tables: the deal read model, the webhook inbox, document metadata, the
notification outbox, compensations and idempotency keys, with the column
types that keep datetimes in UTC and money exact on every backend."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Engine,
    Numeric,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy import select as sa_select
from sqlmodel import Field, SQLModel

# --------------------------------------------------------------------------- column types


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type: values are stored as naive UTC text in
    SQLAlchemy's fixed-width format (so text order is time order) and get
    their UTC tzinfo back on read. PostgreSQL stores timestamptz and returns
    values in the session time zone, which we normalise to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # Guessing a zone would silently shift deadlines; a naive value is a bug.
            raise ValueError(f"naive datetime {value.isoformat()} given; use an aware UTC one")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _money() -> Numeric[Decimal]:
    # On SQLite the value lives as a REAL, which holds 15 significant digits:
    # NUMERIC(14,2) never needs more, and SQLAlchemy reads it back through
    # "%.2f" into a Decimal, so round trips are exact. Python never sees a float.
    return Numeric(14, 2, asdecimal=True)


# --------------------------------------------------------------------------- tables


class DealRow(SQLModel, table=True):
    """The read model of one deal: a projection, newest `version` wins."""

    __tablename__ = "deals"

    deal_id: str = Field(primary_key=True)
    workflow_id: str
    version: int
    dealer_id: str = Field(index=True)
    stage: str = Field(index=True)
    stage_entered_at: datetime = Field(sa_type=UTCDateTime)
    lender_id: str | None = Field(default=None, index=True)
    vehicle_price: Decimal = Field(sa_type=_money())
    amount_financed: Decimal = Field(sa_type=_money())
    approved_amount: Decimal | None = Field(default=None, sa_type=_money())
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime, index=True)
    next_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # Comma-separated role names; My work finds a role's deals by it.
    pending_roles: str = ""
    # JSON list of PendingAction: what each role is to do, by when.
    pending_actions: str = "[]"
    customer_name: str | None = None
    # Comma-separated: the lenders the deal may be sent to; "" when unknown
    # (a row an older worker wrote).
    lender_ids: str = ""

    @property
    def pending_role_list(self) -> list[str]:
        return _split_csv(self.pending_roles)

    @property
    def lender_id_list(self) -> list[str]:
        return _split_csv(self.lender_ids)


class InboxRow(SQLModel, table=True):
    """A lender webhook as received, kept for audit whatever happens to it."""

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        UniqueConstraint("lender_id", "webhook_id", name="uq_webhook_inbox_lender_webhook"),
        CheckConstraint(
            "status IN ('received', 'delivered', 'rejected')", name="ck_webhook_inbox_status"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    lender_id: str
    webhook_id: str
    received_at: datetime = Field(sa_type=UTCDateTime)
    body_sha256: str
    # Raw body as text; `body_sha256` is over the original bytes (see store_webhook).
    body: str = Field(sa_type=Text)
    event_type: str | None = None
    deal_id: str | None = None
    status: str = "received"
    error: str | None = Field(default=None, sa_type=Text)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DocumentRow(SQLModel, table=True):
    __tablename__ = "documents"

    doc_id: str = Field(primary_key=True)
    deal_id: str = Field(index=True)
    kind: str
    party: str
    file_name: str
    content_type: str
    size: int
    sha256: str = Field(index=True)
    storage_key: str
    uploaded_by: str
    uploaded_at: datetime = Field(sa_type=UTCDateTime)


class OutboxRow(SQLModel, table=True):
    __tablename__ = "outbox"

    key: str = Field(primary_key=True)
    deal_id: str = Field(index=True)
    kind: str
    stage: str
    roles: str = ""
    message: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def role_list(self) -> list[str]:
        return _split_csv(self.roles)


class CompensationRow(SQLModel, table=True):
    __tablename__ = "compensations"

    key: str = Field(primary_key=True)
    deal_id: str = Field(index=True)
    kind: str
    detail: str = Field(sa_type=Text)  # JSON object
    created_at: datetime = Field(sa_type=UTCDateTime)

    @property
    def detail_dict(self) -> dict[str, str]:
        loaded: dict[str, str] = json.loads(self.detail)
        return loaded


class IdempotencyKeyRow(SQLModel, table=True):
    """`Idempotency-Key` of `POST /api/deals`: the same subject with the same
    key and body gets the same deal. Another subject's use of the key is
    another request; a key older than the configured hours is free again."""

    __tablename__ = "idempotency_keys"

    # The token's `sub`; "" for keys stored before keys were scoped, which no
    # subject matches (a staff id is never empty).
    subject: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    request_sha256: str
    deal_id: str
    response_status: int
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)


class DeskSessionRow(SQLModel, table=True):
    """A signed-in desk session. The cookie holds an opaque token; only its
    sha256 is stored, so a leaked table cannot be replayed as cookies."""

    __tablename__ = "desk_sessions"

    token_sha256: str = Field(primary_key=True)
    staff_id: str
    # Comma-separated role names, in the order the sign-in granted them.
    roles: str
    # Comma-separated dealer ids whose deals the session sees; NULL: every
    # dealer (the sign-in's token had no dealers claim).
    dealers: str | None = None
    csrf_token: str
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def role_names(self) -> list[str]:
        return _split_csv(self.roles)

    @property
    def dealer_scope(self) -> frozenset[str] | None:
        return None if self.dealers is None else frozenset(_split_csv(self.dealers))


class DealTransitionRow(SQLModel, table=True):
    """One stage change of a deal, for the reports; `seq` numbers a deal's changes."""

    __tablename__ = "deal_transitions"

    deal_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    # The projection that wrote the row: a late or retried one never rewrites a newer one.
    version: int
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    from_stage: str | None = None
    to_stage: str


class LenderDecisionRow(SQLModel, table=True):
    """One application sent to a lender and its answer, for the reports."""

    __tablename__ = "lender_decisions"

    deal_id: str = Field(primary_key=True)
    submission_no: int = Field(primary_key=True)
    version: int
    lender_id: str = Field(index=True)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    first_decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    decision: str | None = None
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Comma-separated reason codes of the decision in force.
    reason_codes: str = ""


class DealClosureRow(SQLModel, table=True):
    """How a deal ended (COMPLETED, CANCELLED, DECLINED, EXPIRED), for the reports."""

    __tablename__ = "deal_closures"

    deal_id: str = Field(primary_key=True)
    version: int
    stage: str
    closed_at: datetime = Field(sa_type=UTCDateTime, index=True)
    reason: str = Field(sa_type=Text)
    reason_codes: str = ""

    @property
    def reason_code_list(self) -> list[str]:
        return _split_csv(self.reason_codes)


def table_of(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


DEALS = table_of(DealRow)
INBOX = table_of(InboxRow)
DOCUMENTS = table_of(DocumentRow)
OUTBOX = table_of(OutboxRow)
COMPENSATIONS = table_of(CompensationRow)
IDEMPOTENCY_KEYS = table_of(IdempotencyKeyRow)
DESK_SESSIONS = table_of(DeskSessionRow)
DEAL_TRANSITIONS = table_of(DealTransitionRow)
LENDER_DECISIONS = table_of(LenderDecisionRow)
DEAL_CLOSURES = table_of(DealClosureRow)


def _split_csv(value: str) -> list[str]:
    return [part for part in value.split(",") if part]


def count_rows(engine: Engine, model: type[SQLModel], **where: Any) -> int:
    """Rows of `model`'s table matching column == value for each keyword."""
    table = table_of(model)
    query = sa_select(func.count()).select_from(table)
    for name, value in where.items():
        column: Column[Any] = table.c[name]
        query = query.where(column == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
