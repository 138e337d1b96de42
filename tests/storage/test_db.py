"""The database layer on SQLite and, when DEALFLOW_TEST_POSTGRES_URL is set, PostgreSQL.

Each PostgreSQL test gets its own schema (selected through the URL's
search_path), so tests never see each other's rows and nothing is left behind.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlmodel import SQLModel

from dealflow.models import (
    CompensationInput,
    DealClosed,
    Decision,
    DocumentKind,
    DocumentRecord,
    LenderDecisionFact,
    NotificationInput,
    Party,
    ProjectionInput,
    Role,
    Stage,
    StageChange,
)
from dealflow.storage import db
from dealflow.storage.db import cli as db_cli

PG_ENV = "DEALFLOW_TEST_POSTGRES_URL"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Engine:
    db.migrate(db_url)
    return db.make_engine(db_url)


def projection(deal_id: str = "d-1", version: int = 1, **changes: Any) -> ProjectionInput:
    fields: dict[str, Any] = {
        "deal_id": deal_id,
        "workflow_id": f"deal-{deal_id}",
        "version": version,
        "dealer_id": "dealer-1",
        "stage": Stage.DOCUMENTS,
        "stage_entered_at": T0,
        "lender_id": None,
        "vehicle_price": Decimal("150000.00"),
        "amount_financed": Decimal("100000.00"),
        "approved_amount": None,
        "created_at": T0,
        "updated_at": T0 + timedelta(minutes=version),
        "next_due_at": None,
        "pending_roles": [Role.SALES],
    }
    fields.update(changes)
    return ProjectionInput(**fields)


# --------------------------------------------------------------------------- migrations


def test_migrations_apply_twice_and_match_the_models(db_url: str) -> None:
    db.migrate(db_url)
    db.migrate(db_url)
    head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    assert db.current_revision(db_url) == head == "0006"

    # The hand-written migration and the sqlmodel tables must describe the
    # same schema, or autogenerate would emit a spurious migration later.
    # Only our tables: other modules may register theirs in the shared metadata.
    ours = {t.name for t in (db.DEALS, db.INBOX, db.DOCUMENTS, db.OUTBOX)}
    ours |= {db.COMPENSATIONS.name, db.IDEMPOTENCY_KEYS.name, db.DESK_SESSIONS.name}
    ours |= {db.DEAL_TRANSITIONS.name, db.LENDER_DECISIONS.name, db.DEAL_CLOSURES.name}

    def include(obj: Any, name: str | None, kind: str, *_: Any) -> bool:
        table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in ours

    with db.make_engine(db_url).connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include}
        )
        assert compare_metadata(ctx, SQLModel.metadata) == []


def test_concurrent_migrations_all_succeed(db_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        for result in [pool.submit(db.migrate, db_url) for _ in range(4)]:
            result.result()
    assert db.current_revision(db_url) == "0006"
    assert db.count_rows(db.make_engine(db_url), db.DealRow) == 0


def test_cli_upgrade(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert db_cli.main(["upgrade", "--url", db_url]) == 0
    assert "at revision 0006" in capsys.readouterr().out


# --------------------------------------------------------------------------- deals


def test_upsert_never_moves_backwards(engine: Engine) -> None:
    assert db.upsert_deal(engine, projection(version=1))
    assert db.upsert_deal(engine, projection(version=3, stage=Stage.UNDERWRITING))
    # Older and equal versions (a retried or late projection) are ignored.
    assert not db.upsert_deal(engine, projection(version=2, stage=Stage.APPLICATION))
    assert not db.upsert_deal(engine, projection(version=3, stage=Stage.CANCELLED))

    row = db.get_deal(engine, "d-1")
    assert row is not None
    assert (row.version, row.stage) == (3, "UNDERWRITING")
    assert db.get_deal(engine, "nope") is None


def test_concurrent_upserts_end_at_highest_version(engine: Engine) -> None:
    versions = list(range(1, 41)) * 2
    random.Random(7).shuffle(versions)
    stages = list(Stage)

    def write(v: int) -> bool:
        p = projection("race", v, stage=stages[v % len(stages)], lender_id=f"lender-{v}")
        return db.upsert_deal(engine, p)

    with ThreadPoolExecutor(8) as pool:
        wrote = list(pool.map(write, versions))

    row = db.get_deal(engine, "race")
    assert row is not None
    assert row.version == 40
    # The whole row is version 40's, not a mix of concurrent writers.
    assert row.stage == stages[40 % len(stages)].value
    assert row.lender_id == "lender-40"
    assert row.updated_at == T0 + timedelta(minutes=40)
    assert 1 <= sum(wrote) <= 40


def _facts(version: int) -> dict[str, Any]:
    """The report facts of deal "facts" as of projection `version` (1..3)."""
    stages = [Stage.CONTRACT, Stage.DOCUMENTS, Stage.APPLICATION, Stage.UNDERWRITING]
    moves = [
        StageChange(
            seq=i,
            at=T0 + timedelta(hours=i),
            from_stage=stages[i - 1] if i else None,
            to_stage=stages[i],
        )
        for i in range(version + 1)
    ]
    decided = version >= 3
    application = LenderDecisionFact(
        submission_no=1,
        lender_id="acme",
        submitted_at=T0 + timedelta(hours=3),
        first_decided_at=T0 + timedelta(hours=5) if decided else None,
        decision=Decision.DECLINED if decided else None,
        decided_at=T0 + timedelta(hours=5) if decided else None,
        reason_codes=["DTI_HIGH"] if decided else [],
    )
    closed = DealClosed(
        stage=Stage.DECLINED,
        at=T0 + timedelta(hours=5),
        reason="every lender declined",
        reason_codes=["DTI_HIGH"],
    )
    return {
        "transitions": moves,
        "lender_decisions": [application] if version >= 2 else [],
        "closed": closed if decided else None,
    }


def test_report_facts_keep_the_newest_projection_whatever_the_order(engine: Engine) -> None:
    # Retried and out of order: 3 arrives before 2, 1 and 3 arrive twice.
    for version in (1, 3, 2, 1, 3):
        db.upsert_deal(engine, projection("facts", version, **_facts(version)))
    since, until = T0, T0 + timedelta(days=1)
    moves = db.moves_between(engine, since, until)
    assert sorted((m.to_stage, m.entered_at) for m in moves) == sorted(
        [
            (Stage.CONTRACT, None),
            (Stage.DOCUMENTS, T0),
            (Stage.APPLICATION, T0 + timedelta(hours=1)),
            (Stage.UNDERWRITING, T0 + timedelta(hours=2)),
        ]
    )
    [application] = db.applications_between(engine, since, until)
    assert application.decision is Decision.DECLINED, "version 2 did not undo version 3"
    assert application.first_decided_at == T0 + timedelta(hours=5)
    [closure] = db.closures_between(engine, since, until)
    assert (closure.stage, closure.reason_codes) == (Stage.DECLINED, ("DTI_HIGH",))
    assert db.count_rows(engine, db.DealTransitionRow, deal_id="facts") == 4
    assert db.moves_between(engine, until, until + timedelta(days=1)) == []


def test_money_and_datetimes_round_trip(engine: Engine) -> None:
    cst = timezone(timedelta(hours=8))
    p = projection(
        version=1,
        vehicle_price=Decimal("123456789012.34"),
        amount_financed=Decimal("0.01"),
        approved_amount=Decimal("99999999999.99"),
        stage_entered_at=datetime(2025, 3, 1, 17, 30, 0, 123456, tzinfo=cst),
        next_due_at=T0 + timedelta(days=7),
        lender_id="acme",
        pending_roles=[Role.CREDIT, Role.FINANCE],
    )
    db.upsert_deal(engine, p)
    row = db.get_deal(engine, "d-1")
    assert row is not None
    for value, expected in (
        (row.vehicle_price, "123456789012.34"),
        (row.amount_financed, "0.01"),
        (row.approved_amount, "99999999999.99"),
    ):
        assert isinstance(value, Decimal)
        assert str(value) == expected
    assert row.stage_entered_at == datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)
    for at in (row.stage_entered_at, row.created_at, row.updated_at, row.next_due_at):
        assert at is not None and at.tzinfo is not None and at.utcoffset() == timedelta(0)
    assert row.pending_role_list == ["credit", "finance"]


def test_naive_datetime_is_refused(engine: Engine) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        db.upsert_deal(engine, projection(updated_at=datetime(2025, 1, 1)))
    assert db.get_deal(engine, "d-1") is None


def _seed(engine: Engine) -> None:
    for i in range(23):
        db.upsert_deal(
            engine,
            projection(
                f"d-{i:02d}",
                1,
                stage=Stage.UNDERWRITING if i % 2 else Stage.DOCUMENTS,
                lender_id="acme" if i % 3 == 0 else "beta",
                dealer_id="dealer-1" if i < 12 else "dealer-2",
                # Groups of equal updated_at, so the deal_id tie-break matters.
                updated_at=T0 + timedelta(minutes=i // 4),
                next_due_at=T0 + timedelta(days=i) if i % 5 else None,
            ),
        )


def test_list_filters(engine: Engine) -> None:
    _seed(engine)

    def ids(**kw: Any) -> set[str]:
        rows, cursor = db.list_deals(engine, limit=100, **kw)
        assert cursor is None
        return {r.deal_id for r in rows}

    assert len(ids()) == 23
    assert ids(stage=Stage.UNDERWRITING) == {f"d-{i:02d}" for i in range(23) if i % 2}
    assert ids(stage="DOCUMENTS") == {f"d-{i:02d}" for i in range(23) if not i % 2}
    assert ids(lender_id="acme") == {f"d-{i:02d}" for i in range(23) if i % 3 == 0}
    assert ids(dealer_id="dealer-2", stage=Stage.UNDERWRITING) == {
        f"d-{i:02d}" for i in range(12, 23) if i % 2
    }
    cutoff = T0 + timedelta(days=10)
    assert ids(overdue_at=cutoff) == {f"d-{i:02d}" for i in range(10) if i % 5}
    assert ids(stage=Stage.COMPLETED) == set()


def test_open_and_overdue_counts_per_stage_leave_closed_deals_out(engine: Engine) -> None:
    _seed(engine)
    # Closed deals with a deadline in the past: neither open nor overdue.
    for i, stage in enumerate((Stage.COMPLETED, Stage.DECLINED, Stage.EXPIRED)):
        db.upsert_deal(engine, projection(f"closed-{i}", 1, stage=stage, next_due_at=T0))
    db.upsert_deal(engine, projection("unwinding", 1, stage=Stage.UNWINDING, next_due_at=T0))

    assert db.open_by_stage(engine) == {"UNDERWRITING": 11, "DOCUMENTS": 12, "UNWINDING": 1}
    # Due before day 10: d-01..d-09 but d-05 (no deadline); odd ones underwrite.
    assert db.overdue_by_stage(engine, T0 + timedelta(days=10)) == {
        "UNDERWRITING": 4,
        "DOCUMENTS": 4,
        "UNWINDING": 1,
    }
    assert db.overdue_by_stage(engine, T0) == {}


def test_pagination_walks_every_row_once(engine: Engine) -> None:
    _seed(engine)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        rows, cursor = db.list_deals(engine, limit=5, cursor=cursor)
        seen.extend(r.deal_id for r in rows)
        pages += 1
        if cursor is None:
            break
        assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    expected = sorted(
        (f"d-{i:02d}" for i in range(23)), key=lambda d: (int(d[2:]) // 4, d), reverse=True
    )
    assert seen == expected

    # Filters and cursor combine.
    first, cursor = db.list_deals(engine, lender_id="beta", limit=4)
    rest, end = db.list_deals(engine, lender_id="beta", limit=100, cursor=cursor)
    assert end is None
    assert len(first) + len(rest) == len({f"d-{i:02d}" for i in range(23) if i % 3})


def _walk(engine: Engine, sort: str, limit: int = 4) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        rows, cursor = db.list_deals(engine, limit=limit, cursor=cursor, sort=sort)
        seen.extend(r.deal_id for r in rows)
        if cursor is None:
            return seen


def test_every_sort_pages_through_every_row_once_in_its_order(engine: Engine) -> None:
    _seed(engine)
    ids = [f"d-{i:02d}" for i in range(23)]
    # Soonest deadline first; deals without one last, by id.
    assert _walk(engine, "due") == [d for d in ids if int(d[2:]) % 5] + [
        d for d in ids if not int(d[2:]) % 5
    ]
    assert _walk(engine, "created") == sorted(ids, reverse=True)
    assert _walk(engine, "stage_entered") == ids
    assert _walk(engine, "updated") == _walk(engine, "updated", limit=100)


def test_a_cursor_belongs_to_its_sort(engine: Engine) -> None:
    _seed(engine)
    _, cursor = db.list_deals(engine, limit=3, sort="due")
    assert cursor is not None
    with pytest.raises(ValueError, match="invalid cursor"):
        db.list_deals(engine, cursor=cursor)
    with pytest.raises(ValueError, match="unknown sort"):
        db.list_deals(engine, sort="customer_name")


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "",
        "Zm9v",  # foo
        "W10",  # []
        "WzEsMl0",  # [1,2]
        "WyJ5ZXN0ZXJkYXkiLCAiZC0xIl0",  # ["yesterday", "d-1"]
        "WyIyMDI1LTAxLTAxVDAwOjAwOjAwIiwgImQtMSJd",  # naive time
    ],
)
def test_bad_cursor_is_a_value_error(engine: Engine, cursor: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        db.list_deals(engine, cursor=cursor)


def test_bad_limit_and_naive_overdue(engine: Engine) -> None:
    with pytest.raises(ValueError, match="limit"):
        db.list_deals(engine, limit=0)
    with pytest.raises(ValueError, match="naive"):
        db.list_deals(engine, overdue_at=datetime(2025, 1, 1))


# ----------------------------------------------------------- outbox, compensations, documents


def test_outbox_is_idempotent(engine: Engine) -> None:
    n = NotificationInput(
        key="d-1:DOCUMENTS:1:reminder:1",
        deal_id="d-1",
        kind="reminder",
        stage=Stage.DOCUMENTS,
        roles=[Role.SALES, Role.CREDIT],
        message="documents missing",
    )
    assert db.add_notification(engine, n, T0)
    assert not db.add_notification(engine, n.model_copy(update={"message": "other"}), T0)
    assert db.count_rows(engine, db.OutboxRow, deal_id="d-1") == 1

    [row] = db.unsent_notifications(engine)
    assert (row.message, row.role_list, row.created_at) == (
        "documents missing",
        ["sales", "credit"],
        T0,
    )
    assert db.mark_notification_sent(engine, row.key, T0 + timedelta(seconds=1))
    assert not db.mark_notification_sent(engine, row.key)
    assert db.unsent_notifications(engine) == []


def test_compensations_are_idempotent(engine: Engine) -> None:
    c = CompensationInput(key="d-1:refund", deal_id="d-1", kind="refund_down_payment",
                          detail={"amount": "30000.00", "note": "退款"})  # fmt: skip
    assert db.record_compensation(engine, c, T0)
    assert not db.record_compensation(engine, c, T0 + timedelta(hours=1))
    assert db.count_rows(engine, db.CompensationRow) == 1


def test_documents_are_idempotent(engine: Engine) -> None:
    d = DocumentRecord(
        doc_id="doc-1",
        kind=DocumentKind.ID_CARD,
        party=Party.APPLICANT,
        file_name="id.pdf",
        content_type="application/pdf",
        size=1234,
        sha256="ab" * 32,
        storage_key="deals/d-1/doc-1",
        uploaded_by="staff-7",
        uploaded_at=T0,
    )
    assert db.add_document(engine, "d-1", d)
    assert not db.add_document(engine, "d-1", d)
    [row] = db.list_documents(engine, "d-1")
    assert (row.kind, row.party, row.size, row.uploaded_at) == ("id_card", "applicant", 1234, T0)


# --------------------------------------------------------------------------- webhook inbox


def _store(engine: Engine, body: bytes, webhook_id: str = "msg_1", lender: str = "acme") -> Any:
    return db.store_webhook(
        engine,
        lender_id=lender,
        webhook_id=webhook_id,
        body=body,
        received_at=T0,
        event_type="application.decided",
        deal_id="d-1",
    )


def test_inbox_new_duplicate_conflict(engine: Engine) -> None:
    body = b'{"type": "application.decided", "data": {}}'
    row, outcome = _store(engine, body)
    assert outcome == "new"
    assert (row.status, row.body, row.received_at, row.delivered_at) == (
        "received",
        body.decode(),
        T0,
        None,
    )

    again, outcome = _store(engine, body)
    assert (outcome, again.id) == ("duplicate", row.id)

    other, outcome = _store(engine, body + b" ")
    assert (outcome, other.id, other.body_sha256) == ("conflict", row.id, row.body_sha256)

    # The same webhook id from another lender is another message.
    _, outcome = _store(engine, body, lender="beta")
    assert outcome == "new"
    assert db.count_rows(engine, db.InboxRow) == 2


def test_inbox_race_has_one_winner(engine: Engine) -> None:
    barrier = threading.Barrier(6)

    def deliver(_: int) -> str:
        barrier.wait()
        return str(_store(engine, b"{}", webhook_id="msg_race")[1])

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(deliver, range(6)))
    assert outcomes == ["duplicate"] * 5 + ["new"]


def test_inbox_keeps_undecodable_bodies_and_marks(engine: Engine) -> None:
    row, _ = _store(engine, b"\xff\x00not json")
    assert row.body == "\ufffd\ufffdnot json"
    assert row.id is not None

    assert db.mark_webhook(engine, row.id, "rejected", error="malformed body")
    got = db.get_webhook(engine, row.id)
    assert got is not None and (got.status, got.error, got.delivered_at) == (
        "rejected",
        "malformed body",
        None,
    )

    good, _ = _store(engine, b"{}", webhook_id="msg_2")
    assert good.id is not None
    assert db.mark_webhook(engine, good.id, "delivered", at=T0 + timedelta(seconds=2))
    got = db.get_webhook(engine, good.id)
    assert got is not None and got.delivered_at == T0 + timedelta(seconds=2)

    assert not db.mark_webhook(engine, 10_000, "delivered")
    bad_status: Callable[..., bool] = db.mark_webhook
    with pytest.raises(ValueError, match="unknown webhook status"):
        bad_status(engine, good.id, "lost")


# --------------------------------------------------------------------------- idempotency keys


def test_idempotency_keys(engine: Engine) -> None:
    row, new = db.remember_idempotency_key(
        engine,
        subject="ann",
        key="k1",
        request_sha256="aa",
        deal_id="d-1",
        response_status=201,
        created_at=T0,
    )
    assert new and row.deal_id == "d-1"
    row, new = db.remember_idempotency_key(
        engine,
        subject="ann",
        key="k1",
        request_sha256="bb",
        deal_id="d-2",
        response_status=201,
        created_at=T0,
    )
    assert not new
    assert (row.request_sha256, row.deal_id, row.created_at) == ("aa", "d-1", T0)
    got = db.get_idempotency_key(engine, "ann", "k1")
    assert got is not None and got.deal_id == "d-1"
    expired = db.get_idempotency_key(engine, "ann", "k1", expires_before=T0 + timedelta(hours=1))
    assert expired is None


def test_idempotency_keys_belong_to_their_subject(engine: Engine) -> None:
    first: dict[str, Any] = {
        "key": "k1",
        "request_sha256": "aa",
        "response_status": 201,
        "created_at": T0,
    }
    db.remember_idempotency_key(engine, subject="ann", deal_id="d-1", **first)
    row, new = db.remember_idempotency_key(engine, subject="bob", deal_id="d-2", **first)
    assert new and row.deal_id == "d-2"
    assert db.get_idempotency_key(engine, "bob", "k1") == row
    assert db.get_idempotency_key(engine, "cy", "k1") is None
    # forgetting bob's key leaves ann's
    db.forget_idempotency_key(engine, "bob", "k1", "d-2")
    assert db.get_idempotency_key(engine, "bob", "k1") is None
    assert db.get_idempotency_key(engine, "ann", "k1") is not None


def test_expired_idempotency_keys_are_stored_anew(engine: Engine) -> None:
    later = T0 + timedelta(hours=25)
    db.remember_idempotency_key(
        engine,
        subject="ann",
        key="k1",
        request_sha256="aa",
        deal_id="d-1",
        response_status=201,
        created_at=T0,
    )
    row, new = db.remember_idempotency_key(
        engine,
        subject="ann",
        key="k1",
        request_sha256="bb",
        deal_id="d-2",
        response_status=201,
        created_at=later,
        expires_before=later - timedelta(hours=24),
    )
    assert new and (row.deal_id, row.request_sha256, row.created_at) == ("d-2", "bb", later)
    assert db.count_rows(engine, db.IdempotencyKeyRow) == 1


def test_migration_scopes_existing_idempotency_keys(db_url: str) -> None:
    """Rows stored before keys had subjects survive 0005: a desk form's key is
    its clerk's (the key names the staff id), an API key nobody's."""
    from alembic import command

    cfg = db.alembic_config(url=db_url)
    command.upgrade(cfg, "0004")
    engine = db.make_engine(db_url)
    old_table = sa.table(
        "idempotency_keys",
        *(sa.column(name) for name in ("key", "request_sha256", "deal_id", "response_status")),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    with engine.begin() as conn:
        for key, deal_id in (("desk:li.sales:form-1", "d-1"), ("api-key-1", "d-2")):
            conn.execute(
                sa.insert(old_table).values(
                    key=key, request_sha256="aa", deal_id=deal_id, response_status=201
                ),
                {"created_at": T0},
            )
    command.upgrade(cfg, "head")
    desk = db.get_idempotency_key(engine, "li.sales", "desk:li.sales:form-1")
    assert desk is not None and (desk.deal_id, desk.created_at) == ("d-1", T0)
    legacy = db.get_idempotency_key(engine, "", "api-key-1")
    assert legacy is not None and legacy.deal_id == "d-2"
    assert db.count_rows(engine, db.IdempotencyKeyRow) == 2
    # and back: one row per key again
    command.downgrade(cfg, "0004")
    with engine.connect() as conn:
        keys = conn.exec_driver_sql("SELECT key, deal_id FROM idempotency_keys").all()
    assert sorted(map(tuple, keys)) == [("api-key-1", "d-2"), ("desk:li.sales:form-1", "d-1")]
    command.upgrade(cfg, "head")


def test_inbox_batch_is_one_transaction_in_order(engine: Engine) -> None:
    """A group commit's batch: stores and marks in order, duplicates within the
    batch seen as duplicates, and a failing op leaves nothing of the batch."""

    def hook(webhook_id: str, body: bytes = b"{}") -> db.WebhookIn:
        return db.WebhookIn("acme", webhook_id, body, T0, "application.decided", "d-1")

    first, dup, other = db.write_inbox(
        engine, [hook("msg_b1"), hook("msg_b1"), hook("msg_b2", b'{"x": 1}')]
    )
    assert isinstance(first, tuple) and isinstance(dup, tuple) and isinstance(other, tuple)
    assert (first[1], dup[1], other[1]) == ("new", "duplicate", "new")
    assert dup[0].id == first[0].id
    assert first[0].id is not None and other[0].id is not None

    results = db.write_inbox(
        engine,
        [
            db.WebhookMark(first[0].id, "delivered", at=T0),
            hook("msg_b2", b'{"x": 2}'),
            db.WebhookMark(10_000, "delivered"),
        ],
    )
    assert results[0] is True and results[2] is False
    assert isinstance(results[1], tuple) and results[1][1] == "conflict"

    with pytest.raises(ValueError, match="unknown webhook status"):
        db.write_inbox(engine, [hook("msg_b3"), db.WebhookMark(other[0].id, "lost")])  # type: ignore[arg-type]
    assert db.count_rows(engine, db.InboxRow) == 2, "the failed batch stored nothing"
    got = db.get_webhook(engine, first[0].id)
    assert got is not None and (got.status, got.delivered_at) == ("delivered", T0)
