"""The worker's gauges of open and overdue deals (dealflow/worker_metrics.py),
read off the real Prometheus exporter of a Temporal runtime while the
reporting loop runs against a real read model."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import Engine

from dealflow import names, worker_metrics
from dealflow.config import Settings
from dealflow.models import ProjectionInput, Role, Stage
from dealflow.storage import db
from tests.support.servers import free_port

PAST = datetime.now(UTC) - timedelta(days=1)
FUTURE = datetime.now(UTC) + timedelta(days=1)
SAMPLE = re.compile(r'^(\w+)\{[^}]*stage="(\w+)"[^}]*\} (\S+)$', re.MULTILINE)


@pytest.fixture
def engine(db_url: str) -> Engine:
    db.migrate(db_url)
    return db.make_engine(db_url)


def deal(deal_id: str, stage: Stage, due: datetime | None) -> ProjectionInput:
    return ProjectionInput(
        deal_id=deal_id,
        workflow_id=f"deal-{deal_id}",
        version=1,
        dealer_id="dealer-1",
        stage=stage,
        stage_entered_at=PAST,
        lender_id=None,
        vehicle_price=Decimal("150000.00"),
        amount_financed=Decimal("100000.00"),
        approved_amount=None,
        created_at=PAST,
        updated_at=PAST,
        next_due_at=due,
        pending_roles=[Role.SALES],
    )


Gauges = dict[tuple[str, str], float]


async def gauges_when(url: str, ok: Callable[[Gauges], bool], within: float = 10) -> Gauges:
    """(metric, stage) -> value of the deal-count gauges, once `ok(values)` holds."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(trust_env=False) as http:
        while True:
            text = (await http.get(url)).text
            values = {
                (name, stage): float(value)
                for name, stage, value in SAMPLE.findall(text)
                if name in (names.OPEN_DEALS_METRIC, names.OVERDUE_DEALS_METRIC)
            }
            if ok(values):
                return values
            assert time.monotonic() < deadline, f"gauges never matched; last:\n{values}"
            await asyncio.sleep(0.05)


async def test_open_and_overdue_deals_per_open_stage(engine: Engine) -> None:
    db.upsert_deal(engine, deal("uw-late", Stage.UNDERWRITING, PAST))
    db.upsert_deal(engine, deal("uw-on-time", Stage.UNDERWRITING, FUTURE))
    db.upsert_deal(engine, deal("docs", Stage.DOCUMENTS, None))
    db.upsert_deal(engine, deal("done", Stage.COMPLETED, PAST))
    port = free_port()
    runtime = worker_metrics.metrics_runtime(Settings(worker_metrics_port=port))
    assert runtime is not None
    url = f"http://127.0.0.1:{port}/metrics"
    reporting = asyncio.create_task(worker_metrics.report_deal_counts(runtime, engine, every=0.05))
    try:
        values = await gauges_when(url, lambda v: len(v) == 2 * 13)
        open_, overdue = names.OPEN_DEALS_METRIC, names.OVERDUE_DEALS_METRIC
        # Every open stage has both gauges (0 when none); no terminal stage has either.
        assert {stage for _, stage in values} == {s.value for s in Stage if not s.terminal}
        assert {k: v for k, v in values.items() if v} == {
            (open_, "UNDERWRITING"): 2,
            (open_, "DOCUMENTS"): 1,
            (overdue, "UNDERWRITING"): 1,
        }
        # The loop keeps counting: a deal moving on shows at the next pass.
        moved = deal("docs", Stage.UNDERWRITING, PAST).model_copy(update={"version": 2})
        db.upsert_deal(engine, moved)
        # Both gauges of one pass, not a scrape between their two updates.
        values = await gauges_when(
            url,
            lambda v: v.get((overdue, "UNDERWRITING")) == 2 and v.get((open_, "UNDERWRITING")) == 3,
        )
        assert values[(open_, "UNDERWRITING")] == 3 and values[(open_, "DOCUMENTS")] == 0
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
