"""The database: the deal read model, the webhook inbox, document metadata, the
notification outbox, compensations and HTTP idempotency keys.

Sync sqlmodel on SQLite (default) or PostgreSQL (by URL). The workflow history
is the source of truth; everything written here is either a projection of it
or an inbox/outbox around it, so every writer is idempotent and safe to retry.
Each function opens its own short transaction: callers (activities, the API)
never hold a session across awaits.

Schema changes go through alembic (`dealflow/storage/migrations`), run with
`python -m dealflow.storage.db upgrade [--url URL]` or `migrate(url)`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from alembic.config import Config

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
    and_,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    update,
)
from sqlalchemy import (
    select as sa_select,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, make_url
from sqlmodel import Field, Session, SQLModel, col, select

from dealflow.models import (
    CompensationInput,
    DealSummary,
    DocumentRecord,
    NotificationInput,
    ProjectionInput,
    Stage,
)

if __name__ == "__main__":
    # `python -m dealflow.storage.db`: run the CLI from the real `dealflow.storage.db` module.
    # Defining the tables here too would register them twice in SQLModel's
    # shared metadata once migrations/env.py imports `dealflow.storage.db`.
    from dealflow.storage.db import main as _main

    raise SystemExit(_main())

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# How long a SQLite writer waits for another writer before "database is locked".
# Our transactions last milliseconds; waiting is better than failing an activity.
SQLITE_BUSY_TIMEOUT_MS = 15_000

# Connection execution option: the transaction will write, so on SQLite take the
# write lock at BEGIN rather than upgrading a read lock later (an upgrade under
# WAL fails immediately with SQLITE_BUSY instead of waiting for busy_timeout).
_WRITE_OPTION = "dealflow_write"


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
    # Comma-separated: only ever read whole, never queried by role.
    pending_roles: str = ""

    @property
    def pending_role_list(self) -> list[str]:
        return _split_csv(self.pending_roles)


WebhookStatus = Literal["received", "delivered", "rejected"]
StoreOutcome = Literal["new", "duplicate", "conflict"]


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
    """`Idempotency-Key` of `POST /api/deals`: same key + same body → same deal."""

    __tablename__ = "idempotency_keys"

    key: str = Field(primary_key=True)
    request_sha256: str
    deal_id: str
    response_status: int
    created_at: datetime = Field(sa_type=UTCDateTime)


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


DEALS = _table(DealRow)
INBOX = _table(InboxRow)
DOCUMENTS = _table(DocumentRow)
OUTBOX = _table(OutboxRow)
COMPENSATIONS = _table(CompensationRow)
IDEMPOTENCY_KEYS = _table(IdempotencyKeyRow)


def _split_csv(value: str) -> list[str]:
    return [part for part in value.split(",") if part]


# --------------------------------------------------------------------------- engines


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """psycopg 3 is the PostgreSQL driver we ship; accept the common spellings."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """The engine for `url`, one per URL per process (engines own the pool).

    For PostgreSQL a schema other than the default can be selected in the URL,
    e.g. `...?options=-csearch_path%3Dmyschema`; migrations honour it too.
    """
    url = normalise_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            _engines[url] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close the pool of `url`'s engine and forget it (tests, shutdown)."""
    with _engines_lock:
        engine = _engines.pop(normalise_url(url), None)
    if engine is not None:
        engine.dispose()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module: in its legacy mode it skips
        # BEGIN before SELECT and DDL, so reads are not repeatable and
        # migrations are not atomic. The "begin" hook below emits it instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL lets readers (the API listing deals) run beside the writer.
            cursor.execute("PRAGMA journal_mode = WAL")
            # A stored webhook is acknowledged 2xx: it must survive power loss.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@contextmanager
def _writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed on success, rolled back on error."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


def _insert(conn: Connection, table: Table) -> Any:
    """A dialect INSERT that supports ON CONFLICT (SQLite and PostgreSQL agree)."""
    return _insert_for(conn.dialect.name, table)


def _insert_for(name: str, table: Table) -> Any:
    if name == "postgresql":
        return pg_dialect.insert(table)
    if name == "sqlite":
        return sqlite_dialect.insert(table)
    raise NotImplementedError(f"database dialect {name!r} is not supported (sqlite, postgresql)")


def _wrote(conn: Connection, stmt: Any) -> bool:
    # RETURNING yields a row only for a row actually inserted or updated.
    # SQLAlchemy does not promise an INSERT's rowcount (psycopg gives -1 here).
    return conn.execute(stmt).first() is not None


def _wrote_with(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> bool:
    return conn.execute(stmt, params).first() is not None


def _insert_if_absent(engine: Engine, table: Table, values: Mapping[str, Any]) -> bool:
    with _writing(engine) as conn:
        return _wrote_with(conn, _insert_if_absent_statement(conn.dialect.name, table), values)


@functools.cache
def _insert_if_absent_statement(dialect: str, table: Table) -> Any:
    pk = [c.name for c in table.primary_key.columns]
    return (
        _insert_for(dialect, table)
        .on_conflict_do_nothing(index_elements=pk)
        .returning(*table.primary_key.columns)
    )


# --------------------------------------------------------------------------- migrations


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """The alembic Config this project uses instead of an alembic.ini file.

    With `connection`, migrations run on it (inside its transaction); otherwise
    env.py connects to `url`.
    """
    # alembic is imported where it is used: a fifth of a second that the
    # worker and the API, which never migrate, would pay on every start.
    from alembic.config import Config

    cfg = Config()
    # Config values go through ConfigParser interpolation: escape '%'.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema (`alembic upgrade head`).

    Safe to run from several processes at once: each waits for the others, then
    finds the schema current and does nothing.
    """
    engine = make_engine(url)
    with _writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Serialises migrators of the same schema until commit; DDL is
            # transactional here, so a failed upgrade leaves nothing behind.
            conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext('dealflow.migrate:' || current_schema()))"
            )
        # On SQLite, BEGIN IMMEDIATE (see _writing) is the lock.
        from alembic import command

        command.upgrade(alembic_config(connection=conn), "head")


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with make_engine(url).connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev


# --------------------------------------------------------------------------- deals


def upsert_deal(engine: Engine, p: ProjectionInput) -> bool:
    """Write the projection unless the stored one is as new or newer.

    Projections are retried and may arrive out of order; the version guard in
    the ON CONFLICT clause makes the check and the write one atomic statement,
    so concurrent writers end at the highest version. Returns whether it wrote.
    """
    values: dict[str, Any] = {
        "deal_id": p.deal_id,
        "workflow_id": p.workflow_id,
        "version": p.version,
        "dealer_id": p.dealer_id,
        "stage": p.stage.value,
        "stage_entered_at": p.stage_entered_at,
        "lender_id": p.lender_id,
        "vehicle_price": p.vehicle_price,
        "amount_financed": p.amount_financed,
        "approved_amount": p.approved_amount,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "next_due_at": p.next_due_at,
        "pending_roles": ",".join(str(r) for r in p.pending_roles),
    }
    with _writing(engine) as conn:
        return _wrote_with(conn, _upsert_deal_statement(conn.dialect.name), values)


@functools.cache
def _upsert_deal_statement(dialect: str) -> Any:
    # Built once per dialect, values bound at execution: the read model is
    # written after nearly every step of every deal, and building and
    # compiling this statement each time was most of the write's CPU.
    stmt = _insert_for(dialect, DEALS)
    columns = [c.name for c in DEALS.columns if c.name != "deal_id"]
    return stmt.on_conflict_do_update(
        index_elements=["deal_id"],
        set_={k: stmt.excluded[k] for k in columns},
        where=DEALS.c.version < stmt.excluded.version,
    ).returning(DEALS.c.deal_id)


def deal_summary(row: DealRow, now: datetime) -> DealSummary:
    """A read-model row as the API and the CLI show it."""
    return DealSummary(
        deal_id=row.deal_id,
        workflow_id=row.workflow_id,
        dealer_id=row.dealer_id,
        stage=Stage(row.stage),
        stage_entered_at=row.stage_entered_at,
        lender_id=row.lender_id,
        vehicle_price=row.vehicle_price,
        amount_financed=row.amount_financed,
        approved_amount=row.approved_amount,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_due_at=row.next_due_at,
        overdue=row.next_due_at is not None and row.next_due_at < now,
        pending_roles=row.pending_role_list,
    )


def get_deal(engine: Engine, deal_id: str) -> DealRow | None:
    with Session(engine) as session:
        return session.get(DealRow, deal_id)


def _encode_cursor(row: DealRow) -> str:
    raw = json.dumps([row.updated_at.astimezone(UTC).isoformat(), row.deal_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    problem = f"invalid cursor {cursor[:80]!r}: pass back a cursor returned by the deal list"
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated, deal_id = json.loads(raw)
        if not isinstance(updated, str) or not isinstance(deal_id, str):
            raise ValueError(problem)
        at = datetime.fromisoformat(updated)
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError) as e:
        raise ValueError(problem) from e
    if at.tzinfo is None:
        raise ValueError(problem)
    return at, deal_id


def list_deals(
    engine: Engine,
    *,
    stage: str | None = None,
    lender_id: str | None = None,
    dealer_id: str | None = None,
    overdue_at: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[DealRow], str | None]:
    """One page of deals, newest change first, and the cursor of the next page.

    Keyset pagination on (updated_at, deal_id): pages stay stable while deals
    are updated, and no page costs an OFFSET scan. `overdue_at` keeps deals
    whose next deadline is before it. The cursor is None on the last page.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if overdue_at is not None and overdue_at.utcoffset() is None:
        raise ValueError(f"overdue_at {overdue_at.isoformat()} is naive; use an aware UTC datetime")
    query = select(DealRow)
    if stage is not None:
        query = query.where(col(DealRow.stage) == str(stage))
    if lender_id is not None:
        query = query.where(col(DealRow.lender_id) == lender_id)
    if dealer_id is not None:
        query = query.where(col(DealRow.dealer_id) == dealer_id)
    if overdue_at is not None:
        query = query.where(col(DealRow.next_due_at) < overdue_at)
    if cursor is not None:
        after_at, after_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                col(DealRow.updated_at) < after_at,
                and_(col(DealRow.updated_at) == after_at, col(DealRow.deal_id) < after_id),
            )
        )
    query = query.order_by(col(DealRow.updated_at).desc(), col(DealRow.deal_id).desc())
    with Session(engine) as session:
        rows = list(session.exec(query.limit(limit + 1)).all())
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, _encode_cursor(rows[-1])
    return rows, None


# ----------------------------------------------------------- outbox, compensations, documents


def add_notification(engine: Engine, n: NotificationInput, created_at: datetime) -> bool:
    """Queue a notification once per key; True if it was not queued before."""
    return _insert_if_absent(
        engine,
        OUTBOX,
        {
            "key": n.key,
            "deal_id": n.deal_id,
            "kind": n.kind,
            "stage": n.stage.value,
            "roles": ",".join(r.value for r in n.roles),
            "message": n.message,
            "created_at": created_at,
            "sent_at": None,
        },
    )


def unsent_notifications(engine: Engine, limit: int = 100) -> list[OutboxRow]:
    query = (
        select(OutboxRow)
        .where(col(OutboxRow.sent_at).is_(None))
        .order_by(col(OutboxRow.created_at), col(OutboxRow.key))
        .limit(limit)
    )
    with Session(engine) as session:
        return list(session.exec(query).all())


def mark_notification_sent(engine: Engine, key: str, at: datetime | None = None) -> bool:
    """Record the send; the first time wins. True if this call recorded it."""
    stmt = (
        update(OUTBOX)
        .where(OUTBOX.c.key == key, OUTBOX.c.sent_at.is_(None))
        .values(sent_at=at or datetime.now(UTC))
    )
    with _writing(engine) as conn:
        return bool(conn.execute(stmt).rowcount == 1)


def record_compensation(engine: Engine, c: CompensationInput, created_at: datetime) -> bool:
    """Record a compensation once per key; True if it was not recorded before."""
    return _insert_if_absent(
        engine,
        COMPENSATIONS,
        {
            "key": c.key,
            "deal_id": c.deal_id,
            "kind": c.kind,
            "detail": json.dumps(c.detail, sort_keys=True, ensure_ascii=False),
            "created_at": created_at,
        },
    )


def add_document(engine: Engine, deal_id: str, d: DocumentRecord) -> bool:
    """Record a document's metadata once per doc_id; True if new."""
    return _insert_if_absent(
        engine,
        DOCUMENTS,
        {
            "doc_id": d.doc_id,
            "deal_id": deal_id,
            "kind": d.kind.value,
            "party": d.party.value,
            "file_name": d.file_name,
            "content_type": d.content_type,
            "size": d.size,
            "sha256": d.sha256,
            "storage_key": d.storage_key,
            "uploaded_by": d.uploaded_by,
            "uploaded_at": d.uploaded_at,
        },
    )


def list_documents(engine: Engine, deal_id: str) -> list[DocumentRow]:
    query = (
        select(DocumentRow)
        .where(col(DocumentRow.deal_id) == deal_id)
        .order_by(col(DocumentRow.uploaded_at), col(DocumentRow.doc_id))
    )
    with Session(engine) as session:
        return list(session.exec(query).all())


# --------------------------------------------------------------------------- webhook inbox


def _body_text(body: bytes) -> str:
    # The column is text. A lender body that is not UTF-8 (or holds NUL, which
    # PostgreSQL text cannot) is still kept for audit, with U+FFFD in place of
    # the bad bytes; body_sha256 is always over the original bytes.
    return body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


@dataclass(frozen=True)
class WebhookIn:
    """A received webhook, as `store_webhooks` stores it."""

    lender_id: str
    webhook_id: str
    body: bytes
    received_at: datetime
    event_type: str | None
    deal_id: str | None


@dataclass(frozen=True)
class WebhookMark:
    """A stored webhook's new status, as `mark_webhooks` writes it."""

    row_id: int
    status: WebhookStatus
    error: str | None = None
    at: datetime | None = None


def store_webhook(
    engine: Engine,
    *,
    lender_id: str,
    webhook_id: str,
    body: bytes,
    received_at: datetime,
    event_type: str | None,
    deal_id: str | None,
) -> tuple[InboxRow, StoreOutcome]:
    """Store a received webhook once per (lender_id, webhook_id); see `store_webhooks`."""
    hook = WebhookIn(lender_id, webhook_id, body, received_at, event_type, deal_id)
    with _writing(engine) as conn:
        return _store_webhook(conn, hook)


def write_inbox(
    engine: Engine, ops: Sequence[WebhookIn | WebhookMark]
) -> list[tuple[InboxRow, StoreOutcome] | bool]:
    """Store and mark many webhooks in one transaction: one commit (one fsync)
    for a whole batch of concurrent requests. Results in the order of `ops`."""
    with _writing(engine) as conn:
        return [
            _store_webhook(conn, op) if isinstance(op, WebhookIn) else _mark_webhook(conn, op)
            for op in ops
        ]


def _store_webhook(conn: Connection, hook: WebhookIn) -> tuple[InboxRow, StoreOutcome]:
    """'new': stored now. 'duplicate': stored before with the same body (a lender
    retry). 'conflict': that id was stored with a different body, which stays
    as it was. ON CONFLICT DO NOTHING on the unique key makes concurrent
    deliveries of the same id race-free: exactly one of them is 'new'.
    """
    sha = hashlib.sha256(hook.body).hexdigest()
    values: dict[str, Any] = {
        "lender_id": hook.lender_id,
        "webhook_id": hook.webhook_id,
        "received_at": hook.received_at,
        "body_sha256": sha,
        "body": _body_text(hook.body),
        "event_type": hook.event_type,
        "deal_id": hook.deal_id,
        "status": "received",
    }
    new_id = conn.execute(_store_webhook_statement(conn.dialect.name), values).scalar()
    if new_id is not None:
        return InboxRow(id=new_id, **values), "new"
    key = {"lender_id": hook.lender_id, "webhook_id": hook.webhook_id}
    found = conn.execute(_find_webhook_statement(), key).mappings().one()
    row = InboxRow(**found)
    return row, "duplicate" if row.body_sha256 == sha else "conflict"


# The inbox is written once or twice per webhook: its statements are built once,
# with values bound at execution (building them was most of a write's CPU).
@functools.cache
def _store_webhook_statement(dialect: str) -> Any:
    return (
        _insert_for(dialect, INBOX)
        .on_conflict_do_nothing(index_elements=["lender_id", "webhook_id"])
        .returning(INBOX.c.id)
    )


@functools.cache
def _find_webhook_statement() -> Any:
    return sa_select(INBOX).where(
        INBOX.c.lender_id == bindparam("lender_id"),
        INBOX.c.webhook_id == bindparam("webhook_id"),
    )


@functools.cache
def _mark_webhook_statement(delivered: bool) -> Any:
    values: dict[str, Any] = {"status": bindparam("new_status"), "error": bindparam("new_error")}
    if delivered:
        values["delivered_at"] = bindparam("new_delivered_at")
    return update(INBOX).where(INBOX.c.id == bindparam("row_id")).values(**values)


def pending_webhooks(engine: Engine, received_before: datetime, limit: int = 100) -> list[InboxRow]:
    """Stored webhooks never marked delivered or rejected (the API stopped in between)."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(InboxRow)
                .where(
                    col(InboxRow.status) == "received",
                    col(InboxRow.received_at) < received_before,
                )
                .order_by(col(InboxRow.id))
                .limit(limit)
            ).all()
        )


def get_webhook(engine: Engine, row_id: int) -> InboxRow | None:
    with Session(engine) as session:
        return session.get(InboxRow, row_id)


def mark_webhook(
    engine: Engine,
    row_id: int,
    status: WebhookStatus,
    error: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Set a stored webhook's status; `delivered_at` is set when delivered.

    Returns False if there is no such row.
    """
    mark = WebhookMark(row_id, status, error, at)
    with _writing(engine) as conn:
        return _mark_webhook(conn, mark)


def _mark_webhook(conn: Connection, mark: WebhookMark) -> bool:
    if mark.status not in get_args(WebhookStatus):
        raise ValueError(f"unknown webhook status {mark.status!r}")
    delivered = mark.status == "delivered"
    params: dict[str, Any] = {
        "row_id": mark.row_id,
        "new_status": mark.status,
        "new_error": mark.error,
    }
    if delivered:
        params["new_delivered_at"] = mark.at or datetime.now(UTC)
    result = conn.execute(_mark_webhook_statement(delivered), params)
    return bool(result.rowcount == 1)


# --------------------------------------------------------------------------- idempotency keys


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
    with _writing(engine) as conn:
        stmt = (
            _insert(conn, IDEMPOTENCY_KEYS)
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
        inserted = _wrote(conn, stmt)
        with Session(bind=conn) as session:
            row = session.get(IdempotencyKeyRow, key)
    assert row is not None
    return row, inserted


def get_idempotency_key(engine: Engine, key: str) -> IdempotencyKeyRow | None:
    with Session(engine) as session:
        return session.get(IdempotencyKeyRow, key)


# --------------------------------------------------------------------------- counts


def count_rows(engine: Engine, model: type[SQLModel], **where: Any) -> int:
    """Rows of `model`'s table matching column == value for each keyword."""
    table = _table(model)
    query = sa_select(func.count()).select_from(table)
    for name, value in where.items():
        column: Column[Any] = table.c[name]
        query = query.where(column == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dealflow.storage.db", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("upgrade", "apply all migrations (alembic upgrade head)"),
        ("current", "print the schema revision of the database"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", help="database URL (default: DEALFLOW_DATABASE_URL)")
    args = parser.parse_args(argv)

    from dealflow.config import get_settings

    url: str = args.url or get_settings().database_url
    shown = make_url(normalise_url(url)).render_as_string(hide_password=True)
    if args.command == "upgrade":
        migrate(url)
        print(f"{shown}: at revision {current_revision(url)}")
    else:
        print(f"{shown}: at revision {current_revision(url) or '(none)'}")
    return 0
