"""Benchmark 1's history growth: one deal's history size and replay time as it grows.

The deal grows the way a long application does: documents uploaded again and
again (each a new file, so each is recorded with its metadata write), in the
APPLICATION stage, until its history nears the continue-as-new limit
(`DealPolicy.max_history_events`). At each point the run's history is fetched
and replayed with the SDK `Replayer`, the deal workflow and the deal's codec,
as `dealflow-audit replay` does; the time is the best of three warm replays.
"""

from __future__ import annotations

import time
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.worker import Replayer

from bench.bench_driver import Driver
from bench.bench_stack import say
from dealflow import client as deals
from dealflow.models import DealPolicy
from dealflow.samples import sample_documents

REPLAYS = 3


def replayer_for(client: Client) -> Replayer:
    """The deal's replayer as `dealflow-audit replay` builds it (dealflow/audit/replay.py)."""
    import workflows as workflow_package
    from dealflow.bytecode import cache_bytecode
    from workflows import WORKFLOW_RUNNER, DealWorkflow

    cache_bytecode(workflow_package)  # each replay re-imports the module in the sandbox
    return Replayer(
        workflows=[DealWorkflow],
        data_converter=client.data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )


async def replay_seconds(replayer: Replayer, history: Any) -> float:
    best = float("inf")
    for _ in range(REPLAYS):
        t0 = time.monotonic()
        await replayer.replay_workflow(history)
        best = min(best, time.monotonic() - t0)
    return best


async def _length(handle: WorkflowHandle[Any, Any]) -> tuple[int, bool]:
    """The run's history length, and whether the run has ended (continued as new)."""
    d = await handle.describe()
    return d.history_length, d.status != WorkflowExecutionStatus.RUNNING


async def point(replayer: Replayer, handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    history = await handle.fetch_history()
    replay = await replay_seconds(replayer, history)
    size = sum(e.ByteSize() for e in history.events)
    say(f"[1] growth: {len(history.events)} events, {size} B, replay {replay * 1000:.0f} ms")
    return {"events": len(history.events), "bytes": size, "replay_s": replay}


async def history_growth(
    client: Client, driver: Driver, limit: int, fractions: list[float]
) -> list[dict[str, Any]]:
    """events, bytes and replay seconds of one deal's run at each fraction of `limit`.
    The server may suggest continue-as-new before the limit (at 4,096 events by
    default): the run's whole history, closed, is then the last point."""
    deal_id = await driver.start(policy=DealPolicy(max_history_events=limit))
    first = await client.get_workflow_handle(deals.workflow_id(deal_id)).describe()
    handle = client.get_workflow_handle(deals.workflow_id(deal_id), run_id=first.run_id)
    await driver.act(deal_id, "sign-sales-contract")
    replayer = replayer_for(client)
    targets = sorted(int(f * limit) for f in fractions)
    points: list[dict[str, Any]] = []
    rounds = 0
    while targets:
        docs = sample_documents(f"{deal_id}-g{rounds}", driver.deal, driver.today)
        rounds += 1
        for doc in docs:
            await driver.upload(deal_id, [doc])
            length, ended = await _length(handle)
            if ended:
                say(f"[1] growth: the run continued as new at {length} events")
                return [*points, await point(replayer, handle)]
            if length >= targets[0]:
                points.append(await point(replayer, handle))
                targets.pop(0)
                if not targets:
                    break
    return points
