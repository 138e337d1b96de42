"""The chaos driver's back office: drives each deal by its pending actions, like
`dealflow.demo`'s robot, but quiet, concurrent and stubborn.

Every staff action is a Temporal Update with an update id derived from the deal,
the action and the status version it was decided on, so an action retried after
a lost reply (server killed, worker killed, RPC timeout) is applied once.
Transport errors are retried with backoff until the deal's deadline; a refusal
(`RuleError`) means someone got there first: the robot looks again.

Documents go to the stack's S3 store (moto behind a cuttable proxy), through
the API's upload endpoint when it exists, else through
`dealflow.uploads.upload_document`, the same code path the API uses. A failed
upload is recorded and checked: a clear "store unavailable" error and nothing
recorded on the deal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from dealflow import client as deals
from dealflow import rules
from dealflow.config import LenderConfig
from dealflow.models import (
    Action,
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
    loan_terms_confirmation,
    missing_documents,
)
from dealflow.storage.documents import DocumentStore, DocumentStoreError, DocumentStoreUnavailable
from dealflow.uploads import upload_document

T = TypeVar("T")

ACME = "acme-auto-finance"
BETA = "beta-motor-credit"

# Real deadlines (nothing expires under the driver's feet), follow-up calls
# seconds apart instead of 3 and 30 days, so deals complete while we watch.
CHAOS_POLICY = DealPolicy(
    follow_up_first=timedelta(seconds=1),
    follow_up_second=timedelta(seconds=2),
    follow_up_grace=timedelta(minutes=30),
)

RETRYABLE_RPC = {
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNKNOWN",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "ABORTED",
}

# An upload holds its person's slot while its body is read (at most the API's
# 120 s upload deadline) and while the API waits for Temporal to confirm the
# record (up to 120 s during a restart): a clerk waiting for a free slot waits
# that long, and a little more.
UPLOAD_SLOT_PATIENCE_S = 300.0


@dataclass(frozen=True)
class Plan:
    """What one deal is meant to go through and where it must end."""

    name: str
    expect: Stage
    script: dict[str, Any] | None = None
    cancel_at: Stage | None = None
    # The simulator refuses this deal's applications to these lenders with a
    # non-retryable 4xx: the deal must escalate and move on, not retry.
    reject_lenders: tuple[str, ...] = ()


APPROVED = Plan("approved", Stage.COMPLETED)
DECLINED_NEXT = Plan(
    "declined, next lender approves",
    Stage.COMPLETED,
    script={
        "lenders": {
            ACME: [{"decision": "declined", "reasons": [{"code": "DTI_TOO_HIGH", "text": "chaos"}]}]
        }
    },
)
CANCELLED_PAID = Plan("cancelled after down payment", Stage.CANCELLED, cancel_at=Stage.INVOICING)
REJECTED_NEXT = Plan("lender 4xx, next lender approves", Stage.COMPLETED, reject_lenders=(ACME,))
REJECTED_ALL = Plan("4xx from every lender", Stage.DECLINED, reject_lenders=(ACME, BETA))

BASE_MIX = (APPROVED, DECLINED_NEXT, CANCELLED_PAID)


def plan_mix(n: int, extra: tuple[Plan, ...] = ()) -> list[Plan]:
    """`n` plans: the `extra` ones first, then the base mix in turn."""
    plans = list(extra[:n])
    i = 0
    while len(plans) < n:
        plans.append(BASE_MIX[i % len(BASE_MIX)])
        i += 1
    return plans


@dataclass
class DealRun:
    deal_id: str
    plan: Plan
    deal: DealInput = field(default_factory=example_deal)
    final: DealStatus | None = None
    error: str | None = None
    finished_at: float | None = None
    # Upload attempts refused while the store was down, and what the check of
    # each one found wrong (an unclear error, something recorded anyway).
    upload_failures: list[str] = field(default_factory=list)
    upload_problems: list[str] = field(default_factory=list)
    uploads: int = 0  # documents stored and recorded
    upload_attempts: int = 0
    last_stage: Stage | None = None
    # For a deal not closed by the deadline: its stage and last history event.
    stranded: str | None = None


class GaveUp(Exception):
    pass


class Robot:
    def __init__(
        self,
        client: Client,
        store: DocumentStore,
        lenders: dict[str, LenderConfig],
        task_queue: str,
        *,
        api_url: str | None = None,
        jwt_secret: str | None = None,
        log: Callable[[str], None] = print,
        poll: float = 0.5,
    ) -> None:
        self.client = client
        self.store = store
        self.lenders = lenders
        self.task_queue = task_queue
        self.api_url = api_url  # set when the API has the documents endpoint
        self.jwt_secret = jwt_secret
        self.log = log
        self.poll = poll
        self.retries = 0
        self.actions = 0
        self.in_flight = 0  # staff updates sent and not yet answered
        self.unconfirmed = 0  # uploads answered "not confirmed yet, may still be applied"
        self.deadline = float("inf")
        # Longer than the API waits for an action's outcome while Temporal is
        # away (dealflow.client.ACT_OUTCOME_WAIT_SECONDS): a clerk's retry of a
        # request still in flight would race the first one.
        self.http = httpx.AsyncClient(timeout=150, trust_env=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ plumbing

    async def call(
        self,
        what: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        per_try: float = 45,
        **kwargs: Any,
    ) -> T:
        """`fn(*args)` until it answers: transport errors and timeouts are retried."""
        delay = 0.25
        while True:
            # Never past the deadline: a call that cannot answer (a stuck deal's
            # result) must not hold the scenario after it.
            left = max(1.0, self.deadline - time.monotonic())
            try:
                return await asyncio.wait_for(fn(*args, **kwargs), min(per_try, left))
            except RPCError as e:
                # "Workflow Task in failed state": the deal's last workflow task
                # attempt failed (its worker was killed); the next one is on its way.
                if (
                    e.status.name not in RETRYABLE_RPC
                    and "Workflow Task in failed state" not in str(e)
                ):
                    raise
                why = f"RPC {e.status.name}"
            except (
                TimeoutError,
                WorkflowUpdateRPCTimeoutOrCancelledError,
                httpx.HTTPError,
                deals.WorkflowStuck,
            ) as e:
                # Stuck: kept trying until the deadline, where the deal is
                # reported with its last event if it never comes back.
                why = type(e).__name__
            except RuntimeError as e:  # deals.deal_status: the query failed (no worker yet)
                if isinstance(e, rules.RuleError):
                    raise
                why = f"RuntimeError: {str(e)[:80]}"
            self.retries += 1
            if time.monotonic() > self.deadline:
                raise GaveUp(f"{what}: still failing at the deadline ({why})")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 3.0)

    def actor(self, action: Action) -> Actor:
        return Actor(
            staff_id=f"chaos-{sorted(rules.ACTION_ROLES[action])[0].value}",
            role=sorted(rules.ACTION_ROLES[action])[0],
        )

    def uploader(self, kind: DocumentKind) -> Actor:
        """The customer's documents as before; a funding document by its own team."""
        if not rules.is_funding_document(kind):
            return self.actor(Action.RECORD_DOCUMENT)
        role = rules.document_uploader(kind)
        return Actor(staff_id=f"chaos-{role.value}", role=role)

    # ------------------------------------------------------------------ a deal

    async def start(self, run: DealRun) -> None:
        inp = deals.start_input(
            run.deal_id,
            run.deal,
            CHAOS_POLICY,
            self.lenders,
            Actor(staff_id="chaos-sales", role=Role.SALES),
        )

        async def start_once() -> None:
            # Already started: our earlier try got through before its reply was lost.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await deals.start_deal(self.client, self.task_queue, inp)

        await self.call("start", start_once)

    async def status(self, run: DealRun) -> DealStatus:
        return await self.call("status", deals.deal_status, self.client, run.deal_id)

    async def result(self, run: DealRun) -> DealStatus:
        return await self.call("result", deals.deal_result, self.client, run.deal_id, per_try=120)

    async def drive(self, run: DealRun) -> None:
        """Start the deal and do its back-office steps until it closes."""
        try:
            await self.start(run)
            st = await self.status(run)
            refusals = 0
            while not st.stage.terminal:
                if time.monotonic() > self.deadline:
                    raise GaveUp(f"deal still in {st.stage.value} at the deadline")
                run.last_stage = st.stage
                try:
                    nxt = await self.step(run, st)
                    refusals = 0
                except rules.RuleError as e:
                    refusals += 1
                    if refusals > 30:
                        raise GaveUp(f"refused 30 times in {st.stage.value}: {e.message}") from e
                    nxt = None
                if nxt is None:
                    await asyncio.sleep(self.poll * (0.75 + random.random() / 2))
                    st = await self.status(run)
                else:
                    st = nxt
            run.last_stage = st.stage
            run.final = await self.result(run)
            run.finished_at = time.monotonic()
        except GaveUp as e:
            run.error = str(e)
        except WorkflowFailureError as e:
            run.error = f"workflow failed: {e.cause or e}"
        except Exception as e:  # report, never crash the whole driver
            run.error = f"{type(e).__name__}: {e}"

    async def act(self, run: DealRun, st: DealStatus, action: str, **changes: Any) -> DealStatus:
        act = Action(action)
        payload = {**example_action(action, dealer_today()), **changes}
        a, inp = deals.parse_action(action, payload, self.actor(act))
        update_id = deals.decision_update_id("chaos", st, action)
        self.in_flight += 1
        try:
            res = await self.call(
                action, deals.act, self.client, run.deal_id, a, inp, update_id=update_id
            )
        finally:
            self.in_flight -= 1
        self.actions += 1
        return res.status

    async def step(self, run: DealRun, st: DealStatus) -> DealStatus | None:
        """One back-office step; the new status, or None when waiting on others."""
        if run.plan.cancel_at is not None and st.stage is run.plan.cancel_at:
            return await self.act(run, st, "cancel", reason="customer changed their mind (chaos)")
        if not st.pending:
            return None
        p = st.pending[0]
        legal = next(
            (lc.legal_name for lid, lc in self.lenders.items() if lid == st.lender_id), None
        )
        match p.action:
            case "record-document":
                return await self.upload_one(run, st)
            case "accept-counter-offer":
                sub = st.submissions[-1]
                assert sub.current is not None
                return await self.act(
                    run,
                    st,
                    p.action,
                    application_ref=sub.application_ref,
                    decision_seq=sub.current.decision_seq,
                )
            case "confirm-down-payment":
                return await self.act(run, st, p.action, amount=str(st.money.down_payment))
            case "confirm-loan-terms":
                return await self.act(run, st, p.action, **loan_terms_confirmation(st))
            case "record-insurance":
                return await self.act(
                    run,
                    st,
                    p.action,
                    first_beneficiary=legal,
                    cover_amount=str(run.deal.vehicle.price),
                )
            case "record-mortgage":
                return await self.act(run, st, p.action, lienholder=legal)
            case "record-follow-up":
                if p.due is not None and p.due > datetime.now(UTC):
                    return None
                return await self.act(run, st, p.action, call=p.what.split()[0])
            case a if a.startswith("lender-"):
                return None
            case _:
                return await self.act(run, st, p.action)

    # ------------------------------------------------------------------ documents

    async def upload_one(self, run: DealRun, st: DealStatus) -> DealStatus | None:
        docs = missing_documents(run.deal_id, run.deal, st, dealer_today())
        if not docs:
            return None
        d = dict(docs[0])
        uploader = self.uploader(d["kind"])
        kind, party = d.pop("kind").value, d.pop("party").value
        file_name, data = d.pop("file_name"), d.pop("data")
        run.upload_attempts += 1
        try:
            if self.api_url:
                await self._upload_http(run, uploader, kind, party, file_name, data, d)
            else:
                await self.call(
                    "upload",
                    upload_document,
                    self.client,
                    self.store,
                    run.deal_id,
                    uploader,
                    kind=kind,
                    party=party,
                    file_name=file_name,
                    data=data,
                    policy=CHAOS_POLICY,
                    **d,
                )
        except (DocumentStoreError, _UploadRefused) as e:
            await self._check_failed_upload(run, kind, party, e)
            # Back off like a clerk pressing "upload" again, not a tight loop.
            await asyncio.sleep(min(0.5 * 2 ** min(len(run.upload_failures), 4), 5.0))
            return None
        run.uploads += 1
        return await self.status(run)

    async def _upload_http(
        self,
        run: DealRun,
        uploader: Actor,
        kind: str,
        party: str,
        file_name: str,
        data: bytes,
        extra: dict[str, Any],
    ) -> None:
        import jwt

        now = int(time.time())
        claims = {"sub": uploader.staff_id, "roles": [uploader.role.value], "iat": now}
        token = jwt.encode(
            {**claims, "exp": now + 600},
            self.jwt_secret or "",
            algorithm="HS256",
        )
        form = {"kind": kind, "party": party}
        form.update({k: str(v) for k, v in extra.items() if v is not None})

        async def post() -> httpx.Response:
            return await self.http.post(
                f"{self.api_url}/api/deals/{run.deal_id}/documents",
                headers={"Authorization": f"Bearer {token}"},
                data=form,
                files={"file": (file_name, data)},
            )

        # As long as the HTTP client waits (see __init__): a second upload while
        # the first is still in flight would race it.
        resp = await self.call("upload", post, per_try=150)
        waited = 0.0
        while resp.status_code == 429 and waited < UPLOAD_SLOT_PATIENCE_S:
            # The person has as many uploads in progress as one may (other
            # deals of the same clerk): wait as the answer says, then send again.
            pause = min(float(resp.headers.get("Retry-After", "1")), 5.0)
            await asyncio.sleep(pause)
            waited += pause
            resp = await self.call("upload", post, per_try=150)
        if resp.status_code == 201:
            return
        if resp.status_code == 503 and "may still be applied" in resp.text:
            # Temporal had not confirmed the record-document update in time: as
            # the answer says, the clerk reads the deal before uploading again.
            self.unconfirmed += 1
            return
        if resp.status_code == 409 and await self._on_file(run, data):
            # The transport retried a post whose first answer was lost, and the
            # deal moved on with the file it recorded (the last funding
            # document sends it to DISBURSEMENT): the upload was applied.
            return
        if resp.status_code in (502, 503, 504):
            raise _UploadRefused(resp.status_code, resp.text[:300])
        if resp.status_code >= 500:
            # A crash answer, not the clear "store unavailable" the contract wants.
            raise _UploadRefused(resp.status_code, resp.text[:300], clear=False)
        raise RuntimeError(f"upload answered {resp.status_code}: {resp.text[:300]}")

    async def _on_file(self, run: DealRun, data: bytes) -> bool:
        sha256 = hashlib.sha256(data).hexdigest()
        return any(doc.sha256 == sha256 for doc in (await self.status(run)).documents)

    async def _check_failed_upload(
        self, run: DealRun, kind: str, party: str, err: Exception
    ) -> None:
        """A refused upload must say why clearly and leave nothing recorded."""
        run.upload_failures.append(f"{kind}/{party}: {err}")
        if isinstance(err, _UploadRefused):
            if not err.clear:
                run.upload_problems.append(
                    f"{kind}/{party}: refused upload answered {err.status}, not a clear 503: "
                    f"{err.body[:160]}"
                )
        elif not isinstance(err, DocumentStoreUnavailable):
            run.upload_problems.append(
                f"{kind}/{party}: refused upload raised {type(err).__name__}, not "
                f"DocumentStoreUnavailable: {err}"
            )
        st = await self.status(run)
        item = next(
            (c for c in st.checklist if c.kind.value == kind and c.party.value == party), None
        )
        if item is not None and item.satisfied:
            run.upload_problems.append(
                f"{kind}/{party}: recorded on the deal although the upload answered an error "
                f"({str(err)[:200]})"
            )


class _UploadRefused(Exception):
    def __init__(self, status: int, body: str, clear: bool = True) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.clear = clear
