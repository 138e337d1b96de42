"""The Temporal side of every entry point: connect, start a deal, act, query.

The API, the CLI and the demo all go through these functions, so an action is
validated, sent and its refusal translated the same way everywhere.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from pydantic import ValidationError
from temporalio.api.common.v1 import Header, Payload, Payloads, WorkflowExecution
from temporalio.api.enums.v1 import (
    EventType,
    PendingWorkflowTaskState,
    UpdateWorkflowExecutionLifecycleStage,
)
from temporalio.api.update import v1 as update_pb
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryReverseRequest,
    UpdateWorkflowExecutionRequest,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.converter import decode_search_attributes
from temporalio.exceptions import ApplicationError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from dealflow import rules, tracing
from dealflow.config import STUCK_ATTEMPTS, LenderConfig, Settings
from dealflow.models import (
    ACTION_INPUTS,
    Action,
    ActionInput,
    ActionReceipt,
    ActionResult,
    Actor,
    DealInput,
    DealPolicy,
    DealStatus,
    LenderEventInput,
    LenderRef,
    Stage,
    StartDealInput,
)
from dealflow.temporal_connection import temporal_connection
from workflows.deal import DEAL_STAGE, DEALER_ID, LENDER_ID, DealWorkflow

T = TypeVar("T")


class DealNotFound(LookupError):
    def __init__(self, deal_id: str) -> None:
        super().__init__(f"deal {deal_id} does not exist")
        self.deal_id = deal_id


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """The one place clients are built: to the Temporal the settings and the
    standard `TEMPORAL_*` variables describe (dealflow/temporal_connection.py,
    TLS and API keys included), with pydantic payloads AES-GCM encrypted with
    `DEALFLOW_CODEC_KEYS` (dealflow/codec.py), so no personal data reaches Temporal."""
    from dealflow.codec import data_converter_for

    options = {"runtime": runtime} if runtime is not None else {}
    return await temporal_connection(settings).connect(data_converter_for(settings), **options)


def worker_client(client: Client) -> Client:
    """`client` as a worker must use it: the same connection, with a codec
    that refuses payloads sent in clear (dealflow/codec.py), so whoever can
    reach Temporal without the codec keys cannot speak to a deal."""
    from dealflow.codec import refusing_plaintext

    config = client.config()
    config["data_converter"] = refusing_plaintext(client.data_converter)
    return Client(**config)


def workflow_id(deal_id: str) -> str:
    return f"deal-{deal_id}"


def new_deal_id(now: datetime | None = None) -> str:
    # Date plus randomness: sortable by day, unguessable, no personal data.
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d}-{secrets.token_hex(4)}"


def decision_update_id(source: str, status: DealStatus, action: str) -> str:
    """An update id for an action decided on `status`: the same decision retried
    keeps it, so Temporal applies it once. The version alone would repeat after
    a reset by `dealflow.stuck.heal` (the new run counts again from the reset
    point, and the replaced run's ids are not the new run's), so the time the
    deal entered its stage, which the new run records anew, is part of it."""
    entered = int(status.stage_entered_at.timestamp() * 1000)
    return f"{source}:{status.deal_id}:{action}:{status.version}:{entered}"


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_deal(raw: Any) -> DealInput:
    try:
        return DealInput.model_validate(raw)
    except ValidationError as e:
        raise rules.invalid(format_validation_error(e)) from None


def parse_action(action: str, raw: Any, actor: Actor) -> tuple[Action, ActionInput]:
    """An action name and a JSON payload, plus the actor the caller vouches for.

    Any `actor` in the payload is replaced: who acted comes from the token or
    the operator's flags, never from a body.
    """
    try:
        act = Action(action)
    except ValueError:
        known = ", ".join(a.value for a in Action)
        raise rules.invalid(f"unknown action {action!r}; known: {known}") from None
    if not isinstance(raw, dict):
        raise rules.invalid("the action payload must be a JSON object")
    body = {k: v for k, v in raw.items() if k != "actor"}
    try:
        inp = ACTION_INPUTS[act].model_validate({**body, "actor": actor.model_dump()})
    except ValidationError as e:
        raise rules.invalid(format_validation_error(e)) from None
    return act, inp


def start_input(
    deal_id: str,
    deal: DealInput,
    policy: DealPolicy,
    lenders: dict[str, LenderConfig],
    actor: Actor,
    now: datetime | None = None,
) -> StartDealInput:
    """The workflow input of a deal that passes every rule on the dealer's
    date at `now` (the current time when omitted)."""
    if actor.role not in rules.START_DEAL_ROLES:
        names = ", ".join(sorted(r.value for r in rules.START_DEAL_ROLES))
        raise rules.RuleError(
            "forbidden", f"role '{actor.role.value}' may not start a deal; allowed: {names}"
        )
    today = rules.dealer_date(policy, now or datetime.now(UTC))
    rules.validate_deal(deal, policy, lenders, today)
    refs = [
        LenderRef(
            id=lid,
            legal_name=lenders[lid].legal_name,
            mortgage_before_funding=lenders[lid].mortgage_before_funding,
        )
        for lid in deal.lender_ids
    ]
    return StartDealInput(deal_id=deal_id, deal=deal, policy=policy, lenders=refs, created_by=actor)


async def start_deal(client: Client, task_queue: str, inp: StartDealInput) -> str:
    wid = workflow_id(inp.deal_id)
    await client.start_workflow(
        DealWorkflow.run,
        inp,
        id=wid,
        task_queue=task_queue,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(DEAL_STAGE, Stage.CONTRACT.value),
                SearchAttributePair(DEALER_ID, inp.deal.dealer_id),
                SearchAttributePair(LENDER_ID, inp.deal.lender_ids[0]),
            ]
        ),
    )
    return wid


def _handle(client: Client, deal_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(workflow_id(deal_id))


async def deal_result(client: Client, deal_id: str) -> DealStatus:
    """The deal's final status, following its runs: continue-as-new (the SDK
    follows those) and a reset by `dealflow.stuck.heal`, which terminates the
    run it replaces and starts the one that carries the deal on."""
    while True:
        handle = _handle(client, deal_id)
        run_id = (await handle.describe()).run_id
        try:
            return await client.get_workflow_handle(
                workflow_id(deal_id), run_id=run_id, result_type=DealStatus
            ).result()
        except WorkflowFailureError:
            if (await handle.describe()).run_id == run_id:
                raise


async def deal_status(client: Client, deal_id: str, rpc_timeout: float = 10.0) -> DealStatus:
    try:
        return await _handle(client, deal_id).query(
            DealWorkflow.status, rpc_timeout=timedelta(seconds=rpc_timeout)
        )
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise DealNotFound(deal_id) from None
        raise
    except WorkflowQueryFailedError as e:
        closed = await closed_status(client, deal_id)
        if closed is not None:
            return closed
        raise RuntimeError(f"status query of deal {deal_id} failed: {e}") from e


async def closed_status(client: Client, deal_id: str) -> DealStatus | None:
    """A closed deal's status is its result, read from its last event: no
    replay of its history is needed (a query of a closed run replays it)."""
    handle = client.get_workflow_handle(workflow_id(deal_id), result_type=DealStatus)
    if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
        return None
    try:
        return await handle.result(follow_runs=False)
    except WorkflowFailureError:
        return None


# A staff action whose outcome is unknown (the deal's worker died mid-task, the
# server restarted) is asked after, and sent again when safe, for this long, so
# the caller gets the real outcome instead of an error for an applied action.
ACT_PATIENCE_SECONDS = 30.0
# Once the action may be in the server's hands (sent, no outcome yet: a worker
# is being replaced, the server is restarting), its outcome is awaited this
# long in all before the caller is told it is not known yet: answering early
# would report an error for an action that is then applied.
ACT_OUTCOME_WAIT_SECONDS = 120.0


def transient(e: Exception) -> bool:
    if isinstance(e, WorkflowUpdateRPCTimeoutOrCancelledError):
        return True
    return isinstance(e, RPCError) and (
        e.status
        in (
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.DEADLINE_EXCEEDED,
            # Busy, or the run is closing for a continue-as-new: nothing admitted.
            RPCStatusCode.RESOURCE_EXHAUSTED,
        )
        or "Workflow Task in failed state" in e.message
        # A query while the worker reconnects after a server restart.
        or "no poller seen" in e.message
        # The task that carried the update failed: it was not applied.
        or "unexpected workflow task failure" in e.message
        # A call's own deadline ("Timeout expired") or a connection the server
        # dropped ("h2 protocol error"): the Rust client reports CANCELLED.
        or e.status is RPCStatusCode.CANCELLED
        # A call without the SDK's retries, cut off by a server going away.
        or (e.status is RPCStatusCode.UNKNOWN and "transport error" in e.message)
    )


async def act(
    client: Client,
    deal_id: str,
    action: Action,
    inp: ActionInput,
    update_id: str | None = None,
    patience: float = ACT_PATIENCE_SECONDS,
) -> ActionResult:
    """Run one staff action and answer with the deal's new status (API, CLI)."""
    receipt = await act_receipt(client, deal_id, action, inp, update_id, patience)
    return await with_status(client, deal_id, receipt, patience)


async def with_status(
    client: Client, deal_id: str, receipt: ActionReceipt, patience: float = ACT_PATIENCE_SECONDS
) -> ActionResult:
    """The receipt of an applied action, with the deal's status read after it."""
    status = await _status_after(client, deal_id, patience)
    return ActionResult(action=receipt.action, accepted=receipt.accepted, status=status)


async def act_receipt(
    client: Client,
    deal_id: str,
    action: Action,
    inp: ActionInput,
    update_id: str | None = None,
    patience: float = ACT_PATIENCE_SECONDS,
) -> ActionReceipt:
    """Run one staff action as a Temporal Update; refusals become RuleError."""
    try:
        return await update_once(
            client,
            workflow_id(deal_id),
            action.value,
            inp,
            result_type=ActionReceipt,
            update_id=update_id or f"{action.value}-{uuid.uuid4().hex}",
            sent_before=update_id is not None,
            patience=patience,
        )
    except WorkflowUpdateFailedError as e:
        raise _rule_error(e) from None
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            await _raise_closed_or_missing(client, deal_id)
        raise


async def update_once(
    client: Client,
    wf_id: str,
    update: str,
    arg: Any,
    *,
    result_type: type[T],
    update_id: str,
    sent_before: bool,
    patience: float,
) -> T:
    """Execute an update at most once, riding out transient failures for `patience` s.

    Temporal applies an update id once, so a retry can never apply the action
    twice — provided the id is never sent again while a worker may still
    deliver an earlier copy. So an update whose fate is unknown (a lost reply,
    a server restart, a worker that died, or a caller's id that may have been
    sent before: `sent_before`) is asked for by id first, and sent again only
    when the server does not know it and no workflow task that could hold an
    earlier delivery is in flight (`_known_outcome`). Re-sending inside that
    window lets the server hold a second copy of the id: the worker completes
    one and its validator refuses the other, and the server rejects that
    refusal on every retry of the task, wedging the workflow.
    """
    handle = client.get_workflow_handle(wf_id)
    started = time.monotonic()
    deadline = started + patience
    delay = 0.2
    fate_unknown = sent_before
    sent = sent_before
    # What to raise when patience runs out: the last refusal if nothing can
    # have been applied, else "unknown" (the caller must not be told "no").
    last: Exception = WorkflowUpdateRPCTimeoutOrCancelledError()
    while True:
        try:
            if fate_unknown:
                outcome = await _known_outcome(handle, update_id, result_type, deadline)
                if outcome is not None:
                    return outcome[0]
            sent = True
            return await _send_once(client, handle, update, arg, update_id, result_type, deadline)
        except RPCError as e:
            if not transient(e):
                raise
            last = e
        except WorkflowUpdateRPCTimeoutOrCancelledError as e:
            last = e
        except _DeliveryInFlight:
            pass
        if sent:
            # It may be in the server's hands (held without an outcome, or sent
            # into a restart): wait longer for its outcome before giving up.
            deadline = max(deadline, started + ACT_OUTCOME_WAIT_SECONDS)
        await _raise_if_stuck(client, handle, delivered=sent)
        if time.monotonic() + delay > deadline:
            raise WorkflowUpdateRPCTimeoutOrCancelledError() if sent else last
        fate_unknown = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _send_once(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    update: str,
    arg: Any,
    update_id: str,
    result_type: type[T],
    deadline: float,
) -> T:
    """One UpdateWorkflowExecution call, then polls for the outcome.

    Not `handle.execute_update`: the SDK re-sends the request by itself, on
    UNAVAILABLE (a server restarting) and whenever the server's answer comes
    before the update is accepted, which is exactly the blind re-send that
    `update_once` exists to prevent. Here the request goes out once; every
    retry is `update_once`'s, after asking for the outcome.
    """
    # With tracing on, the update's span (a refusal marks it failed) and the
    # header that carries it to the workflow: the SDK's interceptors never see
    # an update sent this way.
    with tracing.update_call(client, update, handle.id, update_id) as header:
        return await _send(client, handle, update, arg, update_id, result_type, deadline, header)


async def _send(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    update: str,
    arg: Any,
    update_id: str,
    result_type: type[T],
    deadline: float,
    header: Mapping[str, Payload],
) -> T:
    converter = client.data_converter
    request = UpdateWorkflowExecutionRequest(
        namespace=client.namespace,
        workflow_execution=WorkflowExecution(workflow_id=handle.id),
        request=update_pb.Request(
            meta=update_pb.Meta(update_id=update_id, identity=client.identity),
            input=update_pb.Input(
                header=Header(fields=header) if header else None,
                name=update,
                args=Payloads(payloads=await converter.encode([arg])),
            ),
        ),
        wait_policy=update_pb.WaitPolicy(lifecycle_stage=_COMPLETED),
    )
    wait = max(1.0, min(20.0, deadline - time.monotonic()))
    try:
        response = await client.workflow_service.update_workflow_execution(
            request, retry=False, timeout=timedelta(seconds=wait)
        )
    except RPCError as e:
        if e.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise WorkflowUpdateRPCTimeoutOrCancelledError() from e
        raise
    if not response.HasField("outcome"):
        # Admitted or accepted, not yet completed: the outcome is polled for,
        # which never sends the update again.
        found = await _known_outcome(handle, update_id, result_type, deadline)
        if found is None:
            raise WorkflowUpdateRPCTimeoutOrCancelledError()
        return found[0]
    outcome = response.outcome
    if outcome.HasField("failure"):
        raise WorkflowUpdateFailedError(await converter.decode_failure(outcome.failure))
    [result] = await converter.decode(outcome.success.payloads, [result_type])
    return cast(T, result)


_COMPLETED = (
    UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED
)


class _DeliveryInFlight(Exception):
    """The update is unknown to the server, but a started workflow task may hold it."""


async def _known_outcome(
    handle: WorkflowHandle[Any, Any], update_id: str, result_type: type[T], deadline: float
) -> tuple[T] | None:
    """The update's outcome if the server has it; None when it is safe to send it.

    The server answers NOT_FOUND for an id it never admitted, one it admitted
    and then lost (a restart, a failed workflow task clears admitted updates)
    and one its validator refused (refusals are not stored). In the middle
    case a worker may still be working on a task that carries the first copy,
    and its completion would still be accepted: wait until no workflow task is
    started, then ask again; if the server still does not know the id, no
    worker can hold it.
    """
    wait = max(1.0, min(10.0, deadline - time.monotonic()))
    try:
        result = await handle.get_update_handle(update_id, result_type=result_type).result(
            rpc_timeout=timedelta(seconds=wait)
        )
        return (result,)
    except RPCError as e:
        if e.status is not RPCStatusCode.NOT_FOUND:
            raise
    if await _workflow_task_started(handle):
        raise _DeliveryInFlight(update_id)
    return None


@dataclass(frozen=True)
class TaskTrouble:
    """What `describe` says of a workflow's task: the attempt of the pending
    workflow task and the server's `TemporalReportedProblems`."""

    attempts: int
    reported_problems: list[str]

    @classmethod
    def of(cls, raw: Any) -> TaskTrouble:
        pending = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
        attributes = decode_search_attributes(raw.workflow_execution_info.search_attributes)
        return cls(
            attempts=pending.attempt if pending is not None else 0,
            reported_problems=[str(v) for v in attributes.get("TemporalReportedProblems") or []],
        )

    @property
    def stuck(self) -> bool:
        # An update's own workflow task restarts the count; the server's mark stays.
        return self.attempts >= STUCK_ATTEMPTS or bool(self.reported_problems)


class WorkflowStuck(Exception):
    """The workflow task keeps failing: it will not come back by itself
    (dealflow/stuck.py), so waiting out the caller's patience would not help.
    `delivered`: the action reached the server before, so healing (which
    re-applies what was delivered) may still apply it."""

    def __init__(self, deal_id: str, delivered: bool = False) -> None:
        outcome = (
            "the action was delivered and may still be applied when the deal is healed: "
            "read the deal before taking it again"
            if delivered
            else "nothing was applied"
        )
        super().__init__(f"deal {deal_id} is stuck: its workflow task keeps failing; {outcome}")
        self.deal_id = deal_id
        self.delivered = delivered


async def _raise_if_stuck(
    client: Client, handle: WorkflowHandle[Any, Any], delivered: bool
) -> None:
    try:
        desc = await handle.describe(rpc_timeout=timedelta(seconds=5))
        if not TaskTrouble.of(desc.raw_description).stuck:
            return
        failing = await _last_task_failed(client, handle.id, desc.run_id)
    except RPCError:
        return
    if failing:
        raise WorkflowStuck(handle.id.removeprefix("deal-"), delivered)


async def _last_task_failed(client: Client, wf_id: str, run_id: str) -> bool:
    """Whether the newest workflow-task outcome in history is a failure. A
    worker killed mid-task leaves timeouts (and a speculative task of an
    update none at all), which the next worker ends: that deal is recovering,
    not stuck, and an action sent to it may still be applied."""
    response = await client.workflow_service.get_workflow_execution_history_reverse(
        GetWorkflowExecutionHistoryReverseRequest(
            namespace=client.namespace,
            execution=WorkflowExecution(workflow_id=wf_id, run_id=run_id),
            maximum_page_size=50,
        ),
        timeout=timedelta(seconds=5),
    )
    for event in response.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return True
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return False
    return False


async def _workflow_task_started(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        desc = await handle.describe(rpc_timeout=timedelta(seconds=5))
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            return False  # the send that follows reports the missing deal
        raise
    raw = desc.raw_description
    return (
        raw.HasField("pending_workflow_task")
        and raw.pending_workflow_task.state
        == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
    )


def _rule_error(e: WorkflowUpdateFailedError) -> Exception:
    cause = e.cause
    if isinstance(cause, ApplicationError) and (cause.type or "").startswith("Rule."):
        kind = cause.type.removeprefix("Rule.")  # type: ignore[union-attr]
        return rules.RuleError(kind, cause.message)  # type: ignore[arg-type]
    return e


async def _status_after(client: Client, deal_id: str, patience: float) -> DealStatus:
    # The action is applied by now: a worker that died or a deal whose task is
    # being retried must not turn that into an error, so transient refusals of
    # the query are asked again. A short RPC deadline per try, because a query
    # that races a new run's first task can go unanswered.
    # It waits as long as an action's outcome is awaited: answering an error
    # for an action that was applied would have the caller take it again.
    deadline = time.monotonic() + max(patience, ACT_OUTCOME_WAIT_SECONDS)
    delay = 0.2
    while True:
        try:
            return await _handle(client, deal_id).query(
                DealWorkflow.status, rpc_timeout=timedelta(seconds=5)
            )
        except WorkflowQueryFailedError as e:
            closed = await closed_status(client, deal_id)
            if closed is None:
                raise RuntimeError(f"status query of deal {deal_id} failed: {e}") from e
            return closed
        except RPCError as e:
            if not transient(e) or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _raise_closed_or_missing(client: Client, deal_id: str) -> None:
    try:
        desc = await _handle(client, deal_id).describe()
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise DealNotFound(deal_id) from None
        raise
    if desc.status is not WorkflowExecutionStatus.RUNNING:
        raise rules.conflict(f"deal {deal_id} is closed; no further actions are possible")


async def signal_lender_event(client: Client, deal_id: str, ev: LenderEventInput) -> None:
    try:
        await _handle(client, deal_id).signal(DealWorkflow.lender_event, ev)
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise DealNotFound(deal_id) from None
        raise
