"""Stuck deals are seen and healed (dealflow/stuck.py), on the real dev server.

A deal gets stuck for real here: it runs on a release whose code differs
without a patch (`UnpatchedWelcome`, the replay gate's own example of an
unsafe change), then the current code is deployed. Its next workflow task
fails with a nondeterminism error, and again on every retry, as a deal in the
field would after an unsafe deploy or the server-restart race of issue 9.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from dealflow import client as deals
from dealflow import stuck
from dealflow.api.security import mint_token
from dealflow.config import Settings
from dealflow.models import Action, Actor, DealHealth, DealPolicy, Role, Stage
from dealflow.samples import example_action, example_deal
from tests.histories.variants import UnpatchedWelcome
from tests.support.stack import Stack, deal_worker

pytestmark = pytest.mark.e2e

SALES = Actor(staff_id="sales-01", role=Role.SALES)


async def _act(stack: Stack, deal_id: str, action: Action, patience: float = 30.0) -> Stage:
    act, inp = deals.parse_action(action.value, example_action(action.value), SALES)
    receipt = await deals.act_receipt(stack.env.client, deal_id, act, inp, patience=patience)
    assert receipt.stage is not None
    return receipt.stage


async def _until_stuck(stack: Stack, deal_id: str, limit: float = 60.0) -> DealHealth:
    end = time.monotonic() + limit
    while True:
        health = await stuck.deal_health(stack.env.client, deal_id)
        if health.stuck and health.reported_problems:
            return health
        assert time.monotonic() < end, f"never reported stuck: {health}"
        await asyncio.sleep(1.0)


async def _stuck_deal(stack: Stack, database_url: str, tmp_path: Path) -> tuple[str, str]:
    """A deal in DOCUMENTS recorded by the old release, then the current code deployed."""
    client = stack.env.client
    deal_id = deals.new_deal_id()
    async with deal_worker(
        client, database_url, stack.lenders, stack.store, workflows=[UnpatchedWelcome]
    ) as task_queue:
        inp = deals.start_input(deal_id, example_deal(), DealPolicy(), stack.lenders, SALES)
        await deals.start_deal(client, task_queue, inp)
        assert await _act(stack, deal_id, Action.SIGN_SALES_CONTRACT) is Stage.DOCUMENTS
    async with deal_worker(client, database_url, stack.lenders, stack.store, task_queue):
        # Any new event makes the deal replay on the new code, and its workflow
        # task fails from then on.
        await client.get_workflow_handle(deals.workflow_id(deal_id)).signal("operator-nudge")
        await _until_stuck(stack, deal_id)
        # A staff action now cannot be applied, and says so in time.
        with pytest.raises(deals.WorkflowStuck, match="is stuck"):
            await _act(stack, deal_id, Action.CANCEL, patience=2.0)
    return deal_id, task_queue


async def test_a_stuck_deal_is_listed_marked_and_healed_without_losing_its_actions(
    dev_stack: Stack, database_url: str, tmp_path: Path
) -> None:
    client = dev_stack.env.client
    deal_id, task_queue = await _stuck_deal(dev_stack, database_url, tmp_path)

    health = await stuck.deal_health(client, deal_id)
    assert health.stuck and health.reported_problems and health.attempts >= 1
    assert health.cause == "NON_DETERMINISTIC_ERROR", health
    assert "Nondeterminism" in (health.message or "")
    assert health.heal == stuck.heal_command(deal_id)

    # The operator's list (visibility: TemporalReportedProblems).
    listed = await stuck.stuck_deals(client)
    assert deal_id in {d.deal_id for d in listed}
    assert await stuck.count_stuck(client) >= 1

    # The API marks it instead of answering 503 for ever.
    token = mint_token(Settings().jwt_secret, "credit-01", [Role.CREDIT])
    async with httpx.AsyncClient(base_url=dev_stack.api_url, timeout=60) as http:
        resp = await http.get(f"/api/deals/{deal_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["health"]["stuck"] is True
    assert body["health"]["heal"] == stuck.heal_command(deal_id)
    assert body["stage"] == Stage.DOCUMENTS.value  # the read model's last projection
    async with httpx.AsyncClient(base_url=dev_stack.api_url, timeout=60) as http:
        resp = await http.post(
            f"/api/deals/{deal_id}/actions/cancel",
            json={"reason": "customer withdrew"},
            headers={
                "Authorization": f"Bearer {mint_token(Settings().jwt_secret, 's', [Role.SALES])}"
            },
        )
    assert resp.status_code == 503, resp.text
    assert (
        "is stuck" in resp.json()["detail"] and stuck.heal_command(deal_id) in resp.json()["detail"]
    )

    # Healing: reset to the newest task the current code replays; the staff
    # action recorded after it is applied again in the new run.
    with pytest.raises(deals.DealNotFound):
        await stuck.heal(client, "20261130-00000000", reason="no such deal")
    # A code change is not healed unattended: the API's watcher leaves it alone.
    with pytest.raises(stuck.HealError, match="an operator must decide"):
        await stuck.heal(client, deal_id, reason="watcher", automatic_only=True)
    assert await stuck.heal_automatically(client, set()) == []
    async with deal_worker(client, database_url, dev_stack.lenders, dev_stack.store, task_queue):
        report = await stuck.heal(client, deal_id, reason="unsafe deploy rolled forward")
        assert report.new_run_id and report.new_run_id != report.old_run_id
        names = {(r.kind, r.name): r.outcome for r in report.reapplied}
        assert names[("update", Action.SIGN_SALES_CONTRACT.value)] == "re-applied", report
        status = await deals.deal_status(client, deal_id)
        assert status.stage is Stage.DOCUMENTS and status.health is None
        assert [t.reason for t in status.transitions] == ["deal started", "sales contract signed"]
        assert not (await stuck.deal_health(client, deal_id)).stuck
        # ...and it moves on.
        assert await _act(dev_stack, deal_id, Action.CANCEL) is Stage.CANCELLED
        # The deal's result follows it past the reset (the old run was terminated).
        assert (await deals.deal_result(client, deal_id)).stage is Stage.CANCELLED
    with pytest.raises(stuck.HealError, match="not stuck"):
        await stuck.heal(client, deal_id, reason="again")
