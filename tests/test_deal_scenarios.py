"""DealWorkflow on the time-skipping server: one scenario per business rule,
with the real default durations of DESIGN §1 (a month passes in milliseconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow import db
from dealflow.config import LenderConfig
from dealflow.docstore import LocalDirectoryStore
from dealflow.models import DealPolicy, Stage
from tests.conftest import Stack, deal_worker
from tests.desk import Desk


@pytest.fixture
async def desk(ts_stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    async with deal_worker(
        ts_stack.env.client, database_url, ts_stack.lenders, ts_stack.store
    ) as tq:
        yield Desk(ts_stack, tq)


def stages(st) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.to_stage.value for t in st.transitions]


def ledger(sim_url: str, deal_id: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{sim_url}/_sim/ledger", params={"deal_id": deal_id}).json()


async def test_happy_path_runs_every_stage_with_default_durations(desk: Desk) -> None:
    await desk.start()
    await desk.through_delivery()
    st = await desk.wait_stage(Stage.FOLLOW_UP)
    await desk.sleep(3)
    await desk.do("record-follow-up", call="day3")
    await desk.sleep(27)
    await desk.do("record-follow-up", call="day30")
    final = await desk.result()
    assert final.stage is Stage.COMPLETED
    assert stages(final) == [
        "CONTRACT", "DOCUMENTS", "APPLICATION", "UNDERWRITING", "DOWN_PAYMENT", "INVOICING",
        "INSURANCE", "LOAN_CONTRACT", "DISBURSEMENT", "REGISTRATION", "DELIVERY", "FOLLOW_UP",
        "COMPLETED",
    ]
    assert final.money.disbursed == Decimal("105000.00")
    assert [n.kind for n in final.notices if n.kind == "follow_up_due"] == ["follow_up_due"] * 2
    assert not [c for c in final.compensations if c.status == "done"]
    assert st.lender_id == "acme-auto-finance"
