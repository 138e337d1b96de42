"""A deal's state as of a past time, rebuilt by replaying its history up to then."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.worker import (
    ExecuteWorkflowInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    Replayer,
    UnsandboxedWorkflowRunner,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from dealflow import codec
from dealflow.audit.errors import AuditError
from dealflow.audit.histories import RunHistory, event_time


class _InstanceCapture(Interceptor):
    """Keeps a reference to each replayed workflow instance, to read its state."""

    def __init__(self) -> None:
        self.instances: dict[str, Any] = {}

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        instances = self.instances

        class Inbound(WorkflowInboundInterceptor):
            def _keep(self) -> None:
                instances[workflow.info().run_id] = workflow.instance()

            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                self._keep()
                return await super().execute_workflow(input)

            async def handle_signal(self, input: HandleSignalInput) -> None:
                self._keep()
                await super().handle_signal(input)

            async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
                self._keep()
                return await super().handle_update_handler(input)

        return Inbound


def _events_until(events: Sequence[HistoryEvent], at: datetime) -> list[HistoryEvent]:
    """The history up to the start of the last workflow task completed at or before
    `at`: replaying it gives the state that task left behind, the state as of `at`."""
    started = last_started = None
    for event in events:
        if event_time(event) > at:
            break
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            last_started = event.event_id
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            # (the time-skipping test server leaves started_event_id out)
            started = (
                event.workflow_task_completed_event_attributes.started_event_id or last_started
            )
    if started is None:
        return []
    return [event for event in events if event.event_id <= started]


async def state_as_of(
    runs: Sequence[RunHistory], keyring: codec.Keyring, at: datetime
) -> dict[str, Any]:
    """The deal as it stood at `at`: replays the history up to then with the
    current code and reads the workflow's state (stage, checklist, decisions...)."""
    run = next(
        (candidate for candidate in reversed(runs) if event_time(candidate.events[0]) <= at), None
    )
    if run is None:
        return {
            "as_of": at.isoformat(),
            "exists": False,
            "note": "the deal did not exist yet at that time",
        }
    events = _events_until(run.events, at)
    if not events:
        return {"as_of": at.isoformat(), "exists": True, "note": "no workflow task ran yet"}
    instance = await _replayed_instance(run, events, keyring, at)
    return {
        "as_of": at.isoformat(),
        "exists": True,
        "derived_from": f"run {run.run_no} ({run.run_id}), {len(events)} of {len(run.events)} "
        "events replayed with the current code",
        **_state_view(instance, at),
    }


async def _replayed_instance(
    run: RunHistory, events: list[HistoryEvent], keyring: codec.Keyring, at: datetime
) -> Any:
    """The workflow instance that replaying `events` with the current code leaves behind."""
    from workflows import DealWorkflow

    capture = _InstanceCapture()
    replayer = Replayer(
        workflows=[DealWorkflow],
        data_converter=codec.data_converter(keyring),
        workflow_runner=UnsandboxedWorkflowRunner(),
        interceptors=[capture],
    )
    result = await replayer.replay_workflow(
        WorkflowHistory(run.workflow_id, events), raise_on_replay_failure=False
    )
    instance = next(iter(capture.instances.values()), None)
    if result.replay_failure is not None or instance is None:
        raise AuditError(
            f"cannot rebuild the state as of {at.isoformat()}: replay with the current code "
            f"failed ({result.replay_failure}); run `dealflow-audit replay` on this deal"
        )
    return instance


def _state_view(instance: Any, at: datetime) -> dict[str, Any]:
    """What the replayed workflow held: stage, checklist, pending actions, decisions."""
    from dealflow import rules

    state = instance.state
    view = rules.DealView(
        deal=instance.deal,
        policy=instance.policy,
        lenders=instance.inp.lenders,
        state=state,
        now=at,
        dealer_dates=getattr(instance, "_dealer_dates", False),
    )
    checklist = view.checklist()
    return {
        "stage": state.stage.value,
        "stage_entered_at": state.stage_entered_at.isoformat(),
        "lender": state.submissions[-1].lender_id if state.submissions else None,
        "approved_amount": str(view.approved_amount) if view.approved_amount else None,
        "checklist": [
            {
                "item": item.label,
                "party": item.party.value,
                "satisfied": item.satisfied,
                "detail": item.detail,
            }
            for item in checklist
        ],
        "pending": [
            {"action": action.action, "role": action.role.value, "what": action.what}
            for action in ([] if state.stage.terminal else rules.pending_actions(view, None))
        ],
        "submissions": [
            _submission_view(sub, getattr(state, "stipulation_items", []))
            for sub in state.submissions
        ],
        "compensations": [
            {
                "kind": compensation.kind,
                "status": compensation.status,
                "evidence": compensation.evidence,
                "done_by": compensation.done_by,
            }
            for compensation in state.compensations
        ],
        "documents": len(state.documents),
        "actions": len(state.actions),
        "notices": len(state.notices),
        "outcome_reason": state.outcome_reason,
    }


def _submission_view(submission: Any, conditions: list[Any]) -> dict[str, Any]:
    return {
        "submission_no": submission.submission_no,
        "lender": submission.lender_id,
        "status": submission.status,
        "application_ref": submission.application_ref,
        "decisions": [
            {
                "webhook_id": decision.webhook_id,
                "seq": decision.decision_seq,
                "decision": decision.decision.value,
                "approved_amount": str(decision.approved_amount)
                if decision.approved_amount
                else None,
                "applied": decision.applied,
                "note": decision.note,
            }
            for decision in submission.decisions
        ],
        "counter_offer_response": submission.counter_offer_response,
        # The lender's conditions on this submission, each where it stood.
        "conditions": [
            {
                "code": item.code,
                "kind": item.kind,
                "status": item.status,
                "doc_id": item.doc_id,
                "note": item.note,
                "reason": item.reason,
                "answered_in": item.answered_in,
            }
            for item in conditions
            if item.submission_no == submission.submission_no
        ],
    }
