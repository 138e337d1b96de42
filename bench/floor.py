"""The floor workflow: a deal's skeleton with empty bodies, the baseline of the benchmarks.

A `FloorPlan` says how many activities the workflow schedules at start and
after each update or signal, in the order a real deal receives them; the plan
is read from a real deal's history (`plan_from_history`), so the floor does
the same number of updates, signals and activities as a deal and nothing else:
no validation, no state, no timers, no search attributes, one-field payloads.
It runs in the same kind of worker as the deal (own process, SDK sandbox,
pydantic data converter, same cache and slot settings); with `--codec` also
the deal's payload codec (benchmark 1: every deployment encrypts payloads).

    python -m bench.floor worker --task-queue floor     # the floor's worker process
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow


@dataclass
class FloorStep:
    kind: str  # "update" | "signal"
    activities: int = 0
    local_activities: int = 0


@dataclass
class FloorPlan:
    start_activities: int = 0
    steps: list[FloorStep] = field(default_factory=list)
    start_local_activities: int = 0

    @property
    def updates(self) -> int:
        return sum(1 for s in self.steps if s.kind == "update")

    @property
    def signals(self) -> int:
        return sum(1 for s in self.steps if s.kind == "signal")

    @property
    def activities(self) -> int:
        return self.start_activities + sum(s.activities for s in self.steps)

    @property
    def local_activities(self) -> int:
        return self.start_local_activities + sum(s.local_activities for s in self.steps)

    def all_regular(self) -> FloorPlan:
        """The same plan with every local activity as a regular one: the reference
        floor, whose shape does not move when the deal moves work to local activities."""
        steps = [FloorStep(s.kind, s.activities + s.local_activities) for s in self.steps]
        return FloorPlan(self.start_activities + self.start_local_activities, steps)

    def shape(self) -> str:
        return (
            f"{self.updates} updates, {self.signals} signals, {self.activities} regular "
            f"activities, {self.local_activities} local activities"
        )

    def padded(self, extra: int) -> FloorPlan:
        """The same plan with `extra` more activities spread over its steps."""
        steps = [FloorStep(s.kind, s.activities, s.local_activities) for s in self.steps]
        for i in range(max(extra, 0)):
            steps[i % len(steps)].activities += 1
        return FloorPlan(self.start_activities, steps, self.start_local_activities)


@dataclass
class FloorArg:
    index: int = 0


@dataclass
class FloorReply:
    done: int = 0


@activity.defn(name="floor_noop")
async def floor_noop(arg: FloorArg) -> None:
    return None


@workflow.defn(name="FloorWorkflow")
class FloorWorkflow:
    @workflow.init
    def __init__(self, plan: FloorPlan) -> None:
        self.plan = plan
        self.done = 0
        self.running = 0

    @workflow.run
    async def run(self, plan: FloorPlan) -> int:
        self._spawn(plan.start_activities)
        self._spawn(plan.start_local_activities, local=True)
        await workflow.wait_condition(
            lambda: (
                self.done >= len(plan.steps)
                and self.running == 0
                and workflow.all_handlers_finished()
            )
        )
        return self.done

    def _spawn(self, n: int, local: bool = False) -> None:
        for _ in range(n):
            self.running += 1
            asyncio.ensure_future(self._one(local))

    async def _one(self, local: bool) -> None:
        try:
            if local:
                # An attempt ends well inside the workflow task's 10 s timeout, so
                # a slow one is retried rather than timing the task out; the
                # schedule-to-close bounds the retries, as a bookkeeping write's would.
                await workflow.execute_local_activity(
                    "floor_noop",
                    FloorArg(),
                    start_to_close_timeout=timedelta(seconds=5),
                    schedule_to_close_timeout=timedelta(seconds=30),
                )
            else:
                await workflow.execute_activity(
                    "floor_noop", FloorArg(), start_to_close_timeout=timedelta(seconds=10)
                )
        finally:
            self.running -= 1

    def _step(self, arg: FloorArg) -> None:
        self.done += 1
        if 0 <= arg.index < len(self.plan.steps):
            step = self.plan.steps[arg.index]
            self._spawn(step.activities)
            self._spawn(step.local_activities, local=True)

    @workflow.update(name="step")
    def step(self, arg: FloorArg) -> FloorReply:
        self._step(arg)
        return FloorReply(self.done)

    @workflow.signal(name="event")
    def event(self, arg: FloorArg) -> None:
        self._step(arg)


def plan_from_history(events: list[Any]) -> FloorPlan:
    """Updates, signals, activities and local activities of a deal history, in order.
    A local activity's marker is written when its workflow task completes, which
    may be after an update accepted in that task: such a marker counts for the
    update's step. The totals are exact; the split over steps is as recorded."""
    from temporalio.api.enums.v1 import EventType

    plan = FloorPlan()
    for e in events:
        t = e.event_type
        if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            plan.steps.append(FloorStep("update"))
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            plan.steps.append(FloorStep("signal"))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if plan.steps:
                plan.steps[-1].activities += 1
            else:
                plan.start_activities += 1
        elif (
            t == EventType.EVENT_TYPE_MARKER_RECORDED
            and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
        ):
            if plan.steps:
                plan.steps[-1].local_activities += 1
            else:
                plan.start_local_activities += 1
    return plan


async def drive(
    client: Any,
    task_queue: str,
    workflow_id: str,
    plan: FloorPlan,
    latencies: list[float] | None = None,
) -> str:
    """Start one floor workflow and send it its updates and signals, one after another."""
    import time

    handle = await client.start_workflow(
        FloorWorkflow.run, plan, id=workflow_id, task_queue=task_queue
    )
    for i, s in enumerate(plan.steps):
        if s.kind == "update":
            t0 = time.monotonic()
            await handle.execute_update(FloorWorkflow.step, FloorArg(i))
            if latencies is not None:
                latencies.append(time.monotonic() - t0)
        else:
            await handle.signal(FloorWorkflow.event, FloorArg(i))
    await handle.result()
    return workflow_id


async def worker_main(task_queue: str, codec: bool = False) -> None:
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    import bench.floor
    from dealflow.bytecode import cache_bytecode
    from dealflow.config import Settings

    cache_bytecode(bench.floor)  # as worker.py does for the deal's module
    settings = Settings()
    if codec:
        from dealflow.codec import data_converter_for

        converter = data_converter_for(settings)
    else:
        converter = pydantic_data_converter
    client = await Client.connect(
        settings.temporal_address, namespace=settings.namespace, data_converter=converter
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The deal worker's settings (worker.py), so only the workflow differs.
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[FloorWorkflow],
        activities=[floor_noop],
        workflow_runner=SandboxedWorkflowRunner(),
        max_cached_workflows=settings.max_cached_workflows,
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    ):
        print(f"floor worker {os.getpid()} polling {task_queue}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run the floor workflow's worker")
    w.add_argument("--task-queue", default="floor")
    w.add_argument(
        "--codec",
        action="store_true",
        help="encrypt payloads with the codec of DEALFLOW_CODEC_KEYS, as the deal worker does",
    )
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        asyncio.run(worker_main(args.task_queue, args.codec))


if __name__ == "__main__":
    main()
