"""A back-office desk for tests: starts deals, takes staff actions with the
example payloads, plays the lender's webhooks as the API delivers them, and
reads the deal back through the `status` query."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from dealflow import client as deals
from dealflow import rules
from dealflow.config import LenderConfig
from dealflow.models import (
    Action,
    ActionResult,
    Actor,
    ApplicationDecided,
    DealInput,
    DealPolicy,
    DealStatus,
    Decision,
    DisbursementCompleted,
    DisbursementFailed,
    DocumentKind,
    LenderEventInput,
    Role,
    Stage,
    Submission,
)
from dealflow.samples import (
    example_action,
    example_deal,
    funding_document,
    loan_terms_confirmation,
    sample_documents,
    stipulation_document,
)
from dealflow.storage import db
from dealflow.storage.documents import DocumentStore
from dealflow.uploads import upload_document
from tests.support.stack import Stack, deal_worker
from workflows import DealWorkflow

_QUERY_LOST = (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)


def actor_for(action: Action) -> Actor:
    role = rules.owner_role(action)
    return Actor(staff_id=f"{role.value}-01", role=role)


def uploader_of(kind: DocumentKind) -> Actor:
    role = rules.document_uploader(kind)
    return Actor(staff_id=f"{role.value}-01", role=role)


OPEN_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
}


class Desk:
    def __init__(self, stack: Stack, task_queue: str) -> None:
        self.stack = stack
        self.env: WorkflowEnvironment = stack.env
        self.client: Client = stack.env.client
        self.task_queue = task_queue
        self.sim_url = stack.sim_url
        self.lenders: dict[str, LenderConfig] = stack.lenders
        self.store: DocumentStore = stack.store
        self.deal_id = ""
        self.started: list[str] = []
        self.deal: DealInput = example_deal()
        self.policy = DealPolicy()
        self.today = rules.dealer_date(self.policy, datetime.now(UTC))

    @property
    def handle(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(deals.workflow_id(self.deal_id))

    async def start(
        self,
        deal: DealInput | None = None,
        policy: DealPolicy | None = None,
        script: dict[str, Any] | None = None,
    ) -> str:
        """Start a deal; `script` tells the lender simulator how to answer it
        (without one, the simulator decides by its affordability rules)."""
        self.deal = deal or example_deal()
        self.policy = policy or DealPolicy()
        self.deal_id = deals.new_deal_id()
        # The time-skipping clock runs ahead of the wall clock across tests:
        # documents and policy dates follow the deal's own clock.
        # The dealer's date (the policy's time zone), as the deal's rules read it.
        self.today = rules.dealer_date(self.policy, await self.env.get_current_time())
        if script is not None:
            await self.script(script)
        inp = deals.start_input(
            self.deal_id,
            self.deal,
            self.policy,
            self.lenders,
            Actor(staff_id="sales-01", role=Role.SALES),
        )
        await deals.start_deal(self.client, self.task_queue, inp)
        self.started.append(self.deal_id)
        return self.deal_id

    async def close(self) -> None:
        """Terminate whatever this desk left running, so no deal of one test keeps
        timers on the shared test server for the next."""
        for deal_id in self.started:
            handle = self.client.get_workflow_handle(deals.workflow_id(deal_id))
            try:
                if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
                    # Not while an activity runs: the time-skipping server keeps a
                    # terminated deal's started activity forever, and with it a
                    # lock that stops time skipping for every later test.
                    with contextlib.suppress(AssertionError):
                        await self.quiet_history(handle, within=5)
                    await handle.terminate("test finished")
            except RPCError:
                pass

    async def script(self, script: dict[str, Any]) -> None:
        async with httpx.AsyncClient() as http:
            r = await http.put(f"{self.sim_url}/_sim/scripts/{self.deal_id}", json=script)
            assert r.status_code < 300, r.text

    async def ledger(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{self.sim_url}/_sim/ledger", params={"deal_id": self.deal_id})
            r.raise_for_status()
            return dict(r.json())

    async def do(self, action: str, actor: Actor | None = None, **changes: Any) -> ActionResult:
        act = Action(action)
        payload = {**example_action(action, self.today), **changes}
        a, inp = deals.parse_action(action, payload, actor or actor_for(act))
        return await deals.act(self.client, self.deal_id, a, inp)

    async def status(self) -> DealStatus:
        # The time-skipping test server now and then never answers a query that
        # races a new run's first workflow task (seen right after continue-as-new);
        # the client would wait 30 s. Ask with a short deadline, and ask again.
        for attempt in range(5):
            try:
                return await self.handle.query(
                    DealWorkflow.status, rpc_timeout=timedelta(seconds=3)
                )
            except RPCError as e:
                if e.status not in _QUERY_LOST or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def wait_until(
        self, pred: Callable[[DealStatus], bool], what: str = "condition", within: float = 15
    ) -> DealStatus:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            st = await self.status()
            if pred(st):
                return st
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"deal {self.deal_id}: timed out waiting for {what}: {st}")
            await asyncio.sleep(0.05)

    async def wait_stage(self, stage: Stage) -> DealStatus:
        return await self.wait_until(lambda s: s.stage is stage, f"stage {stage.value}")

    async def submitted(self) -> Submission:
        """The current submission, once the lender acknowledged it (has a ref)."""
        st = await self.wait_until(
            lambda s: bool(s.submissions) and s.submissions[-1].application_ref is not None,
            "the lender to acknowledge the submission",
        )
        return st.submissions[-1]

    async def wait_notice(
        self, kind: str, stage: Stage | None = None, count: int = 1
    ) -> DealStatus:
        def seen(st: DealStatus) -> bool:
            found = [n for n in st.notices if n.kind == kind and stage in (None, n.stage)]
            return len(found) >= count

        return await self.wait_until(seen, f"{count} {kind} notice(s) in {stage}")

    # -- the outside world: the database the activities write, the history

    async def outbox(self, kind: str | None = None) -> list[db.OutboxRow]:
        def query() -> list[db.OutboxRow]:
            q = select(db.OutboxRow).where(col(db.OutboxRow.deal_id) == self.deal_id)
            if kind is not None:
                q = q.where(col(db.OutboxRow.kind) == kind)
            with Session(self.stack.engine) as session:
                return list(session.exec(q.order_by(col(db.OutboxRow.created_at))).all())

        return await asyncio.to_thread(query)

    async def compensation_rows(self) -> list[db.CompensationRow]:
        def query() -> list[db.CompensationRow]:
            q = select(db.CompensationRow).where(col(db.CompensationRow.deal_id) == self.deal_id)
            with Session(self.stack.engine) as session:
                return list(session.exec(q.order_by(col(db.CompensationRow.created_at))).all())

        return await asyncio.to_thread(query)

    async def history_events(self) -> list[Any]:
        return list((await self.handle.fetch_history()).events)

    async def quiet_history(
        self, handle: WorkflowHandle[Any, Any] | None = None, within: float = 10
    ) -> list[Any]:
        """The history once the deal is idle: no activity out, no workflow task
        pending, and two reads agree. Only then can a count prove nothing was written."""
        handle = handle or self.handle
        deadline = asyncio.get_running_loop().time() + within
        previous: list[Any] | None = None
        while True:
            desc = await handle.describe()
            events = list((await handle.fetch_history()).events)
            idle = (
                not desc.raw_description.pending_activities
                and not desc.raw_description.HasField("pending_workflow_task")
                # A workflow task's commands (markers of local activities,
                # timers) follow its completion; a task still out ends the list.
                and events[-1].event_type not in OPEN_TASK_EVENTS
            )
            if idle and previous is not None and len(previous) == len(events):
                return events
            previous = events if idle else None
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{handle.id} did not go idle")
            await asyncio.sleep(0.05)

    async def search_attribute(self, key: SearchAttributeKey[str]) -> str | None:
        return (await self.handle.describe()).typed_search_attributes.get(key)

    async def runs(self) -> list[str]:
        """The run ids of the deal's chain, first to latest (continue-as-new links them)."""
        chain: list[str] = []
        run_id: str | None = (await self.handle.describe()).run_id
        while run_id:
            chain.append(run_id)
            handle = self.client.get_workflow_handle(deals.workflow_id(self.deal_id), run_id=run_id)
            async for event in handle.fetch_history_events():
                attrs = event.workflow_execution_started_event_attributes
                run_id = attrs.continued_execution_run_id or None
                break
        return chain[::-1]

    async def upload_documents(self, which: str = "all") -> None:
        for doc in sample_documents(self.deal_id, self.deal, self.today):
            await self.upload(doc)

    async def upload(self, doc: dict[str, Any], actor: Actor | None = None) -> ActionResult:
        doc = dict(doc)
        kind = doc.pop("kind")
        return await upload_document(
            self.client,
            self.store,
            self.deal_id,
            actor or uploader_of(kind),
            kind=kind.value,
            party=doc.pop("party").value,
            file_name=doc.pop("file_name"),
            data=doc.pop("data"),
            policy=self.policy,
            **doc,
        )

    async def upload_stipulation(self, code: str) -> ActionResult:
        return await self.upload(stipulation_document(self.deal_id, code))

    async def upload_funding(self, kind: DocumentKind, version: int = 1) -> ActionResult:
        """A document of the funding package, by the team that uploads it."""
        return await self.upload(funding_document(self.deal_id, kind, version))

    async def upload_funding_package(self) -> None:
        for kind in rules.FUNDING_KINDS:
            await self.upload_funding(kind)

    # -- the lender's side, as the webhook receiver signals it

    async def lender_event(self, ev: LenderEventInput) -> None:
        await deals.signal_lender_event(self.client, self.deal_id, ev)

    def _event(self, sub: Submission, **kw: Any) -> LenderEventInput:
        return LenderEventInput(
            webhook_id=kw.pop("webhook_id", None) or f"msg_{uuid.uuid4().hex}",
            lender_id=sub.lender_id,
            received_at=datetime.now(UTC),
            **kw,
        )

    async def decide(
        self,
        decision: Decision | str,
        seq: int = 1,
        approved_amount: Decimal | str | None = None,
        stipulations: list[dict[str, str]] | None = None,
        reasons: list[dict[str, str]] | None = None,
        webhook_id: str | None = None,
        apr: str | None = "6.50",
        term_months: int | None = None,
    ) -> LenderEventInput:
        sub = await self.submitted()
        decision = Decision(decision)
        if approved_amount is None and decision is Decision.APPROVED:
            approved_amount = self.deal.amount_financed
        data = ApplicationDecided.model_validate(
            {
                "deal_id": self.deal_id,
                "application_ref": sub.application_ref,
                "decision_seq": seq,
                "decision": decision.value,
                "approved_amount": str(approved_amount) if approved_amount is not None else None,
                "apr": apr,
                "term_months": term_months or self.deal.term_months,
                "stipulations": stipulations or [],
                "reasons": reasons or [],
            }
        )
        ev = self._event(
            sub,
            webhook_id=webhook_id,
            type="application.decided",
            decided=data,
            raw={"type": "application.decided", "data": data.model_dump(mode="json")},
        )
        await self.lender_event(ev)
        return ev

    async def _funded_submission(self) -> Submission:
        st = await self.wait_until(
            lambda s: bool(s.disbursements) and s.disbursements[-1].status == "requested",
            "the disbursement request",
        )
        sub = next(x for x in reversed(st.submissions) if x.status == "decided")
        return sub

    async def disburse(self, amount: Decimal | None = None) -> None:
        sub = await self._funded_submission()
        st = await self.status()
        data = DisbursementCompleted(
            deal_id=self.deal_id,
            application_ref=sub.application_ref or "",
            amount=amount if amount is not None else st.money.amount_financed,
            transaction_ref=f"TX-{uuid.uuid4().hex[:10]}",
            disbursed_at=datetime.now(UTC),
        )
        await self.lender_event(self._event(sub, type="disbursement.completed", disbursed=data))

    async def fail_disbursement(self, reason: str = "receiving bank rejected") -> None:
        sub = await self._funded_submission()
        data = DisbursementFailed(
            deal_id=self.deal_id, application_ref=sub.application_ref or "", reason=reason
        )
        await self.lender_event(self._event(sub, type="disbursement.failed", failed=data))

    async def confirm_loan_terms(self, **changes: Any) -> ActionResult:
        """The customer confirms the terms the deal shows (changes: what they misread)."""
        payload = {**loan_terms_confirmation(await self.status()), **changes}
        return await self.do("confirm-loan-terms", **payload)

    # -- whole stretches of the process

    async def through_documents(self) -> None:
        await self.do("sign-sales-contract")
        await self.upload_documents()

    async def through_underwriting(self) -> None:
        await self.through_documents()
        await self.do("submit-application")
        await self.wait_stage(Stage.DOWN_PAYMENT)

    async def through_loan_contract(self) -> None:
        await self.through_underwriting()
        await self.do("confirm-down-payment")
        await self.do("record-invoice")
        await self.upload_funding(DocumentKind.VEHICLE_INVOICE)
        await self.do("record-insurance", first_beneficiary=await self.lender_legal_name())
        await self.upload_funding(DocumentKind.INSURANCE_POLICY_PAGE)
        await self.do("record-repayment-account")
        await self.confirm_loan_terms()
        await self.do("sign-loan-contract")
        await self.upload_funding(DocumentKind.SIGNED_LOAN_CONTRACT)

    async def through_disbursement(self) -> None:
        await self.through_loan_contract()
        await self.wait_stage(Stage.REGISTRATION)

    async def through_delivery(self) -> None:
        await self.through_disbursement()
        for action in (
            "record-certificate",
            "record-purchase-tax",
            "record-plate",
            "record-mortgage",
            "record-stock-out",
            "record-settlement",
            "deliver",
        ):
            if action == "record-mortgage":
                await self.do(action, lienholder=await self.lender_legal_name())
            else:
                await self.do(action)

    async def lender_legal_name(self) -> str:
        st = await self.status()
        return self.lenders[st.lender_id or ""].legal_name

    async def sleep(self, days: float) -> None:
        await self.env.sleep(timedelta(days=days))

    async def follow_up(self, call: str) -> ActionResult:
        """Records a follow-up call once it falls due, skipping the time to it."""
        st = await self.status()
        due = next(
            p.due for p in st.pending if p.action == "record-follow-up" and p.what.startswith(call)
        )
        now = await self.env.get_current_time()
        if due is not None and due > now:
            # From an idle deal, to past the due time, and only once the deal has
            # chased the call: an update landing in the very task that fires the
            # timer now and then breaks the time-skipping server ("invalid
            # history builder state"), and a sleep begun while a task is out
            # now and then never ends.
            with contextlib.suppress(AssertionError):
                await self.quiet_history(within=5)
            await self.env.sleep(due - now + timedelta(minutes=1))
            chased = f"the {call} follow-up call is due"
            await self.wait_until(lambda s: chased in [n.message for n in s.notices], chased)
        return await self.do("record-follow-up", call=call)

    async def result(self) -> DealStatus:
        """Wait for the deal to end, letting time skip to its next timers (only a
        handle from start_workflow does that by itself on the test server)."""
        handle = self.client.get_workflow_handle(
            deals.workflow_id(self.deal_id), result_type=DealStatus
        )
        status: DealStatus = await result_skipping_time(self.env, handle)
        return status


async def result_skipping_time(env: WorkflowEnvironment, handle: Any) -> Any:
    """A workflow's result, letting the time-skipping server jump to its timers.

    While it skips far ahead the test server can end the history long poll
    without the closing event, which the SDK reports as "No completion event
    found"; the workflow is still running, so ask again.
    """
    unlocked = getattr(env, "time_skipping_unlocked", None)
    for _ in range(20):
        try:
            if unlocked is None:
                return await handle.result()
            async with unlocked():
                return await handle.result()
        except RuntimeError as e:
            if "No completion event found" not in str(e):
                raise
    return await handle.result()


@contextlib.asynccontextmanager
async def desk_on(stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    """A desk with its own worker on a fresh task queue; what it started is
    terminated afterwards (`Desk.close`)."""
    async with deal_worker(stack.env.client, database_url, stack.lenders, stack.store) as tq:
        d = Desk(stack, tq)
        try:
            yield d
        finally:
            await d.close()
