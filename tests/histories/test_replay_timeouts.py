"""The replay gate, after a timed-out workflow task (issue 9).

A server killed mid-task, or a worker lost, leaves a workflow task that timed
out; the replay then applies a staff update before an activity completion
that the live worker had applied first. A deal whose next command depended on
that order failed every workflow task from then on ("Timer machine does not
handle this event: ActivityTaskScheduled"). Each current history, with each of
its command-less workflow tasks turned into a timeout in turn, must replay.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory

from dealflow.audit.payloads import decode_events, value_of
from dealflow.models import DealPolicy
from tests.support.replay import CURRENT, HISTORIES_DIR, HISTORY_KEYS, replayer


def _with_timed_out_task(history: dict[str, Any], index: int) -> dict[str, Any]:
    """The history as it reads when the workflow task completed at `index` had
    timed out instead: what a server killed (or a worker lost) mid-task leaves.
    Only a task that completed without commands can be turned into one."""
    edited = copy.deepcopy(history)
    event = edited["events"][index]
    done = event.pop("workflowTaskCompletedEventAttributes")
    event["eventType"] = "EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT"
    event["workflowTaskTimedOutEventAttributes"] = {
        "scheduledEventId": done["scheduledEventId"],
        "startedEventId": done.get("startedEventId", str(int(done["scheduledEventId"]) + 1)),
        "timeoutType": "TIMEOUT_TYPE_START_TO_CLOSE",
    }
    return edited


def _history_limit(path: Path) -> int:
    """The history length at which the deal continues as new: its policy's
    `max_history_events`, read from the (encrypted) start input."""
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text("utf-8")))
    (started,), errors = decode_events(history.events[:1], HISTORY_KEYS)
    assert not errors, errors
    payload = started.workflow_execution_started_event_attributes.input.payloads[0]
    policy = value_of(payload).get("policy") or {}
    return int(policy.get("max_history_events", DealPolicy().max_history_events))


def _empty_tasks(history: dict[str, Any], limit: int) -> list[int]:
    """The command-less tasks to turn into timeouts: all but one whose retry
    would start past the history limit when the task itself started below it.
    The deal continues as new once its history is that long, a length each
    task reads from its own started event, the same live and on replay; the
    edit moves the task's events into a task that reads a greater length, an
    order no real history has, so there the check would only test the edit."""
    events = history["events"]
    return [
        i
        for i, e in enumerate(events[:-2])
        if e["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED"
        and events[i + 1]["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED"
        and not int(events[i - 1]["eventId"]) < limit <= int(events[i + 2]["eventId"])
    ]


async def _failures_with_a_timed_out_task(path: Path) -> list[str]:
    history = json.loads(path.read_text("utf-8"))
    history_replayer = replayer()
    failures = []
    for index in _empty_tasks(history, _history_limit(path)):
        edited = WorkflowHistory.from_json(path.stem, _with_timed_out_task(history, index))
        result = await history_replayer.replay_workflow(edited, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            event_id = history["events"][index]["eventId"]
            failures.append(f"task completed at event {event_id}: {result.replay_failure}")
    return failures


@pytest.mark.parametrize("path", CURRENT, ids=[p.name for p in CURRENT])
async def test_a_timed_out_task_before_an_update_replays(path: Path) -> None:
    """A deal's commands must not depend on whether an activity's completion
    reached it before or after a staff update. After a timed-out workflow task
    (a server killed mid-task), the replay applies the update first while the
    live worker had applied the completion first; a deal whose next command
    depended on that order failed every task from then on (nondeterminism:
    "Timer machine does not handle this event: ActivityTaskScheduled"). Every
    current history, with each of its command-less tasks turned into a timeout
    in turn, replays."""
    assert await _failures_with_a_timed_out_task(path) == []


async def test_the_timed_out_task_check_catches_deals_of_the_old_projection() -> None:
    """The check above can fail: histories recorded with one projection in
    flight (patch "one-projection-in-flight", `v3/`) wedge in this shape."""
    failures = await _failures_with_a_timed_out_task(HISTORIES_DIR / "v3" / "happy_path.json")
    assert failures, "the old projection shape replayed with a timed-out task"
    assert all("Nondeterminism" in f for f in failures), failures
