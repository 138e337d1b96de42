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


class _Capture(Interceptor):
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
    for e in events:
        if event_time(e) > at:
            break
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            last_started = e.event_id
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            # (the time-skipping test server leaves started_event_id out)
            started = e.workflow_task_completed_event_attributes.started_event_id or last_started
    if started is None:
        return []
    return [e for e in events if e.event_id <= started]


async def state_as_of(
    runs: Sequence[RunHistory], keyring: codec.Keyring, at: datetime
) -> dict[str, Any]:
    """The deal as it stood at `at`: replays the history up to then with the
    current code and reads the workflow's state (stage, checklist, decisions...)."""
    run = next((r for r in reversed(runs) if event_time(r.events[0]) <= at), None)
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

    capture = _Capture()
    replayer = Replayer(
        workflows=[DealWorkflow],
        data_converter=codec.data_converter(keyring),
        workflow_runner=UnsandboxedWorkflowRunner(),
        interceptors=[capture],
    )
    res = await replayer.replay_workflow(
        WorkflowHistory(run.workflow_id, events), raise_on_replay_failure=False
    )
    inst = next(iter(capture.instances.values()), None)
    if res.replay_failure is not None or inst is None:
        raise AuditError(
            f"cannot rebuild the state as of {at.isoformat()}: replay with the current code "
            f"failed ({res.replay_failure}); run `dealflow-audit replay` on this deal"
        )
    return inst


def _state_view(inst: Any, at: datetime) -> dict[str, Any]:
    """What the replayed workflow held: stage, checklist, pending actions, decisions."""
    from dealflow import rules

    state = inst.state
    view = rules.DealView(
        deal=inst.deal, policy=inst.policy, lenders=inst.inp.lenders, state=state, now=at
    )
    checklist = view.checklist()
    return {
        "stage": state.stage.value,
        "stage_entered_at": state.stage_entered_at.isoformat(),
        "lender": state.submissions[-1].lender_id if state.submissions else None,
        "approved_amount": str(view.approved_amount) if view.approved_amount else None,
        "checklist": [
            {"item": c.label, "party": c.party.value, "satisfied": c.satisfied, "detail": c.detail}
            for c in checklist
        ],
        "pending": [
            {"action": p.action, "role": p.role.value, "what": p.what}
            for p in ([] if state.stage.terminal else rules.pending_actions(view, None))
        ],
        "submissions": [_submission_view(sub) for sub in state.submissions],
        "compensations": [{"kind": c.kind, "status": c.status} for c in state.compensations],
        "documents": len(state.documents),
        "actions": len(state.actions),
        "notices": len(state.notices),
        "outcome_reason": state.outcome_reason,
    }


def _submission_view(sub: Any) -> dict[str, Any]:
    return {
        "submission_no": sub.submission_no,
        "lender": sub.lender_id,
        "status": sub.status,
        "application_ref": sub.application_ref,
        "decisions": [
            {
                "webhook_id": d.webhook_id,
                "seq": d.decision_seq,
                "decision": d.decision.value,
                "approved_amount": str(d.approved_amount) if d.approved_amount else None,
                "applied": d.applied,
                "note": d.note,
            }
            for d in sub.decisions
        ],
        "counter_offer_response": sub.counter_offer_response,
    }
