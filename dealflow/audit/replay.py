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
    event = next((candidate for candidate in events if candidate.event_id == event_id), None)
    if event is None:
        return f"event {event_id}"
    what = event_type_name(event)
    if event.HasField("activity_task_scheduled_event_attributes"):
        what += f" '{event.activity_task_scheduled_event_attributes.activity_type.name}'"
    elif event.HasField("timer_started_event_attributes"):
        timeout = event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        what += f" ({format_duration(timeout)})"
    return f"event {event_id} {what} at {event_time(event).isoformat(timespec='seconds')}"


async def _locate(replayer: Replayer, run: RunHistory, message: str) -> str:
    """Name the history event where replay diverged from the current code."""
    found = _EVENT_ID.search(message)
    if found:
        return _describe_event(run.events, int(found.group(1)))
    task_start = await _first_diverging_task(replayer, run)
    if task_start is None:
        return ""
    completed = next(
        (
            index
            for index in range(task_start, len(run.events))
            if run.events[index].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        ),
        None,
    )
    if completed is None:
        return _describe_event(run.events, run.events[task_start].event_id)
    commands = []
    for event in run.events[completed + 1 :]:
        if not _is_command_event(event):
            break
        commands.append(event)
    named = _NAMED_ACTIVITY.search(message)
    if named:
        for event in commands:
            if _scheduled_activity(event) == named.group(1):
                return _describe_event(run.events, event.event_id)
    target = commands[0] if commands else run.events[completed]
    return _describe_event(run.events, target.event_id)


async def _first_diverging_task(replayer: Replayer, run: RunHistory) -> int | None:
    """The index of the WORKFLOW_TASK_STARTED event of the first workflow task whose
    commands the code no longer produces (None if replaying the whole run passes)."""
    # Replaying a prefix that ends at a task's start never checks that task's
    # commands, so the first failing prefix ends at the task after the bad one.
    starts = [
        index
        for index, event in enumerate(run.events)
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]
    bounds = starts[1:] + [len(run.events) - 1]

    async def fails(last: int) -> bool:
        prefix = WorkflowHistory(run.workflow_id, run.events[: last + 1])
        result = await replayer.replay_workflow(prefix, raise_on_replay_failure=False)
        return result.replay_failure is not None

    low, high = 0, len(bounds) - 1
    if not bounds or not await fails(bounds[high]):
        return None
    while low < high:
        middle = (low + high) // 2
        if await fails(bounds[middle]):
            high = middle
        else:
            low = middle + 1
    return starts[low]


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


def _scheduled_activity(event: HistoryEvent) -> str | None:
    """The activity an ACTIVITY_TASK_SCHEDULED event schedules (None for other events)."""
    if not event.HasField("activity_task_scheduled_event_attributes"):
        return None
    return event.activity_task_scheduled_event_attributes.activity_type.name


def _is_command_event(event: HistoryEvent) -> bool:
    """An event a workflow task's commands write right after its completion."""
    return event.WhichOneof("attributes") in _COMMAND_EVENTS


async def replay(
    runs: Sequence[RunHistory],
    keyring: codec.Keyring,
    workflows: Sequence[type] | None = None,
) -> list[ReplayOutcome]:
    """Replay every run against the current workflow code (with the codec)."""
    replayer = _replayer(keyring, workflows)
    outcomes: dict[int, ReplayOutcome] = {}
    todo: list[tuple[int, RunHistory]] = []
    for index, run in enumerate(runs):
        # Undecryptable payloads are not nondeterminism: say which key is missing.
        try:
            decode_events(run.events, keyring, strict=True)
        except codec.CodecError as error:
            outcomes[index] = ReplayOutcome(run, False, f"cannot decrypt: {error}")
        else:
            todo.append((index, run))

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for _, run in todo:
            yield WorkflowHistory(run.workflow_id, run.events)

    failed: list[tuple[int, RunHistory, BaseException]] = []
    async with replayer.workflow_replay_iterator(histories()) as results:
        position = 0
        async for result in results:
            index, run = todo[position]
            position += 1
            if result.replay_failure is None:
                outcomes[index] = ReplayOutcome(run, True)
            else:
                failed.append((index, run, result.replay_failure))
    for index, run, failure in failed:
        message = str(failure)
        nondeterministic = (
            type(failure).__name__ == "NondeterminismError" or "Nondeterminism" in message
        )
        short = re.search(r'message: "([^"]*)"', message)
        event = await _locate(replayer, run, message) if nondeterministic else ""
        outcomes[index] = ReplayOutcome(
            run, False, short.group(1) if short else message, nondeterministic, event
        )
    return [outcomes[index] for index in range(len(runs))]
