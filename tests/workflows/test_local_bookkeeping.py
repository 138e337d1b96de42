"""The deal's bookkeeping runs as local activities, its lender calls do not.

Bookkeeping (read model, notification outbox, compensation records, document
metadata) is a short idempotent write to DealFlow's own database: a local
activity, one marker in history and no server round trip. Calls to a lender
wait on a remote party and heartbeat: regular activities. A database that
refuses writes must neither hold a workflow task open nor lose a write.
On the real dev server, with the real lender simulator.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType

from dealflow import names
from dealflow.audit.timeline import LOCAL_ACTIVITY_MARKER, local_activity_type
from dealflow.models import Stage
from dealflow.storage import db
from tests.support.back_office import Desk, desk_on
from tests.support.stack import Stack

LENDER_CALLS = {
    names.SIGN_AND_SEND_APPLICATION,
    names.REQUEST_DISBURSEMENT,
    names.WITHDRAW_APPLICATION,
    names.REPAY_LENDER,
}
BOOKKEEPING = {
    names.PROJECT_DEAL,
    names.NOTIFY,
    names.RECORD_COMPENSATION,
    names.RECORD_DOCUMENT_METADATA,
}


@pytest.fixture
async def desk(dev_stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    async with desk_on(dev_stack, database_url) as d:
        yield d


def scheduled_activities(events: list[Any]) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def local_activities(events: list[Any]) -> list[str]:
    return [
        local_activity_type(e)
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    ]


async def test_bookkeeping_is_local_and_lender_calls_are_regular_activities(desk: Desk) -> None:
    await desk.start()
    await desk.through_underwriting()
    status = await desk.status()
    events = await desk.quiet_history()

    assert set(scheduled_activities(events)) == {names.SIGN_AND_SEND_APPLICATION}
    local = local_activities(events)
    assert set(local) <= BOOKKEEPING
    assert {names.PROJECT_DEAL, names.RECORD_DOCUMENT_METADATA} <= set(local)
    # Every staff step's write reached the read model, newest version last.
    row = db.get_deal(desk.stack.engine, desk.deal_id)
    assert row is not None
    assert (row.stage, row.version) == (status.stage.value, status.version)


class WriteLock:
    """Another connection holding SQLite's write lock: every write of the
    worker waits for it and fails, as against a database that is down."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.released = threading.Event()
        self.held = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self.held.set()
            self.released.wait(60)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def __enter__(self) -> WriteLock:
        self.thread.start()
        assert self.held.wait(5), "could not take the write lock"
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.thread.join(10)


async def test_a_database_refusing_writes_holds_no_workflow_task_and_loses_no_write(
    dev_stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    db.migrate(url)
    engine = db.make_engine(url)
    async with desk_on(dev_stack, url) as desk:
        await desk.start()
        await desk.quiet_history()
        with WriteLock(path):
            started = time.monotonic()
            await desk.do("sign-sales-contract")
            answered = time.monotonic() - started
            # The write of the new stage is still failing: the update was
            # answered while the lock held, not after it.
            assert answered < 6, f"update held {answered:.1f}s by a failing write"
            row = db.get_deal(engine, desk.deal_id)
            assert row is not None and row.stage == Stage.CONTRACT.value
            await asyncio.sleep(12 - answered)
        status = await desk.status()
        deadline = time.monotonic() + 40
        while True:
            row = db.get_deal(engine, desk.deal_id)
            assert row is not None
            if row.version == status.version:
                break
            assert time.monotonic() < deadline, f"read model stuck at version {row.version}"
            await asyncio.sleep(0.2)
        assert row.stage == Stage.DOCUMENTS.value
        kinds = {e.event_type for e in await desk.history_events()}
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT not in kinds
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds
