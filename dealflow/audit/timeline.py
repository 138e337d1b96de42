"""A deal's timeline: every stage transition, staff action, lender event, timer,
reminder, escalation and compensation, in history order, decoded.

`build_timeline` reads the runs event by event; `_HANDLERS` maps each event
kind to the builder's handler that shows it, and `_ACTIVITY_ROWS` each
activity to the function that makes its row.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from dealflow import codec, names
from dealflow.audit.errors import AuditError
from dealflow.audit.formatting import (
    describe_lender_event,
    format_actor,
    format_duration,
    format_fields,
    format_money,
)
from dealflow.audit.histories import RunHistory, event_time, event_type_name
from dealflow.audit.payloads import decode_events, failure_text, first_value, value_of


@dataclass
class Entry:
    at: datetime
    run: int
    event_id: int
    stage: str
    kind: str  # deal | stage | action | lender | timer | reminder | escalation | notice |
    #            compensation | system
    actor: str
    action: str
    details: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["at"] = self.at.isoformat()
        return document


@dataclass
class Timeline:
    deal_id: str
    workflow_id: str
    runs: list[dict[str, Any]]
    entries: list[Entry]
    decode_errors: list[str] = field(default_factory=list)
    as_of: datetime | None = None
    state: dict[str, Any] | None = None


_NOTICE_KINDS = {
    "reminder": "reminder",
    "escalation": "escalation",
    "follow_up_due": "reminder",
    "adverse_action": "notice",
    "info": "notice",
}
# Activities the timeline leaves out: their effect shows in the rows of the
# steps they serve (the application package is shown where it is sent).
_BOOKKEEPING = {names.PROJECT_DEAL, names.RECORD_DOCUMENT_METADATA, names.PREPARE_APPLICATION}


def build_timeline(runs: Sequence[RunHistory], keyring: codec.Keyring) -> Timeline:
    """Every stage transition, staff action, lender event, timer, reminder,
    escalation and compensation of a deal, in history order, decoded."""
    if not runs:
        raise AuditError("no history to read")
    errors: list[str] = []
    decoded_runs = []
    for run in runs:
        decoded, run_errors = decode_events(run.events, keyring, strict=False)
        errors += run_errors
        decoded_runs.append(decoded)
    builder = _TimelineBuilder(runs[0].deal_id, _workflow_record(decoded_runs))
    for run, decoded in zip(runs, decoded_runs, strict=True):
        builder.read_run(run, decoded)
    return Timeline(
        deal_id=builder.deal_id,
        workflow_id=runs[0].workflow_id,
        runs=builder.run_info,
        entries=builder.entries,
        decode_errors=sorted(set(errors)),
    )


@dataclass
class _WorkflowRecord:
    """The workflow's own record of transitions (with reasons) and lender
    decisions, as it travels in update results, continue-as-new inputs and the
    final result: the longest list of transitions is the latest."""

    transitions: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def take(self, state: Any) -> None:
        if not isinstance(state, dict):
            return
        found = state.get("transitions")
        if isinstance(found, list) and len(found) >= len(self.transitions):
            self.transitions = found
        for submission in state.get("submissions") or []:
            for decision in submission.get("decisions") or []:
                if isinstance(decision, dict) and decision.get("webhook_id"):
                    self.decisions[decision["webhook_id"]] = decision


def _workflow_record(decoded_runs: Sequence[Sequence[HistoryEvent]]) -> _WorkflowRecord:
    record = _WorkflowRecord()
    for events in decoded_runs:
        for event in events:
            if event.HasField("workflow_execution_update_completed_event_attributes"):
                outcome = event.workflow_execution_update_completed_event_attributes.outcome
                if outcome.HasField("success"):
                    value = first_value(outcome.success)
                    record.take(value.get("status") if isinstance(value, dict) else None)
            elif event.HasField("workflow_execution_completed_event_attributes"):
                record.take(first_value(event.workflow_execution_completed_event_attributes.result))
            elif event.HasField("workflow_execution_started_event_attributes"):
                value = first_value(event.workflow_execution_started_event_attributes.input)
                record.take(value.get("state") if isinstance(value, dict) else None)
    return record


_ACTIVITY_ENDS = (
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
)


class _TimelineBuilder:
    """Reads a deal's runs event by event: one small handler per event kind,
    each named for what it shows (`_HANDLERS` maps the kinds to them)."""

    def __init__(self, deal_id: str, record: _WorkflowRecord) -> None:
        self.deal_id = deal_id
        self.record = record
        self.entries: list[Entry] = []
        self.run_info: list[dict[str, Any]] = []
        self.stage = ""  # the deal's stage as the events go by
        self.stage_no = 0
        self.run: RunHistory | None = None
        # Per run: activities and timers by the event that started them, updates by id.
        self.scheduled: dict[int, Entry] = {}
        self.timers: dict[int, HistoryEvent] = {}
        self.updates: dict[str, Entry] = {}

    def read_run(self, run: RunHistory, events: Sequence[HistoryEvent]) -> None:
        self.run = run
        self.scheduled, self.timers, self.updates = {}, {}, {}
        self.run_info.append(
            {
                "run_no": run.run_no,
                "run_id": run.run_id,
                "events": len(run.events),
                "started": event_time(run.events[0]).isoformat(),
                "ended": event_time(run.events[-1]).isoformat(),
            }
        )
        for event in events:
            handler = _HANDLERS.get(event.event_type)
            if handler is not None:
                handler(self, event)

    def add(
        self,
        event: HistoryEvent,
        kind: str,
        actor: str,
        action: str,
        details: str,
        data: dict[str, Any] | None = None,
    ) -> Entry:
        assert self.run is not None
        entry = Entry(
            event_time(event),
            self.run.run_no,
            event.event_id,
            self.stage,
            kind,
            actor,
            action,
            details,
            data or {},
        )
        self.entries.append(entry)
        return entry

    # ------------------------------------------------------------------ the deal

    def deal_started(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_started_event_attributes
        start_input = first_value(attrs.input) or {}
        if isinstance(start_input, dict):
            self.deal_id = start_input.get("deal_id", self.deal_id)
        if attrs.continued_execution_run_id:
            assert self.run is not None
            self.add(
                event,
                "deal",
                "dealflow (system)",
                "run continued",
                f"run {self.run.run_no} continues run {attrs.continued_execution_run_id}",
            )
            return
        stage = attrs.search_attributes.indexed_fields.get("DealStage")
        if stage is not None:
            self.stage = str(value_of(stage))
        deal = start_input.get("deal", {}) if isinstance(start_input, dict) else {}
        vehicle = deal.get("vehicle", {})
        details = "; ".join(
            part
            for part in [
                f"dealer {deal.get('dealer_id')}",
                f"vehicle {vehicle.get('make')} {vehicle.get('model')} "
                f"({vehicle.get('condition')}) price {format_money(vehicle.get('price'))}",
                f"down payment {format_money(deal.get('down_payment'))}",
                f"term {deal.get('term_months')} months",
                f"product {deal.get('product')}",
                "lenders " + " > ".join(deal.get("lender_ids") or []),
            ]
            if part
        )
        self.add(
            event,
            "deal",
            format_actor(start_input.get("created_by")),
            "deal started",
            details,
            {"input": {key: value for key, value in start_input.items() if key != "state"}},
        )

    def stage_changed(self, event: HistoryEvent) -> None:
        found = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        stage = found.indexed_fields.get("DealStage")
        if stage is None:
            return
        to_stage = str(value_of(stage))
        transitions = self.record.transitions
        transition = transitions[self.stage_no] if self.stage_no < len(transitions) else None
        self.stage_no += 1
        if transition is not None and transition.get("to_stage") != to_stage:
            transition = None
        from_stage = (transition or {}).get("from_stage") or (
            self.stage if self.stage_no > 1 else None
        )
        self.stage = to_stage
        self.add(
            event,
            "stage",
            format_actor((transition or {}).get("actor", "dealflow/system")),
            f"{from_stage or 'start'} → {to_stage}",
            (transition or {}).get("reason", ""),
            {"transition": transition} if transition else {},
        )

    def deal_closed(self, event: HistoryEvent) -> None:
        result = first_value(event.workflow_execution_completed_event_attributes.result)
        result = result if isinstance(result, dict) else {}
        self.add(
            event,
            "deal",
            "dealflow (system)",
            f"deal closed: {result.get('stage', '?')}",
            str(result.get("outcome_reason") or ""),
            {"adverse_action_reasons": result.get("adverse_action_reasons") or []},
        )

    def continued_as_new(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_continued_as_new_event_attributes
        assert self.run is not None
        self.add(
            event,
            "deal",
            "dealflow (system)",
            "continued as new",
            f"history of run {self.run.run_no} closed at {len(self.run.events)} events; "
            f"next run {attrs.new_execution_run_id}",
        )

    def terminated(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_terminated_event_attributes
        self.add(event, "deal", attrs.identity or "?", "deal terminated", attrs.reason)

    def failed(self, event: HistoryEvent) -> None:
        text = failure_text(event.workflow_execution_failed_event_attributes.failure)
        self.add(event, "deal", "dealflow (system)", "deal failed", text)

    def timed_out_or_canceled(self, event: HistoryEvent) -> None:
        self.add(
            event, "deal", "dealflow (system)", event_type_name(event).lower().replace("_", " "), ""
        )

    def cancel_requested(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_cancel_requested_event_attributes
        self.add(event, "deal", attrs.identity or "?", "cancel requested", attrs.cause)

    def workflow_task_failed(self, event: HistoryEvent) -> None:
        attrs = event.workflow_task_failed_event_attributes
        text = failure_text(attrs.failure)
        self.add(event, "system", attrs.identity or "worker", "workflow task failed", text)

    # ------------------------------------------------------------------ staff and lenders

    def staff_action(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_update_accepted_event_attributes
        request = attrs.accepted_request
        args = first_value(request.input.args) or {}
        entry = self.add(
            event,
            "action",
            format_actor(args.get("actor") if isinstance(args, dict) else None),
            request.input.name,
            format_fields(args),
            {"input": args},
        )
        self.updates[request.meta.update_id or attrs.protocol_instance_id] = entry

    def staff_action_answered(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_update_completed_event_attributes
        entry = self.updates.get(attrs.meta.update_id)
        if entry is None:
            return
        if attrs.outcome.HasField("failure"):
            entry.details += f" — FAILED: {failure_text(attrs.outcome.failure)}"
            return
        value = first_value(attrs.outcome.success)
        result: dict[str, Any] = value if isinstance(value, dict) else {}
        # A receipt holds the stage; deals from before receipts returned the status.
        old_status = result.get("status")
        status: dict[str, Any] = old_status if isinstance(old_status, dict) else {}
        entry.data["result_stage"] = result.get("stage") or status.get("stage")

    def signal(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_signaled_event_attributes
        value = first_value(attrs.input)
        if attrs.signal_name != names.LENDER_EVENT or not isinstance(value, dict):
            self.add(
                event,
                "signal",
                attrs.identity,
                attrs.signal_name,
                format_fields(value),
                {"input": value},
            )
            return
        action, details, data = describe_lender_event(value)
        decision = self.record.decisions.get(str(value.get("webhook_id")))
        if decision is not None and decision.get("applied") is False:
            details += f"; NOT APPLIED: {decision.get('note')}"
        self.add(
            event, "lender", f"lender {value.get('lender_id')}", action, details, {"event": data}
        )

    # ------------------------------------------------------------------ activities and timers

    def activity_scheduled(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_scheduled_event_attributes
        name = attrs.activity_type.name
        if name in _BOOKKEEPING:
            return
        value = first_value(attrs.input)
        shown = _ACTIVITY_ROWS.get(name, _generic_activity_row)
        self.scheduled[event.event_id] = shown(
            self, event, name, value if isinstance(value, dict) else {}
        )

    def activity_ended(self, event: HistoryEvent) -> None:
        event_type = event.event_type
        attrs: Any = (
            event.activity_task_completed_event_attributes
            if event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            else event.activity_task_failed_event_attributes
            if event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
            else event.activity_task_timed_out_event_attributes
            if event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT
            else event.activity_task_canceled_event_attributes
        )
        entry = self.scheduled.get(attrs.scheduled_event_id)
        if entry is None:
            return
        entry.data["finished_at"] = event_time(event).isoformat()
        if event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            entry.data["outcome"] = "done"
            result = first_value(event.activity_task_completed_event_attributes.result)
            if isinstance(result, dict) and result.get("repayment_ref"):
                entry.details += f" — repaid: the lender's ref {result['repayment_ref']}"
            elif isinstance(result, dict) and result.get("application_ref"):
                entry.details += f"; acknowledged as {result['application_ref']}"
            elif entry.kind == "compensation":
                entry.details += " — done"
        elif event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            text = failure_text(event.activity_task_failed_event_attributes.failure)
            entry.data["outcome"] = "failed"
            entry.details += f" — FAILED: {text}"
        else:
            entry.data["outcome"] = event_type_name(event).lower()
            entry.details += f" — {event_type_name(event).lower()}"

    def local_activity(self, event: HistoryEvent) -> None:
        """A completed local activity: its marker holds the result, which for
        the notices and compensation records echoes what was written."""
        attrs = event.marker_recorded_event_attributes
        if attrs.marker_name != LOCAL_ACTIVITY_MARKER or "result" not in attrs.details:
            return
        name = local_activity_type(event)
        key = _LOCAL_ROWS.get(name)
        result = first_value(attrs.details["result"])
        if key is None or not isinstance(result, dict) or not isinstance(result.get(key), dict):
            return
        entry = _ACTIVITY_ROWS[name](self, event, name, result[key])
        entry.data["outcome"] = "done"
        if entry.kind == "compensation":
            entry.details += " — done"

    def timer_started(self, event: HistoryEvent) -> None:
        self.timers[event.event_id] = event

    def timer_fired(self, event: HistoryEvent) -> None:
        started = self.timers.get(event.timer_fired_event_attributes.started_event_id)
        detail = ""
        if started is not None:
            timeout = started.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            since = event_time(started).isoformat(timespec="seconds")
            detail = f"set {since} for {format_duration(timeout)}"
        self.add(event, "timer", "dealflow (system)", "timer fired", detail)


# What each activity shows as: (builder, event, name, its decoded input) -> its row.
def _notice_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, notice: dict[str, Any]
) -> Entry:
    kind = _NOTICE_KINDS.get(str(notice.get("kind")), "notice")
    roles = ", ".join(notice.get("roles") or [])
    message = f"{notice.get('message')}" + (f" (to {roles})" if roles else "")
    return builder.add(
        event, kind, "dealflow (system)", str(notice.get("kind")), message, {"notification": notice}
    )


def _submission_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, request: dict[str, Any]
) -> Entry:
    # sign_and_send_application and send_application carry the package (the
    # first without links); deals from before them used submit_application,
    # whose input was the package itself.
    sent = request.get("package")
    package: dict[str, Any] = sent if isinstance(sent, dict) else request
    docs = package.get("documents") or []
    details = (
        f"to {request.get('lender_id')} (submission {request.get('submission_no')}, "
        f"{len(docs)} documents)"
    )
    answers = [_stipulation_answer(answer) for answer in package.get("stipulation_answers") or []]
    if answers:
        details += "; conditions: " + "; ".join(answers)
    return builder.add(
        event, "lender", "dealflow (system)", "application submitted", details, {"activity": name}
    )


def _stipulation_answer(answer: dict[str, Any]) -> str:
    """How a resubmission answers one condition: its document, its note, or waived."""
    code = answer.get("code")
    if answer.get("status") == "waived":
        return f"{code} waived ({answer.get('reason')})"
    if answer.get("doc_id"):
        sha = str(answer.get("sha256") or "")[:12]
        return f"{code} {answer.get('status')}: document {answer['doc_id']} (sha256 {sha}…)"
    return f"{code} {answer.get('status')}: note {answer.get('note')}"


def _disbursement_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, request: dict[str, Any]
) -> Entry:
    details = (
        f"from {request.get('lender_id')} application {request.get('application_ref')}"
        f" attempt {request.get('attempt')} amount {format_money(request.get('amount'))}"
    )
    # The funding package (deals with it): which documents, by hash.
    package = request.get("funding_package") or []
    if package:
        details += "; documents: " + ", ".join(
            f"{doc.get('kind')} {str(doc.get('sha256') or '')[:12]}…" for doc in package
        )
    return builder.add(
        event, "lender", "dealflow (system)", "disbursement requested", details, {"activity": name}
    )


def _withdrawal_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, request: dict[str, Any]
) -> Entry:
    application = f"{request.get('lender_id')} application {request.get('application_ref')}"
    details = f"{application}: {request.get('reason')}"
    return builder.add(
        event,
        "compensation",
        "dealflow (system)",
        "withdraw application",
        details,
        {"activity": name, "input": request},
    )


def _repayment_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, request: dict[str, Any]
) -> Entry:
    details = (
        f"{format_money(request.get('amount'))} to {request.get('lender_id')} for application "
        f"{request.get('application_ref')} (transaction {request.get('transaction_ref')}): "
        f"{request.get('reason')}"
    )
    return builder.add(
        event,
        "compensation",
        "dealflow (system)",
        "repay lender",
        details,
        {"activity": name, "input": request},
    )


def _compensation_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, compensation: dict[str, Any]
) -> Entry:
    details = format_fields(compensation.get("detail") or {})
    return builder.add(
        event,
        "compensation",
        "dealflow (system)",
        str(compensation.get("kind")),
        details,
        {"activity": name, "input": compensation},
    )


def _generic_activity_row(
    builder: _TimelineBuilder, event: HistoryEvent, name: str, activity_input: dict[str, Any]
) -> Entry:
    return builder.add(
        event,
        "system",
        "dealflow (system)",
        f"activity {name}",
        format_fields(activity_input),
        {"activity": name},
    )


_ACTIVITY_ROWS = {
    names.NOTIFY: _notice_row,
    names.SIGN_AND_SEND_APPLICATION: _submission_row,
    names.SEND_APPLICATION: _submission_row,
    names.SUBMIT_APPLICATION: _submission_row,
    names.REQUEST_DISBURSEMENT: _disbursement_row,
    names.WITHDRAW_APPLICATION: _withdrawal_row,
    names.REPAY_LENDER: _repayment_row,
    names.RECORD_COMPENSATION: _compensation_row,
}

# Local activities the timeline shows, with the field of their result that
# holds what they wrote.
LOCAL_ACTIVITY_MARKER = "core_local_activity"
_LOCAL_ROWS = {names.NOTIFY: "notification", names.RECORD_COMPENSATION: "compensation"}


def local_activity_type(event: HistoryEvent) -> str:
    """The activity type of a local-activity marker (the SDK's JSON, not a
    payload of ours: never encrypted, no personal data)."""
    data = event.marker_recorded_event_attributes.details.get("data")
    if data is None or not data.payloads:
        return ""
    try:
        meta = json.loads(data.payloads[0].data)
    except ValueError:
        return ""
    return str(meta.get("activity_type", "")) if isinstance(meta, dict) else ""


_HANDLERS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: _TimelineBuilder.deal_started,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: _TimelineBuilder.stage_changed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: _TimelineBuilder.staff_action,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED: (
        _TimelineBuilder.staff_action_answered
    ),
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: _TimelineBuilder.signal,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: _TimelineBuilder.activity_scheduled,
    **{ending: _TimelineBuilder.activity_ended for ending in _ACTIVITY_ENDS},
    EventType.EVENT_TYPE_MARKER_RECORDED: _TimelineBuilder.local_activity,
    EventType.EVENT_TYPE_TIMER_STARTED: _TimelineBuilder.timer_started,
    EventType.EVENT_TYPE_TIMER_FIRED: _TimelineBuilder.timer_fired,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: _TimelineBuilder.deal_closed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: _TimelineBuilder.continued_as_new,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: _TimelineBuilder.terminated,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: _TimelineBuilder.failed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: _TimelineBuilder.timed_out_or_canceled,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: _TimelineBuilder.timed_out_or_canceled,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED: _TimelineBuilder.cancel_requested,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: _TimelineBuilder.workflow_task_failed,
}
