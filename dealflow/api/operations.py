"""What the back office does to deals, whatever page or route asks: start a
deal (idempotently), list the read model, read a deal, take a staff action.

The JSON routes (`routes/deals.py`) and the deal desk (`dealflow/desk/`) both
call these, so a rule, a metric or a log line lives once and both answer the
same refusal with the same words.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dealflow import client as deals
from dealflow import deal_wait, reports, rules, stuck
from dealflow.api.deps import Services
from dealflow.api.errors import Problem
from dealflow.models import (
    Action,
    ActionResult,
    Actor,
    DealCreated,
    DealInput,
    DealPage,
    DealStatus,
    StartDealInput,
)
from dealflow.storage import db

log = logging.getLogger("dealflow.api")


@dataclass(frozen=True)
class StartOutcome:
    created: DealCreated
    # Set when a repeated Idempotency-Key gave back the deal its first use started.
    replayed_status: int | None = None


def request_digest(deal: DealInput) -> str:
    """sha256 of the deal as validated: the same body however it is spelled or ordered."""
    canonical = json.dumps(deal.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def start_deal(
    svc: Services,
    deal: DealInput,
    actor: Actor,
    idempotency_key: str | None,
    dealers: rules.DealerScope,
) -> StartOutcome:
    """Start a deal; with a key, the same subject, key and body give the same deal.
    A clerk scoped to `dealers` starts deals for those dealers only (403).

    Keys belong to the token's subject (the actor's staff id): another
    subject's key is an independent request, and nothing of the deal it
    started is ever told to anyone else.
    """
    # Every rule first: a rejected body neither starts a deal nor stores its key.
    rules.check_start_dealer(deal.dealer_id, dealers)
    inp = deals.start_input(deals.new_deal_id(), deal, svc.deal_policy, svc.lenders, actor)
    if idempotency_key is None:
        await deals.start_deal(svc.client, svc.settings.task_queue, inp)
        return StartOutcome(_created(svc, inp.deal_id, "started"))
    subject, digest = actor.staff_id, request_digest(deal)
    now = datetime.now(UTC)
    expires_before = idempotency_cutoff(svc, now)
    row = await asyncio.to_thread(
        db.get_idempotency_key, svc.engine, subject, idempotency_key, expires_before=expires_before
    )
    if row is None:
        row, new = await asyncio.to_thread(
            db.remember_idempotency_key,
            svc.engine,
            subject=subject,
            key=idempotency_key,
            request_sha256=digest,
            deal_id=inp.deal_id,
            response_status=201,
            created_at=now,
            expires_before=expires_before,
        )
        if new:
            await _start_keyed(svc, inp, subject, idempotency_key)
            return StartOutcome(_created(svc, inp.deal_id, "started"))
    assert row is not None
    if row.request_sha256 != digest:
        raise Problem(
            422,
            f"Idempotency-Key {idempotency_key!r} was already used to start deal {row.deal_id} "
            "with a different body; use a new key for a new deal",
        )
    await _ensure_started(svc, inp.model_copy(update={"deal_id": row.deal_id}))
    return StartOutcome(_created(svc, row.deal_id, "replayed"), row.response_status)


def idempotency_cutoff(svc: Services, now: datetime) -> datetime:
    """Keys created before this have expired (`DEALFLOW_IDEMPOTENCY_KEY_HOURS`)."""
    return now - timedelta(hours=svc.settings.idempotency_key_hours)


async def _start_keyed(svc: Services, inp: StartDealInput, subject: str, key: str) -> None:
    try:
        await deals.start_deal(svc.client, svc.settings.task_queue, inp)
    except WorkflowAlreadyStartedError:
        pass  # a concurrent retry with this key started this very deal
    except Exception:
        # Not started: the key must not point at nothing. (A cancelled request
        # keeps it; its retry starts the deal, see _ensure_started.)
        await asyncio.to_thread(db.forget_idempotency_key, svc.engine, subject, key, inp.deal_id)
        raise


async def _ensure_started(svc: Services, inp: StartDealInput) -> None:
    """Start the deal unless its workflow exists: repairs a key stored by a request
    that died (or was cancelled) between storing the key and starting the deal."""
    handle = svc.client.get_workflow_handle(deals.workflow_id(inp.deal_id))
    try:
        await handle.describe()
        return
    except RPCError as e:
        if e.status is not RPCStatusCode.NOT_FOUND:
            raise
    with contextlib.suppress(WorkflowAlreadyStartedError):  # a concurrent retry won
        await deals.start_deal(svc.client, svc.settings.task_queue, inp)


def _created(svc: Services, deal_id: str, outcome: str) -> DealCreated:
    svc.metrics.deals_started.labels(outcome=outcome).inc()
    log.info("deal %s", outcome, extra={"deal_id": deal_id})
    return DealCreated(deal_id=deal_id, workflow_id=deals.workflow_id(deal_id))


async def list_deals(svc: Services, dealers: rules.DealerScope, **filters: Any) -> DealPage:
    """One page of the read model, of the reader's `dealers` only; `filters`
    are `db.list_deals`'s, `overdue` a flag."""
    page, _ = await list_deals_named(svc, dealers, **filters)
    return page


async def list_deals_named(
    svc: Services, dealers: rules.DealerScope, **filters: Any
) -> tuple[DealPage, dict[str, str]]:
    """`list_deals`, and the customer's name of each deal on the page that has
    one, from the same rows (for the staff who may see names)."""
    now = datetime.now(UTC)
    overdue = filters.pop("overdue", False)
    try:
        rows, next_cursor = await asyncio.to_thread(
            db.list_deals,
            svc.engine,
            overdue_at=now if overdue else None,
            dealer_ids=dealers,
            **filters,
        )
    except ValueError as e:
        raise Problem(422, str(e)) from None
    page = DealPage(deals=[db.deal_summary(row, now) for row in rows], next_cursor=next_cursor)
    return page, {row.deal_id: row.customer_name for row in rows if row.customer_name}


async def customer_names(svc: Services, deal_ids: list[str]) -> dict[str, str]:
    return await asyncio.to_thread(db.customer_names, svc.engine, deal_ids)


# --------------------------------------------------------------------------- reports


def report_period(start: date | None, end: date | None) -> reports.Period:
    """The period of a report, or a 422 naming what is wrong with it."""
    try:
        return reports.period_of(start, end, datetime.now(UTC).date())
    except reports.PeriodError as e:
        raise Problem(422, str(e)) from None


# Each report counts the deals of the reader's `dealers` only (None: all).


async def funnel_report(
    svc: Services, period: reports.Period, dealers: rules.DealerScope
) -> reports.FunnelReport:
    moves = await asyncio.to_thread(
        db.moves_between, svc.engine, period.since, period.until, dealers
    )
    return reports.funnel(moves, period)


async def time_in_stage_report(
    svc: Services, period: reports.Period, dealers: rules.DealerScope
) -> reports.TimeInStageReport:
    moves = await asyncio.to_thread(
        db.moves_between, svc.engine, period.since, period.until, dealers
    )
    return reports.time_in_stage(moves, period)


async def overdue_report(svc: Services, dealers: rules.DealerScope) -> reports.OverdueReport:
    pending = await asyncio.to_thread(db.pending_by_stage, svc.engine, dealers)
    return reports.overdue(pending, datetime.now(UTC))


async def lender_report(
    svc: Services, period: reports.Period, dealers: rules.DealerScope
) -> reports.LenderReport:
    applications = await asyncio.to_thread(
        db.applications_between, svc.engine, period.since, period.until, dealers
    )
    return reports.lender_figures(applications, period)


async def close_reason_report(
    svc: Services, period: reports.Period, dealers: rules.DealerScope
) -> reports.ReasonReport:
    closures = await asyncio.to_thread(
        db.closures_between, svc.engine, period.since, period.until, dealers
    )
    return reports.close_reasons(closures, period)


def not_found(deal_id: str) -> Problem:
    """The answer for an unknown deal, and for one outside the reader's dealers:
    the same words, so a scoped reader cannot tell the two apart."""
    return Problem(404, str(deals.DealNotFound(deal_id)))


async def read_status(svc: Services, deal_id: str, dealers: rules.DealerScope) -> DealStatus:
    """The deal's status, or 404 when it does not exist or is outside `dealers`."""
    try:
        # A short deadline: a deal that cannot answer is checked for being stuck.
        status = await stuck.readable_status(svc.client, svc.engine, deal_id, rpc_timeout=5.0)
    except deals.DealNotFound:
        raise not_found(deal_id) from None
    except stuck.DealUnreadable as e:
        raise Problem(503, str(e), {"Retry-After": "3"}) from None
    if not rules.in_dealer_scope(status.dealer_id, dealers):
        raise not_found(deal_id)
    return status


async def next_status(
    svc: Services,
    deal_id: str,
    dealers: rules.DealerScope,
    change: deal_wait.Change,
    wait: float,
    subject: str,
    gone: deal_wait.Gone,
) -> deal_wait.Awaited | None:
    """The deal's status once it shows `change`, or after `wait` seconds (at most
    the server's limit) as it is; 404 as `read_status`, 429 past the wait caps.
    None if the client left. The deal is asked once when the wait ends, and
    besides only if it was not projected yet (to tell an unknown deal)."""
    waits = svc.status_waits
    with waits.slot(subject):
        mark = await waits.watch.mark(deal_id)
        known = None
        if mark is None:
            known = await read_status(svc, deal_id, dealers)
        elif not rules.in_dealer_scope(mark.dealer_id, dealers):
            raise not_found(deal_id)
        return await deal_wait.next_status(
            waits.watch,
            deal_id,
            change,
            min(wait, waits.max_seconds),
            lambda: read_status(svc, deal_id, dealers),
            known=known,
            gone=gone,
        )


async def check_in_scope(
    svc: Services, deal_id: str, dealers: rules.DealerScope, *, ask_deal: bool = True
) -> None:
    """404 unless the deal is one of `dealers`', before anything is done to it.

    The read model names the deal's dealer (fixed when the deal starts); a deal
    not projected yet is asked for its status, unless `ask_deal` is False (the
    caller reads the status next, with the same check)."""
    if dealers is None:
        return
    row = await asyncio.to_thread(db.get_deal, svc.engine, deal_id)
    if row is not None:
        if not rules.in_dealer_scope(row.dealer_id, dealers):
            raise not_found(deal_id)
    elif ask_deal:
        await read_status(svc, deal_id, dealers)


async def take_action(
    svc: Services,
    deal_id: str,
    action: Action,
    payload: dict[str, Any],
    actor: Actor,
    dealers: rules.DealerScope,
) -> ActionResult:
    """One staff action, as an Update of the deal (of `dealers`, else 404);
    refusals raise RuleError."""
    act, inp = deals.parse_action(action.value, payload, actor)
    await check_in_scope(svc, deal_id, dealers)
    try:
        result = await deals.act(svc.client, deal_id, act, inp)
    except deals.DealNotFound as e:
        raise Problem(404, str(e)) from None
    except rules.RuleError as e:
        svc.metrics.actions.labels(action=action.value, outcome=e.kind).inc()
        raise
    svc.metrics.actions.labels(action=action.value, outcome="accepted").inc()
    log.info(
        "action taken",
        extra={
            "deal_id": deal_id,
            "action": action.value,
            "staff_id": actor.staff_id,
            "role": actor.role.value,
        },
    )
    return result


async def read_deal_input(svc: Services, deal_id: str) -> StartDealInput:
    """What the deal's current run started with: the application (customer,
    vehicle, money), its policy and lenders. The first event of the run's
    history, decoded with the client's data converter (the codec's keys)."""
    handle = svc.client.get_workflow_handle(deals.workflow_id(deal_id))
    try:
        async for event in handle.fetch_history_events(page_size=1):
            started = event.workflow_execution_started_event_attributes
            decoded = await svc.client.data_converter.decode(
                list(started.input.payloads), [StartDealInput]
            )
            start: StartDealInput = decoded[0]
            return start
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise Problem(404, f"deal {deal_id} does not exist") from None
        raise
    raise Problem(404, f"deal {deal_id} does not exist")
