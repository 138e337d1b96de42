"""The benchmarks' back office: drives deals by their staff steps, as the demo robot does.

Every staff step is a real `record-*`/`sign-*` Update through `dealflow.client`
(the path the API and the CLI use), every document a real upload (bytes into
the document store, then `record-document`). Where the deal waits for the
lender (decision, disbursement) the driver watches the read model, as a staff
client of `GET /api/deals/{id}/next-status` does (`dealflow.deal_wait`), and
asks the deal's `status` query only when its projected version moves; without
a `database_url` it polls the query every `poll` seconds. `queries` counts
them either way, so their cost is visible.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from temporalio.client import Client

from dealflow import client as deals
from dealflow import rules
from dealflow.config import LenderConfig
from dealflow.deal_wait import Change, ReadModelWatch, next_status
from dealflow.models import (
    Action,
    ActionReceipt,
    Actor,
    DealInput,
    DealPolicy,
    DealStatus,
    DocumentKind,
    Role,
    Stage,
)
from dealflow.samples import (
    dealer_today,
    example_action,
    example_deal,
    funding_documents,
    loan_terms_confirmation,
    sample_documents,
)
from dealflow.storage import db
from dealflow.storage.documents import DocumentStore
from dealflow.uploads import store_and_record

# Staff steps between the disbursement and the follow-up calls, in order.
# The follow-up calls fall due at delivery, so the driver logs them at once, as
# a back office would once they fall due (the default policy's 3 and 30 days
# cannot pass in a benchmark); the deal still chases each call as it falls due.
BENCH_POLICY = DealPolicy(follow_up_first=timedelta(0), follow_up_second=timedelta(0))

AFTER_FUNDING = (
    "record-certificate",
    "record-purchase-tax",
    "record-plate",
    "record-mortgage",
    "record-stock-out",
    "record-settlement",
    "deliver",
)


def actor_for(action: Action) -> Actor:
    role = rules.owner_role(action)
    return Actor(staff_id=f"bench-{role.value}", role=role)


def uploader_for(kind: DocumentKind) -> Actor:
    role = rules.document_uploader(kind)
    return Actor(staff_id=f"bench-{role.value}", role=role)


class Driver:
    def __init__(
        self,
        client: Client,
        store: DocumentStore,
        lenders: dict[str, LenderConfig],
        task_queue: str,
        sim_url: str | None = None,
        poll: float = 0.1,
        database_url: str | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.lenders = lenders
        self.task_queue = task_queue
        self.sim_url = sim_url
        self.poll = poll
        self.queries = 0
        self.updates = 0
        self.latencies: list[float] = []  # seconds per staff Update (uploads included)
        self.today = dealer_today()
        self.deal: DealInput = example_deal()
        self._http: httpx.AsyncClient | None = None
        self._watch = (
            ReadModelWatch(db.make_engine(database_url)) if database_url is not None else None
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def script(self, deal_id: str, script: dict[str, Any]) -> None:
        assert self.sim_url is not None
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30, trust_env=False)
        r = await self._http.put(f"{self.sim_url}/_sim/scripts/{deal_id}", json=script)
        r.raise_for_status()

    async def start(
        self,
        policy: DealPolicy | None = None,
        script: dict[str, Any] | None = None,
        deal_id: str | None = None,
    ) -> str:
        deal_id = deal_id or deals.new_deal_id()
        if script is not None:
            await self.script(deal_id, script)
        inp = deals.start_input(
            deal_id,
            self.deal,
            policy or BENCH_POLICY,
            self.lenders,
            Actor(staff_id="bench-sales", role=Role.SALES),
        )
        await deals.start_deal(self.client, self.task_queue, inp)
        return deal_id

    async def act(self, deal_id: str, action: str, **changes: Any) -> ActionReceipt:
        # The Update alone, as a staff robot that does not show the status
        # would send it; the API's status query after it is the API's cost.
        act = Action(action)
        payload = {**example_action(action, self.today), **changes}
        a, inp = deals.parse_action(action, payload, actor_for(act))
        self.updates += 1
        t0 = time.monotonic()
        try:
            return await deals.act_receipt(self.client, deal_id, a, inp)
        finally:
            self.latencies.append(time.monotonic() - t0)

    async def status(self, deal_id: str) -> DealStatus:
        self.queries += 1
        return await deals.deal_status(self.client, deal_id)

    async def wait(
        self, deal_id: str, pred: Callable[[DealStatus], bool], what: str, limit: float = 120
    ) -> DealStatus:
        if self._watch is not None:
            return await self._watch_until(deal_id, pred, what, limit)
        deadline = time.monotonic() + limit
        while True:
            st = await self.status(deal_id)
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deal {deal_id}: no {what} within {limit:.0f}s (stage {st.stage.value})"
                )
            await asyncio.sleep(self.poll)

    async def _watch_until(
        self, deal_id: str, pred: Callable[[DealStatus], bool], what: str, limit: float
    ) -> DealStatus:
        """`wait` on the read model: a status query at the start and after each
        projected version past the last status read, until `pred` holds."""
        assert self._watch is not None
        deadline = time.monotonic() + limit
        st = await self.status(deal_id)
        while not pred(st):
            awaited = await next_status(
                self._watch,
                deal_id,
                Change(version=st.version),
                deadline - time.monotonic(),
                lambda: self.status(deal_id),
                known=st,
            )
            assert awaited is not None  # no `gone`: only a timeout ends it unchanged
            st = awaited.status
            if not awaited.changed:
                raise TimeoutError(
                    f"deal {deal_id}: no {what} within {limit:.0f}s (stage {st.stage.value})"
                )
        return st

    async def upload_all(self, deal_id: str) -> None:
        await self.upload(deal_id, sample_documents(deal_id, self.deal, self.today))

    async def upload(self, deal_id: str, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            d = dict(doc)
            kind = d.pop("kind")
            self.updates += 1
            t0 = time.monotonic()
            await store_and_record(
                self.client,
                self.store,
                deal_id,
                uploader_for(kind),
                kind=kind.value,
                party=d.pop("party").value,
                file_name=d.pop("file_name"),
                data=d.pop("data"),
                **d,
            )
            self.latencies.append(time.monotonic() - t0)

    async def to_underwriting(self, deal_id: str) -> None:
        """Sales contract, every document, the application: the deal goes to the lender."""
        await self.act(deal_id, "sign-sales-contract")
        await self.upload_all(deal_id)
        await self.act(deal_id, "submit-application")

    async def full_deal(self, policy: DealPolicy | None = None) -> str:
        """One deal from start to COMPLETED; the lender simulator decides and disburses."""
        deal_id = await self.start(policy)
        await self.to_underwriting(deal_id)
        await self.finish(deal_id)
        return deal_id

    async def finish(self, deal_id: str) -> None:
        """From the lender's decision to COMPLETED (the lender approves and disburses)."""
        await self.to_follow_up(deal_id)
        await self.act(deal_id, "record-follow-up", call="day3")
        res = await self.act(deal_id, "record-follow-up", call="day30")
        if res.stage is not Stage.COMPLETED:
            raise RuntimeError(f"deal {deal_id}: ended in {res.stage}")
        # The workflow closes once its last bookkeeping is done.
        await self.client.get_workflow_handle(deals.workflow_id(deal_id)).result()

    async def approved(self, deal_id: str) -> DealStatus:
        """Waits for the lender's decision (from UNDERWRITING); it must be an approval."""
        st = await self.wait(deal_id, lambda s: s.stage is not Stage.UNDERWRITING, "decision")
        if st.stage is not Stage.DOWN_PAYMENT:
            raise RuntimeError(f"deal {deal_id}: expected approval, got {st.stage.value}")
        return st

    async def to_follow_up(self, deal_id: str) -> None:
        """From the lender's decision to FOLLOW_UP: funded and delivered, the calls due."""
        st = await self.approved(deal_id)
        legal = self.lenders[st.lender_id or ""].legal_name
        await self.act(deal_id, "confirm-down-payment", amount=str(st.money.down_payment))
        await self.act(deal_id, "record-invoice")
        await self.act(
            deal_id,
            "record-insurance",
            first_beneficiary=legal,
            cover_amount=str(self.deal.vehicle.price),
        )
        await self.act(deal_id, "record-repayment-account")
        await self.act(deal_id, "confirm-loan-terms", **loan_terms_confirmation(st))
        await self.upload(deal_id, funding_documents(deal_id))
        await self.act(deal_id, "sign-loan-contract")
        await self.wait(deal_id, lambda s: s.stage is not Stage.DISBURSEMENT, "disbursement")
        for action in AFTER_FUNDING:
            if action == "record-mortgage":
                await self.act(deal_id, action, lienholder=legal)
            else:
                await self.act(deal_id, action)


async def bounded(n: int, concurrency: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) with at most `concurrency` at a time; results in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))
