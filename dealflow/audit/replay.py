"""Replay deal histories against the current workflow code, and say where one diverges."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from dealflow import codec
from dealflow.audit.formatting import format_duration
from dealflow.audit.histories import RunHistory, event_time, event_type_name
from dealflow.audit.payloads import decode_events


@dataclass
class ReplayOutcome:
    run: RunHistory
    ok: bool
    error: str = ""
    nondeterminism: bool = False
    event: str = ""


def _replayer(keyring: codec.Keyring, workflows: Sequence[type] | None = None) -> Replayer:
    import workflows as workflow_package
    from dealflow.bytecode import cache_bytecode
    from workflows import WORKFLOW_RUNNER, DealWorkflow

    cache_bytecode(workflow_package)  # each replayed run re-imports the module in the sandbox
    return Replayer(
        workflows=list(workflows or [DealWorkflow]),
        data_converter=codec.data_converter(keyring),
        workflow_runner=WORKFLOW_RUNNER,
    )


_EVENT_ID = re.compile(r"HistoryEvent\(id: (\d+)")
_NAMED_ACTIVITY = re.compile(r"scheduled event '([^']+)'")


def _describe_event(events: Sequence[HistoryEvent], event_id: int) -> str:
    e = next((x for x in events if x.event_id == event_id), None)
    if e is None:
        return f"event {event_id}"
    what = event_type_name(e)
    if e.HasField("activity_task_scheduled_event_attributes"):
        what += f" '{e.activity_task_scheduled_event_attributes.activity_type.name}'"
    elif e.HasField("timer_started_event_attributes"):
        d = e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        what += f" ({format_duration(d)})"
    return f"event {event_id} {what} at {event_time(e).isoformat(timespec='seconds')}"


async def _locate(replayer: Replayer, run: RunHistory, message: str) -> str:
    """Name the history event where replay diverged from the current code."""
    m = _EVENT_ID.search(message)
    if m:
        return _describe_event(run.events, int(m.group(1)))
    # Find the first workflow task whose commands the code no longer produces:
    # replaying a prefix that ends at a task's start never checks that task's
    # commands, so the first failing prefix ends at the task after the bad one.
    starts = [
        i
        for i, e in enumerate(run.events)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]
    bounds = starts[1:] + [len(run.events) - 1]

    async def fails(idx: int) -> bool:
        h = WorkflowHistory(run.workflow_id, run.events[: idx + 1])
        res = await replayer.replay_workflow(h, raise_on_replay_failure=False)
        return res.replay_failure is not None

    lo, hi = 0, len(bounds) - 1
    if not bounds or not await fails(bounds[hi]):
        return ""
    while lo < hi:
        mid = (lo + hi) // 2
        if await fails(bounds[mid]):
            hi = mid
        else:
            lo = mid + 1
    task_start = starts[lo]
    completed = next(
        (
            i
            for i in range(task_start, len(run.events))
            if run.events[i].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        ),
        None,
    )
    if completed is None:
        return _describe_event(run.events, run.events[task_start].event_id)
    commands = []
    for e in run.events[completed + 1 :]:
        if not _is_command_event(e):
            break
        commands.append(e)
    named = _NAMED_ACTIVITY.search(message)
    if named:
        for e in commands:
            if e.HasField(
                "activity_task_scheduled_event_attributes"
            ) and e.activity_task_scheduled_event_attributes.activity_type.name == named.group(1):
                return _describe_event(run.events, e.event_id)
    target = commands[0] if commands else run.events[completed]
    return _describe_event(run.events, target.event_id)


_COMMAND_EVENTS = (
    "activity_task_scheduled_event_attributes",
    "timer_started_event_attributes",
    "timer_canceled_event_attributes",
    "activity_task_cancel_requested_event_attributes",
    "upsert_workflow_search_attributes_event_attributes",
    "workflow_properties_modified_event_attributes",
    "marker_recorded_event_attributes",
    "start_child_workflow_execution_initiated_event_attributes",
    "signal_external_workflow_execution_initiated_event_attributes",
    "request_cancel_external_workflow_execution_initiated_event_attributes",
    "workflow_execution_update_accepted_event_attributes",
    "workflow_execution_update_completed_event_attributes",
    "workflow_execution_completed_event_attributes",
    "workflow_execution_failed_event_attributes",
    "workflow_execution_continued_as_new_event_attributes",
)


def _is_command_event(e: HistoryEvent) -> bool:
    """An event a workflow task's commands write right after its completion."""
    return e.WhichOneof("attributes") in _COMMAND_EVENTS


async def replay(
    runs: Sequence[RunHistory],
    keyring: codec.Keyring,
    workflows: Sequence[type] | None = None,
) -> list[ReplayOutcome]:
    """Replay every run against the current workflow code (with the codec)."""
    replayer = _replayer(keyring, workflows)
    outcomes: dict[int, ReplayOutcome] = {}
    todo: list[tuple[int, RunHistory]] = []
    for i, run in enumerate(runs):
        # Undecryptable payloads are not nondeterminism: say which key is missing.
        try:
            decode_events(run.events, keyring, strict=True)
        except codec.CodecError as e:
            outcomes[i] = ReplayOutcome(run, False, f"cannot decrypt: {e}")
        else:
            todo.append((i, run))

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for _, run in todo:
            yield WorkflowHistory(run.workflow_id, run.events)

    failed: list[tuple[int, RunHistory, BaseException]] = []
    async with replayer.workflow_replay_iterator(histories()) as results:
        n = 0
        async for res in results:
            i, run = todo[n]
            n += 1
            if res.replay_failure is None:
                outcomes[i] = ReplayOutcome(run, True)
            else:
                failed.append((i, run, res.replay_failure))
    for i, run, failure in failed:
        msg = str(failure)
        nondet = type(failure).__name__ == "NondeterminismError" or "Nondeterminism" in msg
        short = re.search(r'message: "([^"]*)"', msg)
        event = await _locate(replayer, run, msg) if nondet else ""
        outcomes[i] = ReplayOutcome(run, False, short.group(1) if short else msg, nondet, event)
    return [outcomes[i] for i in range(len(runs))]
