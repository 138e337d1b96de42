"""Stuck deals: seeing them, and bringing them back.

A deal is stuck when its workflow task keeps failing: the worker cannot replay
its history (a nondeterminism error), or the server refuses what the worker
answers. Temporal retries such a task for ever and the deal neither moves nor
answers queries, so nothing in the deal itself can report it. Two signals from
Temporal do:

* the pending workflow task's attempt number (`describe`), per deal;
* the `TemporalReportedProblems` search attribute, which the server sets after
  `system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute`
  consecutive failures (`STUCK_ATTEMPTS` in the development stack; set it in
  production too), so all stuck deals can be listed with one visibility query.

Healing is a reset of the deal's workflow to the newest completed workflow
task that the deployed code replays. The server copies the history up to that
point into a new run and re-applies the staff actions (Updates) and lender
events (signals) recorded after it, in their order; each re-applied action is
validated again against the deal as it then is, and the report says which
ones were applied and which were refused. Activities after the reset point run
again: each of DealFlow's is idempotent (keyed by deal and attempt).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryReverseRequest,
    ResetWorkflowExecutionRequest,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHistory,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

from dealflow.client import DealNotFound, TaskTrouble, deal_status, transient, workflow_id
from dealflow.models import ActionReceipt, DealHealth, DealStatus, MoneySummary, Stage
from dealflow.storage.db import DealRow, get_deal
from workflows import WORKFLOW_RUNNER, DealWorkflow
from workflows.deal import DEAL_STAGE

log = logging.getLogger("dealflow.stuck")

STUCK_QUERY = (
    "WorkflowType = 'DealWorkflow' AND ExecutionStatus = 'Running' "
    "AND TemporalReportedProblems IS NOT NULL"
)

# How many task ends before the reset point may hold the interruption that
# makes a reset safe unattended: the divergence shows one task or two after it.
INTERRUPTION_WINDOW = 3

# How many completed workflow tasks, newest first, are tried as reset points.
MAX_RESET_CANDIDATES = 200

_TAIL_EVENTS = 30


class HealError(Exception):
    """The deal cannot be healed as asked; the message says why."""


def heal_command(deal_id: str) -> str:
    return f"python starter.py heal {deal_id}"


async def deal_health(client: Client, deal_id: str) -> DealHealth:
    """How Temporal sees the deal's workflow task (for the API, the CLI, the list)."""
    handle = client.get_workflow_handle(workflow_id(deal_id))
    try:
        desc = await handle.describe(rpc_timeout=timedelta(seconds=5))
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise DealNotFound(deal_id) from None
        raise
    trouble = TaskTrouble.of(desc.raw_description)
    running = desc.status is WorkflowExecutionStatus.RUNNING
    tail = await _history_tail(client, desc.id, desc.run_id) if running else []
    failure = next((e for e in tail if _is_task_failure(e)), None)
    stuck = running and trouble.stuck
    return DealHealth(
        stuck=stuck,
        attempts=trouble.attempts,
        cause=_failure_cause(failure),
        message=await _failure_message(client, failure),
        failing_since=_failing_since(tail) if stuck else None,
        last_event=describe_event(tail[0]) if tail else None,
        reported_problems=trouble.reported_problems,
        heal=heal_command(deal_id) if stuck else None,
    )


@dataclass
class StuckDeal:
    deal_id: str
    run_id: str
    stage: str | None
    health: DealHealth


async def stuck_deals(client: Client, limit: int = 1000) -> list[StuckDeal]:
    """Every deal Temporal reports as stuck, with what it knows of each."""
    return [
        StuckDeal(deal_id, run_id, stage, await deal_health(client, deal_id))
        async for deal_id, run_id, stage in _stuck_runs(client, limit)
    ]


async def _stuck_runs(client: Client, limit: int) -> AsyncIterator[tuple[str, str, str | None]]:
    """(deal id, run id, stage) of every run Temporal reports as stuck."""
    async for wf in client.list_workflows(STUCK_QUERY, limit=limit):
        yield wf.id.removeprefix("deal-"), wf.run_id, wf.typed_search_attributes.get(DEAL_STAGE)


async def count_stuck(client: Client) -> int:
    return (await client.count_workflows(STUCK_QUERY)).count


class DealUnreadable(Exception):
    """The deal does not answer and is not stuck: a worker is recovering it."""


async def readable_status(
    client: Client, engine: Engine, deal_id: str, rpc_timeout: float = 10.0
) -> DealStatus:
    """The deal's status; for a stuck deal, its read-model projection and health.

    Raises DealNotFound, or DealUnreadable (retry shortly) when the deal cannot
    answer for a passing reason."""
    try:
        return await deal_status(client, deal_id, rpc_timeout=rpc_timeout)
    except RuntimeError as e:  # the status query itself failed
        query_error: Exception = e
    except RPCError as e:
        if not transient(e):
            raise
        query_error = e
    status = await stuck_status(client, engine, deal_id)
    if status is None:
        raise DealUnreadable(f"deal {deal_id} cannot be read right now; retry shortly") from (
            query_error
        )
    return status


async def stuck_status(client: Client, engine: Engine, deal_id: str) -> DealStatus | None:
    """The status of a deal that cannot answer its query, if it is stuck; else None."""
    try:
        health = await deal_health(client, deal_id)
    except (RPCError, DealNotFound):
        return None
    if not health.stuck:
        return None
    row = await asyncio.to_thread(get_deal, engine, deal_id)
    if row is None:
        return None
    log.warning(
        "stuck deal read",
        extra={"deal_id": deal_id, "attempts": health.attempts, "cause": health.cause or ""},
    )
    return status_from_read_model(row, health)


def status_from_read_model(row: DealRow, health: DealHealth) -> DealStatus:
    """What can be said of a stuck deal: its last projection and its health.

    Pending actions, documents and submissions live in the deal's state, which
    cannot be read until it is healed, so they are left empty."""
    return DealStatus(
        deal_id=row.deal_id,
        workflow_id=row.workflow_id,
        dealer_id=row.dealer_id,
        stage=Stage(row.stage),
        stage_entered_at=row.stage_entered_at,
        lender_id=row.lender_id,
        checklist=[],
        pending=[],
        submissions=[],
        disbursements=[],
        money=MoneySummary(
            vehicle_price=row.vehicle_price,
            down_payment=row.vehicle_price - row.amount_financed,
            amount_financed=row.amount_financed,
            approved_amount=row.approved_amount,
        ),
        transitions=[],
        notices=[],
        compensations=[],
        version=row.version,
        health=health,
    )


# --------------------------------------------------------------------------- healing


@dataclass
class Reapplied:
    """A staff action or lender event recorded after the reset point."""

    kind: str  # "update" or "signal"
    name: str
    update_id: str | None = None
    outcome: str = "re-applied by the server"


@dataclass
class HealReport:
    deal_id: str
    old_run_id: str
    new_run_id: str
    reset_event_id: int
    reset_event_time: datetime | None
    events_dropped: int
    reapplied: list[Reapplied] = field(default_factory=list)


@dataclass(frozen=True)
class ResetPlan:
    """Where a stuck deal would be reset to, and whether that is safe unattended.

    A reset to a completed workflow task keeps the history up to that task's
    start and has the task run again on the deployed code: the task's own
    commands, and everything after it, are dropped (signals and updates after
    it are re-applied by the server).
    """

    index: int  # events[index] is the completed task reset to
    event_id: int
    event_time: datetime | None
    # One of the few tasks before it was interrupted (timed out or failed):
    # the deal diverged right after a worker was lost or a server killed, the
    # shape of the SDK's faults after an interrupted task, not of a code change
    # (which diverges where the old code first behaved otherwise, with no
    # interruption needed and usually far back).
    after_interrupted_task: bool
    # The whole history replays: the deal is stuck on what the server refuses,
    # not on a divergence, and a reset drops only failed attempts.
    replays_whole: bool
    # The task reset to carried a staff update together with another new event
    # (a lender event, a timer, an activity result): the SDK may apply the two
    # in one order live and in the other on replay, whatever the workflow does.
    update_with_other_event: bool

    @property
    def automatic(self) -> bool:
        return self.after_interrupted_task or self.replays_whole or self.update_with_other_event


async def plan_reset(
    converter: DataConverter, history: WorkflowHistory, workflows: Sequence[type] = (DealWorkflow,)
) -> ResetPlan:
    events = list(history.events)
    replayer = _replayer(converter, workflows)
    whole = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    index = await _newest_replayable_task(replayer, history)
    done = events[index]
    started_id = done.workflow_task_completed_event_attributes.scheduled_event_id
    task_ends = (
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    )
    before = [e for e in events[:index] if e.event_type in task_ends and e.event_id < started_id]
    return ResetPlan(
        index=index,
        event_id=done.event_id,
        event_time=done.event_time.ToDatetime(),
        after_interrupted_task=any(
            e.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            for e in before[-INTERRUPTION_WINDOW:]
        ),
        replays_whole=whole.replay_failure is None,
        update_with_other_event=_update_with_other_event(events, index, before),
    )


_NEW_EVENTS = (
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_TIMER_FIRED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
)


def _update_with_other_event(
    events: Sequence[HistoryEvent], index: int, before: Sequence[HistoryEvent]
) -> bool:
    """Did the task completed at `index` accept an update and also take in
    another event that arrived since the last completed task?"""
    last_done = next(
        (
            e.event_id
            for e in reversed(before)
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        ),
        0,
    )
    arrived = any(e.event_type in _NEW_EVENTS and e.event_id > last_done for e in events[:index])
    commands = []
    for e in events[index + 1 :]:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            break
        commands.append(e.event_type)
    return arrived and EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED in commands


async def heal(
    client: Client,
    deal_id: str,
    *,
    reason: str,
    force: bool = False,
    automatic_only: bool = False,
    workflows: Sequence[type] = (DealWorkflow,),
) -> HealReport:
    """Reset a stuck deal to the newest workflow task the deployed code replays.

    `automatic_only`: only if the plan is safe unattended (`ResetPlan.automatic`),
    else HealError; the API's watcher heals with it, operators without.
    """
    health = await deal_health(client, deal_id)
    if not health.stuck and not force:
        raise HealError(
            f"deal {deal_id} is not stuck (workflow task attempt {health.attempts}); "
            "nothing to heal (--force resets it anyway)"
        )
    handle = client.get_workflow_handle(workflow_id(deal_id))
    history = await handle.fetch_history()
    plan = await plan_reset(client.data_converter, history, workflows)
    if automatic_only and not plan.automatic:
        raise HealError(
            f"deal {deal_id} diverges at a workflow task that had completed (a code change?): "
            f"an operator must decide ({heal_command(deal_id)})"
        )
    later = list(history.events)[plan.index + 1 :]
    report = HealReport(
        deal_id=deal_id,
        old_run_id=history.run_id,
        new_run_id="",
        reset_event_id=plan.event_id,
        reset_event_time=plan.event_time,
        events_dropped=len(later),
        reapplied=_reapplied_after(later),
    )
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(
                workflow_id=workflow_id(deal_id), run_id=history.run_id
            ),
            reason=f"dealflow heal: {reason}"[:1000],
            workflow_task_finish_event_id=report.reset_event_id,
            request_id=str(uuid.uuid4()),
        )
    )
    report.new_run_id = response.run_id
    await _outcomes_in_new_run(client, deal_id, report)
    return report


async def heal_automatically(client: Client, seen: set[str]) -> list[HealReport]:
    """Heal every stuck deal whose plan is safe unattended; each run is tried once."""
    healed = []
    async for deal_id, run_id, _ in _stuck_runs(client, limit=1000):
        if run_id in seen:
            continue
        seen.add(run_id)
        try:
            report = await heal(
                client, deal_id, reason="automatic: needs no decision", automatic_only=True
            )
        except HealError as e:
            log.warning("stuck deal left to an operator: %s", e, extra={"deal_id": deal_id})
            continue
        log.warning(
            "stuck deal healed: reset to event %d, %d events re-applied or dropped",
            report.reset_event_id,
            report.events_dropped,
            extra={"deal_id": deal_id, "new_run_id": report.new_run_id},
        )
        healed.append(report)
    return healed


def _replayer(converter: DataConverter, workflows: Sequence[type]) -> Replayer:
    return Replayer(
        workflows=list(workflows), data_converter=converter, workflow_runner=WORKFLOW_RUNNER
    )


async def _newest_replayable_task(replayer: Replayer, history: WorkflowHistory) -> int:
    """The index of the newest completed workflow task such that the history
    up to its start (what a reset to it keeps) replays with the deployed code."""
    events = list(history.events)
    done = [
        i
        for i, e in enumerate(events)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]
    for index in list(reversed(done))[:MAX_RESET_CANDIDATES]:
        # The task's started event directly precedes its completion.
        kept = WorkflowHistory(history.workflow_id, events[:index])
        result = await replayer.replay_workflow(kept, raise_on_replay_failure=False)
        if result.replay_failure is None:
            return index
    raise HealError(
        f"no completed workflow task of the last {MAX_RESET_CANDIDATES} replays with the "
        "deployed code; deploy code that replays the deal's history, then heal again"
    )


def _reapplied_after(events: Sequence[HistoryEvent]) -> list[Reapplied]:
    found: list[Reapplied] = []
    completed = {
        e.workflow_execution_update_completed_event_attributes.meta.update_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
    }
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            found.append(
                Reapplied("signal", e.workflow_execution_signaled_event_attributes.signal_name)
            )
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = e.workflow_execution_update_accepted_event_attributes.accepted_request
            update_id = request.meta.update_id
            name = request.input.name
            note = "" if update_id in completed else " (had not completed)"
            found.append(Reapplied("update", name, update_id, f"re-applied by the server{note}"))
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED:
            request = e.workflow_execution_update_admitted_event_attributes.request
            found.append(Reapplied("update", request.input.name, request.meta.update_id))
    return found


async def _outcomes_in_new_run(client: Client, deal_id: str, report: HealReport) -> None:
    """Ask the new run how each re-applied staff action fared."""
    handle = client.get_workflow_handle(workflow_id(deal_id), run_id=report.new_run_id)
    for item in report.reapplied:
        if item.update_id is None:
            continue
        try:
            await handle.get_update_handle(item.update_id, result_type=ActionReceipt).result(
                rpc_timeout=timedelta(seconds=10)
            )
            item.outcome = "re-applied"
        except WorkflowUpdateFailedError as e:
            cause = getattr(e.cause, "message", None) or str(e.cause or e)
            item.outcome = f"refused on re-application: {cause}; take it again if still wanted"
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            item.outcome = "re-applied; no answer yet"
        except RPCError as e:
            item.outcome = f"unknown ({e.message})"


# --------------------------------------------------------------------------- history


async def _history_tail(client: Client, wf_id: str, run_id: str) -> list[HistoryEvent]:
    """The newest events, newest first."""
    response = await client.workflow_service.get_workflow_execution_history_reverse(
        GetWorkflowExecutionHistoryReverseRequest(
            namespace=client.namespace,
            execution=WorkflowExecution(workflow_id=wf_id, run_id=run_id),
            maximum_page_size=_TAIL_EVENTS,
        )
    )
    return list(response.history.events)


def describe_event(event: HistoryEvent) -> str:
    name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    text = f"{event.event_id} {name}"
    cause = _failure_cause(event)
    return f"{text} ({cause})" if cause else text


def _is_task_failure(event: HistoryEvent) -> bool:
    return event.event_type in (
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    )


def _failure_cause(event: HistoryEvent | None) -> str | None:
    if event is None:
        return None
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
        cause = event.workflow_task_failed_event_attributes.cause
        return WorkflowTaskFailedCause.Name(cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
        return "TIMED_OUT"
    return None


async def _failure_message(client: Client, event: HistoryEvent | None) -> str | None:
    """The first line of the failure; the worker encrypts failure messages with
    the payload codec, so it is decoded with the client's keys."""
    if event is None or event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
        return None
    failure = event.workflow_task_failed_event_attributes.failure
    try:
        message = str(await client.data_converter.decode_failure(failure))
    except Exception:  # noqa: BLE001 - a key we do not hold: show what is readable
        message = failure.message
    message = message.strip()
    return message.splitlines()[0][:300] if message else None


def _failing_since(tail: Sequence[HistoryEvent]) -> datetime | None:
    """When the current run of failures began, as far as the tail shows."""
    since = None
    for event in tail:
        if _is_task_failure(event):
            since = event.event_time.ToDatetime()
        elif event.event_type not in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
            EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        ):
            break
    return since
