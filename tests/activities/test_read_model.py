"""The read model a deal projects, on SQLite and on PostgreSQL: after each
transition the deals table agrees with the workflow's own status."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from activities.deal_activities import DealActivities
from dealflow.models import NotificationInput, Role, Stage
from dealflow.storage import db
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.back_office import Desk
from tests.support.stack import Stack, deal_worker


@pytest.fixture
async def pg_or_sqlite_desk(ts_stack: Stack, db_url: str) -> AsyncIterator[tuple[Desk, Engine]]:  # noqa: F811
    db.migrate(db_url)
    # The worker projects into this database; the API keeps its own.
    async with deal_worker(ts_stack.env.client, db_url, ts_stack.lenders, ts_stack.store) as tq:
        yield Desk(ts_stack, tq), db.make_engine(db_url)


async def _row_matches(desk: Desk, engine: Engine) -> db.DealRow:
    for _ in range(200):
        st = await desk.status()
        row = await asyncio.to_thread(db.get_deal, engine, desk.deal_id)
        if row is not None and row.version == st.version:
            assert row.stage == st.stage.value
            assert row.lender_id == st.lender_id
            assert row.amount_financed == st.money.amount_financed
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"read model of {desk.deal_id} never caught up with the workflow")


async def test_read_model_follows_every_transition(
    pg_or_sqlite_desk: tuple[Desk, Engine],
) -> None:
    desk, engine = pg_or_sqlite_desk
    await desk.start()
    assert (await _row_matches(desk, engine)).stage == Stage.CONTRACT.value
    await desk.through_underwriting()
    row = await _row_matches(desk, engine)
    assert row.stage == Stage.DOWN_PAYMENT.value
    assert row.pending_role_list == ["finance"]
    assert row.next_due_at is not None
    await desk.do("cancel", reason="customer withdrew")
    await desk.result()
    row = await _row_matches(desk, engine)
    assert row.stage == Stage.CANCELLED.value and row.next_due_at is None
    rows, _ = db.list_deals(engine, stage="CANCELLED")
    assert desk.deal_id in {r.deal_id for r in rows}


async def test_one_projection_in_flight_and_compact_update_results(
    pg_or_sqlite_desk: tuple[Desk, Engine],
) -> None:
    """An update that changes the stage owes the read model one snapshot, not
    two; while one is being written, later changes wait and go as one. Update
    results are receipts: the whole status is never copied into history."""
    from temporalio.api.enums.v1 import EventType

    desk, engine = pg_or_sqlite_desk
    await desk.start()
    await desk.through_underwriting()
    await _row_matches(desk, engine)

    events = list((await desk.handle.fetch_history()).events)
    updates = [
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    signals = [
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    projections = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "project_deal"
    ]
    # At most one per change (start, each update, each signal, each activity
    # outcome that moves the deal); the stage changes alone used to double it.
    assert len(projections) <= 1 + len(updates) + len(signals) + 2, len(projections)
    completed = [
        e.workflow_execution_update_completed_event_attributes.outcome.success.payloads[0]
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
    ]
    assert completed and max(len(p.data) for p in completed) < 600, "receipts, not statuses"
    # Close the deal: a deal left waiting would fire its timers on this test's
    # gone task queue while later tests skip time, and hold the skipping up.
    await desk.do("cancel", reason="test over")
    await desk.result()


async def test_a_notification_is_logged_with_ids_only_never_its_message(
    database_url: str, store: LocalDirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A notice may quote a lender's reasons (the adverse-action notice): the
    outbox keeps the message for the people it is for, the log line names the
    deal, the kind and the roles only."""
    deal_id = f"deal-{uuid.uuid4().hex[:8]}"
    message = "adverse-action notice: DTI_TOO_HIGH: payment 3,218.15 of income 4,597.00"
    async with httpx.AsyncClient() as http:
        engine = db.make_engine(database_url)
        bookkeeping = DealActivities(engine, {}, http, store)
        caplog.set_level(logging.INFO, logger="dealflow.activities")
        notice = NotificationInput(
            key=f"{deal_id}:adverse",
            deal_id=deal_id,
            kind="adverse_action",
            stage=Stage.DECLINED,
            roles=[Role.SALES],
            message=message,
        )
        assert bookkeeping.notify(notice).new is True
    [line] = [record for record in caplog.records if record.getMessage().startswith("notification")]
    assert line.getMessage() == "notification adverse_action for sales"
    assert getattr(line, "deal_id", None) == deal_id
    assert "4,597" not in caplog.text and "3,218" not in caplog.text
