"""DealWorkflow: one car-finance deal, from sales contract to follow-up calls.

Shape of the code:
- Facts arrive through staff Updates and lender signals. Their handlers record
  the fact and call `_advance()`, which moves the stage as far as the facts
  allow. Handlers are synchronous, so none is ever left unfinished.
- The run loop owns time and side effects: it starts the activities a stage
  owes (submit to a lender, request disbursement, withdraw, compensate) as
  background tasks, and sleeps until the next reminder, escalation or deadline.
- `_set_stage()` is the only writer of the stage. It records the transition,
  upserts the search attributes and projects the read model, so the query,
  the visibility index and the database cannot disagree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from dealflow import names, rules
    from dealflow.models import (
        SYSTEM_ACTOR,
        AcceptCounterOfferInput,
        Action,
        ActionInput,
        ActionReceipt,
        ActionRecord,
        AnswerStipulationInput,
        ApplicationPackage,
        CancelInput,
        ClearStipulationInput,
        Compensation,
        CompensationInput,
        ConfirmDownPaymentInput,
        ConfirmLoanTermsInput,
        DealState,
        DealStatus,
        Decision,
        DecisionRecord,
        DeclineCounterOfferInput,
        DeliverInput,
        Disbursement,
        DisbursementRequestInput,
        DocumentKind,
        DocumentMetadataInput,
        DocumentRecord,
        LenderEventInput,
        LoanSchedule,
        MoneySummary,
        Notice,
        NotificationInput,
        PackagedFundingDocument,
        ProjectionInput,
        Reason,
        ReconcileDisbursementInput,
        RecordCertificateInput,
        RecordDocumentInput,
        RecordFollowUpInput,
        RecordInsuranceInput,
        RecordInvoiceInput,
        RecordMortgageInput,
        RecordPlateInput,
        RecordPurchaseTaxInput,
        RecordRepaymentAccountInput,
        RecordSettlementInput,
        RecordStockOutInput,
        RecordUnwindStepInput,
        RejectStipulationDocumentInput,
        RepaymentInput,
        RepaymentResult,
        RetryDisbursementInput,
        Role,
        SendApplicationInput,
        SignAndSendApplicationInput,
        SignLoanContractInput,
        SignSalesContractInput,
        Stage,
        StartDealInput,
        StipulationAnswer,
        StipulationChange,
        StipulationItem,
        StipulationStatus,
        Submission,
        SubmitApplicationInput,
        SubmitToLenderInput,
        SubmitToLenderResult,
        Transition,
        UnsignedApplicationPackage,
        UnwindInput,
        WaiveStipulationInput,
        WithdrawInput,
        deal_closed,
        fmt_money,
        lender_decision_facts,
        money,
        stage_changes,
    )

DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
LENDER_ID = SearchAttributeKey.for_keyword("LenderId")
DEALER_ID = SearchAttributeKey.for_keyword("DealerId")

# Timeouts decide how fast a deal recovers when a worker dies mid-call: the
# server only notices through a timeout. Lender calls heartbeat every second
# while they wait for the lender, so a dead worker is noticed after 2 s and the
# call retried elsewhere half a second later, while a slow but live lender
# still gets 30 s (`make bench` measures the recovery; the README has the figure).
# Transient failures (5xx, timeouts, connection errors) retry with backoff for
# as long as it takes; a lender's 4xx is a verdict, not a glitch, and is raised
# as non-retryable "LenderRejected".
LENDER_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "heartbeat_timeout": timedelta(seconds=2),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        maximum_interval=timedelta(minutes=2),
        non_retryable_error_types=["LenderRejected"],
    ),
}
# Bookkeeping of deals started before it became local (LOCAL_BOOKKEEPING below):
# a write takes milliseconds, so 5 s bounds the wait after a worker dies mid-write.
BOOKKEEPING: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}

# Deals started with it write their bookkeeping (read model, notification
# outbox, compensation records, document metadata) as local activities: each is
# a short idempotent write to DealFlow's own database, keyed by deal and version
# or key, so it needs no task queue, no server round trip and no events of its
# own beyond one marker. Lender calls stay regular activities: they wait on a
# remote party and heartbeat. A workflow task is answered (and with it the
# staff update that caused the write) only when its local activities are done,
# so an attempt gets 2 s — the writes take milliseconds; a database that hangs
# is down — and a failed write is retried on a durable timer (backoff 1 s
# doubling to 30 s, no end), not inside the task: an outage of minutes holds
# no workflow task open and no update longer than one attempt, and every
# write lands once the database is back (idempotent: keyed by deal and
# version, or by its own key).
LOCAL_BOOKKEEPING_ID = "local-bookkeeping"
LOCAL_BOOKKEEPING: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=2),
    # Below the first backoff: every retry waits on a timer.
    "local_retry_threshold": timedelta(milliseconds=500),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}

# workflow.patched ids: behaviour changes that deals already running must not see.
WITHDRAW_CONDITIONAL = "withdraw-superseded-conditional-application"

# Deals started before the application package was recorded in history
# signed it inside the lender call (see _submit_fn).
PACKAGE_IN_HISTORY = "application-package-in-history"

# Deals started before links were signed at each send recorded the package
# with its links, valid 7 days from preparing, and every retry sent those
# same links again: a retry days later, or a lender taking its full 15 days,
# found them expired.
FRESH_DOCUMENT_LINKS = "fresh-document-links"
# Links outlive the underwriting deadline by this much: a lender deciding at
# the last hour still opens the documents, and its webhook may come late.
DOCUMENT_LINK_MARGIN = timedelta(days=2)

# Deals started before it sent one read-model projection per change.
ONE_PROJECTION_IN_FLIGHT = "one-projection-in-flight"

# Deals started before a projection was owed per activation: with one
# projection in flight, whether an update's projection was sent at once
# depended on whether the previous one had completed, and after a timed-out
# workflow task the replay applies the update before that completion (a
# nondeterminism error that wedged deals: tests/histories/test_replay.py).
PROJECTION_PER_ACTIVATION = "projection-per-activation"

# Deals started before a lender's amount was bounded: any approved amount was
# applied, and one below the request silently raised the down payment.
BOUNDED_LENDER_AMOUNTS = "bounded-lender-amounts"

# Deals started before a webhook id was one lender's: any lender could mark
# another's id as applied and so have its genuine event dropped.
LENDER_SCOPED_WEBHOOKS = "lender-scoped-webhook-ids"

# Deals started before a refused compensation was recorded: a withdrawal the
# lender refused failed its background task, which was started again at once,
# for ever; at close it failed the whole workflow before the vehicle was released.
REFUSED_COMPENSATIONS = "refused-compensations-recorded"

# Runs started before dates were the dealer's: "today" in the date rules
# (statement coverage, insurance dates) was the UTC date, a day behind Beijing
# between 00:00 and 08:00.
DEALER_DATES = "dealer-dates"

# Deals started before a stipulation named again needed a new document: the
# old one answered it at once and the same package went back, without end.
STIPULATION_ROUNDS = "stipulation-named-again-needs-new-document"

# Deals started before a lender's disbursement answer was matched to its
# request: a late answer to an earlier attempt was applied to the newest one
# (a late "failed" sent another request: a second payout).
DISBURSEMENT_REQUEST_IDS = "disbursement-request-ids"

# Deals started before the approved terms reached the loan contract: an
# approval without a rate (or with any rate) was applied, and the contract was
# signed without the customer confirming the rate and repayment schedule.
APPROVED_TERMS = "approved-terms-in-loan-contract"

# Deals started before a follow-up call was taken only from its due date: the
# day-30 call could be logged on day 4 and close the deal.
FOLLOW_UP_FROM_DUE_DATE = "follow-up-from-due-date"

# Deals whose conditional decision was applied before conditions had a
# lifecycle keep the legacy list (`DealState.stipulations`): a document
# answers each, nothing else does, and the resubmission lists the codes only.
# Their histories have no staff steps on conditions to replay, and the
# decision's handler wrote no items, so they must not start now. From the
# first conditional decision after it, each condition is an item of its
# submission (open -> received -> cleared / waived, or rejected), credit
# answers, clears, waives or rejects, and the package maps the answers.
STIPULATION_LIFECYCLE = "stipulation-lifecycle"

# Deals started before the funding package moved from LOAN_CONTRACT to
# DISBURSEMENT on the signature and the repayment account alone, and their
# disbursement request carried reference numbers only. From it on, the loan
# contract also waits for the funding documents (signed loan contract,
# insurance policy page, vehicle invoice: dealflow/rules/funding.py) and the
# request carries them, each by hash with a link signed at every attempt.
FUNDING_PACKAGE = "funding-package"
# Deals started before a funded deal could be unwound registered no step to
# repay the lender, release the mortgage or reverse the invoice, and had no
# UNWINDING stage: they keep unwinding only a stalled disbursement. From it,
# those steps are registered as their facts are recorded (so a cancellation
# before funding also reverses an issued invoice), and `unwind` after funding
# undoes every step newest first in UNWINDING.
UNWIND_AFTER_FUNDING = "unwind-after-funding"

OnDeadline = Literal["expire", "cancel", "next_lender", "complete"]


@dataclass(frozen=True)
class Clock:
    """The timers of one stage, measured from when the stage was entered."""

    reminder_every: timedelta | None = None
    escalate_after: timedelta | None = None
    deadline: timedelta | None = None
    on_deadline: OnDeadline | None = None


@workflow.defn
class DealWorkflow:
    @workflow.init
    def __init__(self, inp: StartDealInput) -> None:
        self.inp = inp
        self.deal = inp.deal
        self.policy = inp.policy
        # A continued run resumes from the state the previous run carried over.
        self.state = inp.state or DealState(stage_entered_at=workflow.now())
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._projection_owed = False
        self._projection_queued = False
        # Decided once per run: a query may not ask `patched`. First, as
        # `_patched` reads it.
        self._local_bookkeeping = workflow.patched(LOCAL_BOOKKEEPING_ID)
        self._dealer_dates = self._patched(DEALER_DATES)
        self._approved_terms = self._patched(APPROVED_TERMS)
        self._follow_ups_from_due_date = self._patched(FOLLOW_UP_FROM_DUE_DATE)
        self._unwind_after_funding = self._patched(UNWIND_AFTER_FUNDING)
        self._funding_package = self._patched(FUNDING_PACKAGE)
        if inp.state is None:
            # Recorded here, not in run(): an update that arrives with the start
            # runs its handler before run() begins and must find the deal started.
            self.state.transitions.append(
                Transition(
                    at=workflow.now(),
                    from_stage=None,
                    to_stage=Stage.CONTRACT,
                    actor=f"{inp.created_by.staff_id}/{inp.created_by.role.value}",
                    reason="deal started",
                )
            )

    def _patched(self, patch_id: str) -> bool:
        """Whether this run takes the change `patch_id`, one older than local
        bookkeeping. A run started with local bookkeeping was started by code
        that had every older change, so it takes them all and records one
        marker, not one per change (each marker also upserts the
        TemporalChangeVersion search attribute: two events a change, and a
        start task long enough that the server would keep the empty task of
        an update rejected right after it). Older runs ask as they always did."""
        return self._local_bookkeeping or workflow.patched(patch_id)

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: StartDealInput) -> DealStatus:
        if inp.state is None:
            self._upsert_search_attributes()
            self._project()
        while not self.state.stage.terminal:
            self._kick_owed_work()
            if self._should_continue_as_new():
                await self._continue_as_new()
            await self._wait_in_stage()
        await self._close()
        return self._status()

    async def _wait_in_stage(self) -> None:
        """Sleep until the stage changes, work is owed, or a timer is due."""
        entry = self.state.stage_entry
        due, fire = self._next_timer()
        timeout = None if due is None else max(due - workflow.now(), timedelta(0))
        if timeout == timedelta(0) and fire is not None:
            await fire()
            return
        try:
            await workflow.wait_condition(
                lambda: (
                    self.state.stage_entry != entry
                    or self._owed_work_pending()
                    or self._should_continue_as_new()
                ),
                timeout=timeout,
            )
        except TimeoutError:
            if self.state.stage_entry != entry:
                return
            # Facts recorded while we slept may have changed what is due (a
            # follow-up call recorded before it fell due): ask again.
            due, fire = self._next_timer()
            if fire is not None and due is not None and due <= workflow.now():
                await fire()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self.policy.max_history_events
        )

    async def _continue_as_new(self) -> None:
        # Let every handler and side effect settle: the next run must not
        # lose a half-applied update or re-run an activity that succeeded.
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and not self._tasks)
        self.state.continued_as_new += 1
        workflow.continue_as_new(
            StartDealInput(
                deal_id=self.inp.deal_id,
                deal=self.deal,
                policy=self.policy,
                lenders=self.inp.lenders,
                created_by=self.inp.created_by,
                state=self.state,
            )
        )

    async def _close(self) -> None:
        if self.state.stage in (Stage.CANCELLED, Stage.EXPIRED, Stage.DECLINED):
            # Undo what was done, newest first; each step is idempotent.
            await workflow.wait_condition(lambda: not self._tasks)
            for comp in reversed(self.state.compensations):
                if comp.status in ("pending", "running"):
                    await self._compensate(comp)
        if self.state.stage is Stage.DECLINED:
            reasons = "; ".join(f"{r.code}: {r.text}" for r in self.state.adverse_action_reasons)
            self._notify(
                "adverse_action",
                f"adverse-action notice: {reasons or 'no reasons given'}",
                [Role.CREDIT, Role.SALES],
            )
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and not self._tasks)

    # ------------------------------------------------------------------ timers

    def _clock(self) -> Clock:
        p = self.policy
        match self.state.stage:
            case Stage.CONTRACT:
                return Clock(deadline=p.contract_deadline, on_deadline="expire")
            case Stage.DOCUMENTS:
                return Clock(
                    reminder_every=p.documents_reminder_every,
                    deadline=p.documents_deadline,
                    on_deadline="expire",
                )
            case Stage.APPLICATION:
                return Clock(deadline=p.application_deadline, on_deadline="expire")
            case Stage.UNDERWRITING:
                return Clock(
                    escalate_after=p.underwriting_escalate_after,
                    deadline=p.underwriting_timeout,
                    on_deadline="next_lender",
                )
            case Stage.DOWN_PAYMENT:
                return Clock(deadline=p.down_payment_deadline, on_deadline="cancel")
            case Stage.INVOICING:
                return Clock(escalate_after=p.invoicing_escalate_after)
            case Stage.INSURANCE:
                return Clock(escalate_after=p.insurance_escalate_after)
            case Stage.LOAN_CONTRACT:
                return Clock(escalate_after=p.loan_contract_escalate_after)
            case Stage.DISBURSEMENT:
                return Clock(escalate_after=p.disbursement_escalate_after)
            case Stage.REGISTRATION:
                return Clock(
                    reminder_every=p.registration_reminder_every,
                    escalate_after=p.registration_escalate_after,
                )
            case Stage.DELIVERY:
                return Clock(escalate_after=p.delivery_escalate_after)
            case Stage.UNWINDING:
                return Clock(escalate_after=p.unwinding_escalate_after)
            case Stage.FOLLOW_UP:
                return Clock(
                    deadline=p.follow_up_second + p.follow_up_grace, on_deadline="complete"
                )
            case _:
                return Clock()

    def _next_timer(self) -> tuple[datetime | None, Callable[[], Awaitable[None]] | None]:
        """The earliest timer of the current stage and what to do when it fires."""
        state, clock, start = self.state, self._clock(), self.state.stage_entered_at
        candidates: list[tuple[datetime, Callable[[], Awaitable[None]]]] = []
        deadline = start + clock.deadline if clock.deadline else None
        if clock.reminder_every:
            at = start + clock.reminder_every * (state.reminders_sent + 1)
            if deadline is None or at < deadline:
                candidates.append((at, self._remind))
        if clock.escalate_after and not state.escalated:
            candidates.append((start + clock.escalate_after, self._escalate))
        if deadline is not None:
            candidates.append((deadline, self._deadline))
        if state.stage is Stage.FOLLOW_UP and state.delivered_at is not None:
            for call, offset in (
                ("day3", self.policy.follow_up_first),
                ("day30", self.policy.follow_up_second),
            ):
                if call not in state.follow_ups and call not in state.follow_ups_reminded:
                    candidates.append((state.delivered_at + offset, self._follow_up_due(call)))
        if not candidates:
            return None, None
        at, fire = min(candidates, key=lambda c: c[0])
        return at, fire

    async def _remind(self) -> None:
        self.state.reminders_sent += 1
        self._notify("reminder", f"reminder {self.state.reminders_sent}: " + self._pending_text())

    async def _escalate(self) -> None:
        self.state.escalated = True
        since = workflow.now() - self.state.stage_entered_at
        self._notify(
            "escalation",
            f"escalated: {self.state.stage.value} open for {since.days} days; "
            + self._pending_text(),
            # The lender's money is finance's to chase, whoever waits for it.
            extra_roles=[Role.FINANCE, Role.ADMIN]
            if self.state.stage in (Stage.DISBURSEMENT, Stage.UNWINDING)
            else [Role.ADMIN],
        )

    def _follow_up_due(self, call: str) -> Callable[[], Awaitable[None]]:
        async def fire() -> None:
            self.state.follow_ups_reminded.append(call)
            self._notify("follow_up_due", f"the {call} follow-up call is due", [Role.SALES])

        return fire

    async def _deadline(self) -> None:
        clock, stage = self._clock(), self.state.stage
        days = clock.deadline.days if clock.deadline else 0
        match clock.on_deadline:
            case "expire":
                reason = f"no progress in {stage.value} within {days} days"
                self.state.outcome_reason = reason
                self._set_stage(Stage.EXPIRED, reason)
            case "cancel":
                reason = f"down payment not received within {days} days"
                self.state.outcome_reason = reason
                self._set_stage(Stage.CANCELLED, reason)
            case "next_lender":
                sub = self._current_submission()
                what = "counter-offer not answered" if self._open_counter() else "no decision"
                if sub is not None:
                    self._withdraw(sub, f"{what} within {days} days")
                self.state.adverse_action_reasons.append(
                    Reason(
                        code="LENDER_NO_RESPONSE" if what == "no decision" else "COUNTER_LAPSED",
                        text=f"{sub.lender_id if sub else 'lender'}: {what} within {days} days",
                    )
                )
                self._route_to_next_lender(f"{what} within {days} days")
            case "complete":
                missed = [c for c in ("day3", "day30") if c not in self.state.follow_ups]
                self.state.follow_ups_missed = missed
                if missed:
                    self._notify(
                        "escalation",
                        "follow-up calls missed: " + ", ".join(missed),
                        [Role.SALES, Role.ADMIN],
                    )
                self._set_stage(Stage.COMPLETED, "follow-up window closed")
            case None:
                pass

    # ------------------------------------------------------------------ side effects

    def _owed_work(self) -> dict[str, Callable[[], Awaitable[None]]]:
        work: dict[str, Callable[[], Awaitable[None]]] = {}
        for sub in self.state.submissions:
            if sub.status == "sending":
                work[f"submit:{sub.submission_no}"] = self._submit_fn(sub)
        for d in self.state.disbursements:
            if d.status == "requesting":
                work[f"disburse:{d.attempt}"] = self._disburse_fn(d)
        for comp in self.state.compensations:
            if comp.status == "running" and not self.state.stage.terminal:
                work[f"compensate:{comp.key}"] = self._compensate_fn(comp)
        return work

    def _owed_work_pending(self) -> bool:
        return any(k not in self._tasks for k in self._owed_work())

    def _kick_owed_work(self) -> None:
        for key, fn in self._owed_work().items():
            if key not in self._tasks:
                self._spawn(key, fn())

    def _spawn(self, key: str, coro: Awaitable[None]) -> None:
        async def runner() -> None:
            try:
                await coro
            except ActivityError as e:
                # A background step that fails says so to a person; it never
                # fails silently and is never started again by itself.
                if not self._patched(REFUSED_COMPENSATIONS):
                    raise
                self._notify(
                    "escalation", f"background step {key} failed: {_cause(e)}", [Role.ADMIN]
                )
            finally:
                self._tasks.pop(key, None)

        self._tasks[key] = asyncio.ensure_future(runner())

    def _submit_fn(self, sub: Submission) -> Callable[[], Awaitable[None]]:
        async def submit() -> None:
            try:
                result = await self._send_to_lender(sub)
            except ActivityError as e:
                self._submission_refused(sub, _cause(e))
                return
            self._submission_acknowledged(sub, result)

        return submit

    async def _send_to_lender(self, sub: Submission) -> SubmitToLenderResult:
        request = SubmitToLenderInput(
            deal_id=self.inp.deal_id,
            lender_id=sub.lender_id,
            submission_no=sub.submission_no,
            deal=self.deal,
            documents=self.state.documents,
            stipulations_met=[st.code for st in self.state.stipulations],
        )
        if self.state.stipulation_items:
            self._answer_conditions(request)
        if self._patched(FRESH_DOCUMENT_LINKS):
            # History keeps storage keys and hashes, never a link: the activity
            # signs the links at every attempt, to the same absolute end.
            return await workflow.execute_activity(
                names.SIGN_AND_SEND_APPLICATION,
                SignAndSendApplicationInput(
                    deal_id=self.inp.deal_id,
                    lender_id=sub.lender_id,
                    submission_no=sub.submission_no,
                    package=UnsignedApplicationPackage.for_submission(request),
                    links_expire_at=workflow.now()
                    + self.policy.underwriting_timeout
                    + DOCUMENT_LINK_MARGIN,
                ),
                result_type=SubmitToLenderResult,
                **LENDER_CALL,
            )
        if not self._patched(PACKAGE_IN_HISTORY):
            return await workflow.execute_activity(
                names.SUBMIT_APPLICATION,
                request,
                result_type=SubmitToLenderResult,
                **LENDER_CALL,
            )
        # The package holds presigned links, new on every signing. Built once
        # and recorded in history, so every retry of the send carries the same
        # bytes under the same Idempotency-Key.
        package: ApplicationPackage = await workflow.execute_activity(
            names.PREPARE_APPLICATION,
            request,
            result_type=ApplicationPackage,
            **BOOKKEEPING,
        )
        return await workflow.execute_activity(
            names.SEND_APPLICATION,
            SendApplicationInput(
                deal_id=self.inp.deal_id,
                lender_id=sub.lender_id,
                submission_no=sub.submission_no,
                package=package,
            ),
            result_type=SubmitToLenderResult,
            **LENDER_CALL,
        )

    def _answer_conditions(self, request: SubmitToLenderInput) -> None:
        """What a submission tells the lender of its conditions: which
        document or note answers which, which were waived and why. A document
        credit rejected goes to no lender."""
        items = self.state.stipulation_items
        answered = [item for item in items if item.answered_in == request.submission_no]
        rejected = {doc_id for item in items for doc_id in item.rejected_doc_ids}
        documents = {d.doc_id: d for d in self.state.documents}
        request.documents = [d for d in self.state.documents if d.doc_id not in rejected]
        request.stipulations_met = [i.code for i in answered if i.status != "waived"]
        request.stipulations_waived = [i.code for i in answered if i.status == "waived"]
        request.stipulation_answers = [
            StipulationAnswer(
                code=item.code,
                description=item.description,
                kind=item.kind,
                status="waived"
                if item.status == "waived"
                else "cleared"
                if item.status == "cleared"
                else "received",
                doc_id=item.doc_id,
                sha256=documents[item.doc_id].sha256 if item.doc_id in documents else None,
                note=item.note,
                reason=item.reason if item.status == "waived" else None,
            )
            for item in answered
        ]

    def _submission_refused(self, sub: Submission, error: str) -> None:
        sub.status = "rejected"
        sub.error = error
        self._notify(
            "escalation",
            f"{sub.lender_id} rejected submission {sub.submission_no}: {error}",
            [Role.CREDIT, Role.ADMIN],
        )
        self.state.adverse_action_reasons.append(
            Reason(code="SUBMISSION_REJECTED", text=f"{sub.lender_id}: {error}")
        )
        if sub is self._current_submission() and self.state.stage is Stage.UNDERWRITING:
            self._route_to_next_lender(f"{sub.lender_id} rejected the submission")

    def _submission_acknowledged(self, sub: Submission, result: SubmitToLenderResult) -> None:
        sub.application_ref = result.application_ref
        sub.submitted_at = workflow.now()
        # Given up on while our submit call was still out (the lender's time
        # ran out): withdraw what the lender now holds, right away.
        withdrawing = sub.status == "withdrawing"
        sub.status = "withdrawing" if withdrawing else "submitted"
        detail = {
            "lender_id": sub.lender_id,
            "application_ref": result.application_ref,
            "submission_no": str(sub.submission_no),
        }
        if withdrawing:
            detail["reason"] = "no longer wanted when the lender acknowledged it"
        self.state.compensations.append(
            Compensation(
                kind="withdraw_application",
                key=f"{self.inp.deal_id}:withdraw:{sub.submission_no}",
                registered_at=workflow.now(),
                status="running" if withdrawing and not self.state.stage.terminal else "pending",
                detail=detail,
            )
        )
        self._project()
        # A decision may have raced our own submit call's reply.
        waiting, self.state.unmatched_events = self.state.unmatched_events, []
        for event in waiting:
            self._apply_lender_event(event)

    def _disburse_fn(self, d: Disbursement) -> Callable[[], Awaitable[None]]:
        async def disburse() -> None:
            sub = self._approved_submission()
            assert sub is not None and sub.application_ref is not None
            view = self._view()
            assert (
                self.state.loan_contract and self.state.insurance and self.state.repayment_account
            )
            request = DisbursementRequestInput(
                deal_id=self.inp.deal_id,
                lender_id=sub.lender_id,
                application_ref=sub.application_ref,
                attempt=d.attempt,
                request_id=rules.disbursement_request_id(self.inp.deal_id, d.attempt),
                amount=view.financed_amount,
                loan_contract_no=self.state.loan_contract.contract_no,
                insurance_policy_no=self.state.insurance.policy_no,
                first_beneficiary=self.state.insurance.first_beneficiary,
                repayment_bank=self.state.repayment_account.bank_name,
                mortgage_registration_no=self.state.mortgage.registration_no
                if self.state.mortgage
                else None,
            )
            if self._funding_package:
                self._attach_funding_package(request, d)
            try:
                await workflow.execute_activity(names.REQUEST_DISBURSEMENT, request, **LENDER_CALL)
            except ActivityError as e:
                d.status = "error"
                d.failure_reason = _cause(e)
                self._notify(
                    "escalation",
                    f"disbursement request {d.attempt} rejected: {d.failure_reason}",
                    [Role.CREDIT, Role.ADMIN],
                )
                return
            if d.status == "requesting":
                d.status = "requested"
                d.requested_at = workflow.now()

        return disburse

    def _attach_funding_package(self, request: DisbursementRequestInput, d: Disbursement) -> None:
        """The funding documents as this attempt sends them: the newest of each
        kind, by storage key and hash (history holds no link); the activity
        signs links lasting the stage's escalation plus a margin."""
        package = rules.funding_package(self.state.documents)
        request.funding_package = [PackagedFundingDocument.of(doc) for doc in package.values()]
        request.links_expire_at = (
            workflow.now() + self.policy.disbursement_escalate_after + DOCUMENT_LINK_MARGIN
        )
        d.funding_doc_ids = [doc.doc_id for doc in package.values()]

    def _compensate_fn(self, comp: Compensation) -> Callable[[], Awaitable[None]]:
        async def compensate() -> None:
            await self._compensate(comp)
            if self.state.stage is Stage.UNWINDING:
                self._unwind_next()

        return compensate

    async def _compensate(self, comp: Compensation) -> None:
        if comp.status in ("done", "void", "refused"):
            return
        comp.status = "running"
        if comp.kind == "repay_lender":
            await self._repay_lender(comp)
            return
        if comp.kind == "withdraw_application":
            try:
                await self._withdraw_application(comp)
            except ActivityError as e:
                if not self._patched(REFUSED_COMPENSATIONS):
                    raise
                self._compensation_refused(comp, _cause(e))
                return
        else:
            await self._bookkeeping(
                names.RECORD_COMPENSATION,
                CompensationInput(
                    key=comp.key,
                    deal_id=self.inp.deal_id,
                    kind=comp.kind,
                    detail={**comp.detail, "reason": self.state.outcome_reason or ""},
                ),
            )
        comp.status = "done"
        comp.done_at = workflow.now()
        self._count_compensation(comp)

    def _count_compensation(self, comp: Compensation) -> None:
        workflow.metric_meter().create_counter(
            names.COMPENSATIONS_METRIC, "Steps undone, by kind and outcome"
        ).add(1, {"kind": comp.kind, "outcome": comp.status})

    async def _withdraw_application(self, comp: Compensation) -> None:
        await workflow.execute_activity(
            names.WITHDRAW_APPLICATION,
            WithdrawInput(
                deal_id=self.inp.deal_id,
                lender_id=comp.detail["lender_id"],
                application_ref=comp.detail["application_ref"],
                submission_no=int(comp.detail["submission_no"]),
                reason=comp.detail.get("reason") or self.state.outcome_reason or "withdrawn",
            ),
            **LENDER_CALL,
        )
        for sub in self.state.submissions:
            if sub.application_ref == comp.detail["application_ref"]:
                sub.status = "withdrawn"

    async def _repay_lender(self, comp: Compensation) -> None:
        """Pay the lender back; its receipt is the step's evidence. A refusal
        (4xx) is recorded and put to finance; the other steps go on."""
        d = comp.detail
        try:
            receipt: RepaymentResult = await workflow.execute_activity(
                names.REPAY_LENDER,
                RepaymentInput(
                    deal_id=self.inp.deal_id,
                    lender_id=d["lender_id"],
                    application_ref=d["application_ref"],
                    amount=money(d["amount"]),
                    transaction_ref=d["transaction_ref"],
                    reason=self.state.outcome_reason or "unwound after funding",
                ),
                result_type=RepaymentResult,
                **LENDER_CALL,
            )
        except ActivityError as e:
            self._compensation_refused(comp, _cause(e), [Role.FINANCE, Role.ADMIN])
            return
        comp.status = "done"
        comp.done_at = workflow.now()
        comp.evidence = receipt.repayment_ref
        comp.done_by = f"{d['lender_id']}/lender"
        self._count_compensation(comp)

    def _compensation_refused(
        self, comp: Compensation, reason: str, roles: list[Role] | None = None
    ) -> None:
        """The other side refused to undo its step (a lender refusing a
        withdrawal or a repayment with a 4xx): recorded with its reason and put
        to a person, who settles it outside the deal; the other compensations go on."""
        comp.status = "refused"
        comp.refusal = reason
        comp.done_at = workflow.now()
        self._count_compensation(comp)
        lender = comp.detail.get("lender_id", "the lender")
        self._notify(
            "escalation",
            f"{comp.kind} refused by {lender}: {reason}; settle it with the lender",
            roles or [Role.CREDIT, Role.ADMIN],
        )

    def _withdraw(self, sub: Submission, reason: str) -> None:
        """Withdraw one application now (lender timeout, counter-offer declined)."""
        sub.status = "withdrawing"
        for comp in self.state.compensations:
            if (
                comp.kind == "withdraw_application"
                and comp.detail.get("application_ref") == sub.application_ref
                and comp.status == "pending"
            ):
                comp.detail["reason"] = reason
                comp.status = "running"

    def _withdrawal_pending(self, sub: Submission) -> bool:
        return any(
            comp.kind == "withdraw_application"
            and comp.detail.get("application_ref") == sub.application_ref
            and comp.status == "pending"
            for comp in self.state.compensations
        )

    def _void_compensation(self, sub: Submission) -> None:
        for comp in self.state.compensations:
            if (
                comp.kind == "withdraw_application"
                and comp.detail.get("application_ref") == sub.application_ref
                and comp.status == "pending"
            ):
                comp.status = "void"

    def _project(self) -> None:
        """Owe the read model a snapshot of the state as it is now."""
        if self._patched(PROJECTION_PER_ACTIVATION):
            # Every change made before the queued task first runs (the rest of
            # this handler, the other handlers of this activation) goes into
            # its one snapshot. Whether it is sent never depends on an earlier
            # projection having completed, so the commands of an update are
            # the same whether an activity's completion was applied before it
            # or after it; the read model keeps the highest version.
            self.state.version += 1
            if not self._projection_queued:
                self._projection_queued = True
                self._spawn(f"project:{self.state.version}", self._send_projection())
            return
        if not self._patched(ONE_PROJECTION_IN_FLIGHT):
            self.state.version += 1
            self._spawn(
                f"project:{self.state.version}",
                self._bookkeeping(names.PROJECT_DEAL, self._snapshot()),
            )
            return
        # One projection in flight per deal, taken when it is sent: an update
        # that changes the stage owes two snapshots, and a burst of signals
        # many, but only the newest state matters to the read model.
        self.state.version += 1
        self._projection_owed = True
        if "project" not in self._tasks:
            self._spawn("project", self._projector())

    async def _send_projection(self) -> None:
        self._projection_queued = False
        await self._project_now()

    async def _projector(self) -> None:
        while self._projection_owed:
            self._projection_owed = False
            await self._project_now()

    async def _project_now(self) -> None:
        sent = len(self.state.transitions)
        await self._bookkeeping(names.PROJECT_DEAL, self._snapshot())
        # The read model holds the stage changes up to `sent` now (this
        # snapshot's, or a newer one's that superseded it): later snapshots
        # leave them out, so the projection's size stays flat as a deal ages.
        self.state.projected_transitions = max(self.state.projected_transitions, sent)

    def _bookkeeping(self, activity: str, arg: Any) -> Awaitable[Any]:
        """A write to DealFlow's own database (read model, outbox, records)."""
        if self._local_bookkeeping:
            return workflow.execute_local_activity(activity, arg, **LOCAL_BOOKKEEPING)
        return workflow.execute_activity(activity, arg, **BOOKKEEPING)

    def _snapshot(self) -> ProjectionInput:
        """The read model's row; versions keep retried writes in order."""
        view = self._view()
        due, _ = self._next_timer()
        pending = rules.pending_actions(view, due)
        return ProjectionInput(
            deal_id=self.inp.deal_id,
            workflow_id=workflow.info().workflow_id,
            version=self.state.version,
            dealer_id=self.deal.dealer_id,
            stage=self.state.stage,
            stage_entered_at=self.state.stage_entered_at,
            lender_id=self._lender_id(),
            vehicle_price=self.deal.vehicle.price,
            # What the lender finances: a counter-offer may have lowered it.
            amount_financed=view.financed_amount,
            approved_amount=view.approved_amount,
            created_at=self.state.transitions[0].at if self.state.transitions else workflow.now(),
            updated_at=workflow.now(),
            next_due_at=None if self.state.stage.terminal else due,
            pending_roles=sorted({action.role.value for action in pending}),
            pending_actions=pending,
            customer_name=self.deal.customer.applicant.full_name,
            lender_ids=[lender.id for lender in self.inp.lenders],
            transitions=stage_changes(self.state.transitions, self.state.projected_transitions),
            lender_decisions=lender_decision_facts(self.state.submissions),
            closed=deal_closed(self.state),
        )

    def _notify(
        self,
        kind: Literal["reminder", "escalation", "adverse_action", "follow_up_due", "info"],
        message: str,
        roles: list[Role] | None = None,
        extra_roles: list[Role] | None = None,
    ) -> None:
        if roles is None:
            roles = sorted({p.role for p in rules.pending_actions(self._view(), None)})
        roles = sorted(set(roles) | set(extra_roles or []))
        self.state.notices.append(
            Notice(at=workflow.now(), kind=kind, stage=self.state.stage, message=message)
        )
        key = f"{self.inp.deal_id}:{len(self.state.notices)}:{kind}"
        self._spawn(
            f"notify:{key}",
            self._bookkeeping(
                names.NOTIFY,
                NotificationInput(
                    key=key,
                    deal_id=self.inp.deal_id,
                    kind=kind,
                    stage=self.state.stage,
                    roles=roles,
                    message=message,
                ),
            ),
        )

    # ------------------------------------------------------------------ stage

    def _set_stage(self, to: Stage, reason: str, actor: Any = None) -> None:
        """The one writer of the stage: state, search attributes, transition, read model."""
        frm = self.state.stage
        self._count_transition(frm, to)
        self.state.stage = to
        self.state.stage_entered_at = workflow.now()
        self.state.stage_entry += 1
        self.state.reminders_sent = 0
        self.state.escalated = False
        self._record_transition(frm, to, reason, actor or SYSTEM_ACTOR)
        self._project()
        # Ids and stage names only: reasons can hold staff's free text, and
        # logs carry no personal data. The SDK's logger adds the workflow and
        # run ids and stays quiet during replay.
        workflow.logger.info(
            "deal %s: %s -> %s",
            self.inp.deal_id,
            frm.value,
            to.value,
            extra={"deal_id": self.inp.deal_id, "stage": to.value},
        )

    def _count_transition(self, frm: Stage, to: Stage) -> None:
        # The SDK's meter is silent during replay: a rebuilt deal is not counted twice.
        meter = workflow.metric_meter()
        meter.create_counter(
            names.STAGE_TRANSITIONS_METRIC, "Deals moved from one stage to another"
        ).add(1, {"from_stage": frm.value, "to_stage": to.value})
        meter.create_histogram_float(
            names.TIME_IN_STAGE_METRIC, "Time a deal spent in a stage it left", "s"
        ).record(
            (workflow.now() - self.state.stage_entered_at).total_seconds(), {"stage": frm.value}
        )

    def _record_transition(self, frm: Stage | None, to: Stage, reason: str, actor: Any) -> None:
        self.state.transitions.append(
            Transition(
                at=workflow.now(),
                from_stage=frm,
                to_stage=to,
                actor=f"{actor.staff_id}/{actor.role.value}",
                reason=reason,
            )
        )
        self._upsert_search_attributes()

    def _upsert_search_attributes(self) -> None:
        attrs = [
            DEAL_STAGE.value_set(self.state.stage.value),
            DEALER_ID.value_set(self.deal.dealer_id),
        ]
        lender = self._lender_id()
        attrs.append(LENDER_ID.value_set(lender) if lender else LENDER_ID.value_unset())
        workflow.upsert_search_attributes(attrs)

    def _advance(self, actor: Any) -> None:
        """Move the stage as far as the recorded facts allow."""
        while True:
            state, before = self.state, self.state.stage_entry
            match state.stage:
                case Stage.CONTRACT if state.sales_contract:
                    self._set_stage(Stage.DOCUMENTS, "sales contract signed", actor)
                case Stage.DOCUMENTS if rules.checklist_complete(
                    self._view().checklist()
                ) and rules.stipulations_answered(state):
                    if state.resubmit_pending:
                        # The new submission carries the answers to the conditions.
                        for item in rules.collecting(state):
                            item.answered_in = len(state.submissions) + 1
                        state.resubmit_pending = False
                        sub = self._current_submission()
                        lender = sub.lender_id if sub else self.deal.lender_ids[state.lender_index]
                        if (
                            sub is not None
                            and sub.status == "decided"
                            and self._withdrawal_pending(sub)
                            and self._patched(WITHDRAW_CONDITIONAL)
                        ):
                            # The new package supersedes the conditional one.
                            self._withdraw(
                                sub,
                                f"superseded by submission {len(state.submissions) + 1} "
                                "with the stipulations met",
                            )
                        self._new_submission(lender)
                        self._set_stage(
                            Stage.UNDERWRITING, f"stipulations met; resubmitted to {lender}", actor
                        )
                    else:
                        self._set_stage(Stage.APPLICATION, "documents complete", actor)
                case Stage.APPLICATION if state.application:
                    lender = self.deal.lender_ids[state.lender_index]
                    self._new_submission(lender)
                    self._set_stage(Stage.UNDERWRITING, f"application submitted to {lender}", actor)
                case Stage.DOWN_PAYMENT if state.down_payment:
                    self._set_stage(Stage.INVOICING, "down payment received", actor)
                case Stage.INVOICING if state.invoice:
                    self._set_stage(Stage.INSURANCE, "invoice issued", actor)
                case Stage.INSURANCE if state.insurance:
                    self._set_stage(Stage.LOAN_CONTRACT, "insurance bound", actor)
                case Stage.LOAN_CONTRACT if (
                    state.loan_contract
                    and state.repayment_account
                    and rules.funding_complete(self._view().funding())
                ):
                    if self._view().mortgage_before_funding:
                        self._set_stage(
                            Stage.REGISTRATION,
                            "loan contract signed; the lender funds once its mortgage is "
                            "registered",
                            actor,
                        )
                    else:
                        state.disbursements.append(Disbursement(attempt=1))
                        self._set_stage(
                            Stage.DISBURSEMENT,
                            "loan contract signed; disbursement requested",
                            actor,
                        )
                case Stage.REGISTRATION if state.mortgage and not self._view().funded:
                    state.disbursements.append(Disbursement(attempt=1))
                    self._set_stage(
                        Stage.DISBURSEMENT, "mortgage registered; disbursement requested", actor
                    )
                case Stage.REGISTRATION if state.mortgage:
                    self._set_stage(Stage.DELIVERY, "registration complete", actor)
                case Stage.DELIVERY if state.delivery:
                    state.delivered_at = workflow.now()
                    self._set_stage(Stage.FOLLOW_UP, "vehicle delivered", actor)
                case Stage.FOLLOW_UP if len(state.follow_ups) == 2:
                    self._set_stage(Stage.COMPLETED, "follow-up calls done", actor)
                case _:
                    pass
            if self.state.stage_entry == before:
                return

    def _new_submission(self, lender_id: str) -> None:
        self.state.submissions.append(
            Submission(submission_no=len(self.state.submissions) + 1, lender_id=lender_id)
        )

    def _route_to_next_lender(self, reason: str) -> None:
        self.state.lender_index += 1
        if self.state.lender_index >= len(self.deal.lender_ids):
            self.state.outcome_reason = f"every lender declined ({reason})"
            self._set_stage(Stage.DECLINED, self.state.outcome_reason)
            return
        lender = self.deal.lender_ids[self.state.lender_index]
        self._new_submission(lender)
        self._set_stage(Stage.UNDERWRITING, f"{reason}; routed to {lender}")

    # ------------------------------------------------------------------ lender events

    @workflow.signal(name=names.LENDER_EVENT)
    def lender_event(self, ev: LenderEventInput) -> None:
        # Webhooks are at-least-once; the lender's webhook id makes them
        # exactly-once here. The ids applied before ids were scoped by lender
        # stay in `applied_webhooks`, which no longer grows, so a retry of one
        # of them is still recognised and nobody can add to it.
        if ev.webhook_id in self.state.applied_webhooks:
            return
        if not self._patched(LENDER_SCOPED_WEBHOOKS):
            self.state.applied_webhooks.append(ev.webhook_id)
        else:
            key = rules.lender_webhook_key(ev.lender_id, ev.webhook_id)
            if key in self.state.applied_lender_webhooks:
                return
            self.state.applied_lender_webhooks.append(key)
            if ev.lender_id not in {lender.id for lender in self.inp.lenders}:
                self._notify(
                    "escalation",
                    f"ignored {ev.type} {ev.webhook_id}: {ev.lender_id} is not a lender "
                    "of this deal",
                    [Role.CREDIT, Role.ADMIN],
                )
                return
        self._apply_lender_event(ev)

    def _apply_lender_event(self, ev: LenderEventInput) -> None:
        data = ev.decided or ev.disbursed or ev.failed
        if data is None:
            return
        sub = next(
            (
                x
                for x in self.state.submissions
                if x.application_ref == data.application_ref and x.lender_id == ev.lender_id
            ),
            None,
        )
        if sub is None:
            if any(
                x.status == "sending" and x.lender_id == ev.lender_id
                for x in self.state.submissions
            ):
                self.state.unmatched_events.append(ev)
            else:
                self._notify(
                    "info",
                    f"ignored {ev.type} {ev.webhook_id}: unknown application "
                    f"{data.application_ref}",
                    [Role.CREDIT],
                )
            return
        if ev.decided is not None:
            self._apply_decision(sub, ev)
        elif ev.disbursed is not None:
            self._apply_disbursed(sub, ev)
        elif ev.failed is not None:
            self._apply_disbursement_failed(sub, ev)

    def _apply_decision(self, sub: Submission, ev: LenderEventInput) -> None:
        d = ev.decided
        assert d is not None
        rec = DecisionRecord(
            webhook_id=ev.webhook_id,
            received_at=ev.received_at,
            decision_seq=d.decision_seq,
            decision=d.decision,
            approved_amount=d.approved_amount,
            apr=d.apr,
            term_months=d.term_months,
            stipulations=d.stipulations,
            reasons=d.reasons,
        )
        if sub.status in ("withdrawing", "withdrawn", "rejected"):
            rec.applied, rec.note = False, f"application already {sub.status}"
        elif d.decision_seq <= sub.last_seq:
            rec.applied, rec.note = False, f"stale: decision_seq {d.decision_seq} <= {sub.last_seq}"
        elif sub is not self._current_submission() or self.state.stage is not Stage.UNDERWRITING:
            rec.applied = False
            rec.note = f"arrived in stage {self.state.stage.value}; not applied"
            self._notify(
                "escalation",
                f"{sub.lender_id} sent a {d.decision.value} decision after the deal "
                f"moved on ({self.state.stage.value})",
                [Role.CREDIT, Role.ADMIN],
            )
        elif self._patched(BOUNDED_LENDER_AMOUNTS):
            self._bound_lender_amount(sub, rec)
        sub.decisions.append(rec)
        if not rec.applied:
            return
        sub.current = rec
        sub.status = "decided"
        match rec.decision:
            case Decision.APPROVED:
                amount = d.approved_amount or self.deal.amount_financed
                self._set_stage(
                    Stage.DOWN_PAYMENT, f"approved by {sub.lender_id}: {fmt_money(amount)}"
                )
            case Decision.CONDITIONAL:
                if self._patched(STIPULATION_LIFECYCLE):
                    self._name_conditions(sub, rec)
                else:
                    known = {st.code for st in self.state.stipulations}
                    self.state.stipulations.extend(
                        st for st in d.stipulations if st.code not in known
                    )
                    if self._patched(STIPULATION_ROUNDS):
                        for st in d.stipulations:
                            self.state.stipulation_asked_at[st.code] = workflow.now()
                self.state.resubmit_pending = True
                # The conditional application stays open at the lender until the
                # resubmission supersedes it: a deal ended meanwhile withdraws it.
                # (Deals started before this rule voided it here.)
                if not self._patched(WITHDRAW_CONDITIONAL):
                    self._void_compensation(sub)
                codes = ", ".join(st.code for st in d.stipulations)
                self._set_stage(Stage.DOCUMENTS, f"{sub.lender_id} stipulates: {codes}")
                self._advance(SYSTEM_ACTOR)
            case Decision.COUNTER_OFFER:
                offered = fmt_money(d.approved_amount or 0)
                self._set_stage(
                    Stage.UNDERWRITING, f"counter-offer from {sub.lender_id}: {offered}"
                )
            case Decision.DECLINED:
                self._void_compensation(sub)
                self.state.adverse_action_reasons.extend(
                    Reason(code=r.code, text=f"{sub.lender_id}: {r.text}") for r in d.reasons
                )
                codes = ", ".join(r.code for r in d.reasons) or "no reason given"
                self._route_to_next_lender(f"declined by {sub.lender_id} ({codes})")

    def _name_conditions(self, sub: Submission, rec: DecisionRecord) -> None:
        """Each condition of a conditional decision, open, for this submission
        (a code named twice in one decision is one condition)."""
        seen: set[str] = set()
        for st in rec.stipulations:
            if st.code in seen:
                continue
            seen.add(st.code)
            item = StipulationItem(
                submission_no=sub.submission_no,
                lender_id=sub.lender_id,
                code=st.code,
                description=st.description,
                kind=st.kind,
                named_at=workflow.now(),
            )
            self._stipulation_step(item, "open", f"{sub.lender_id}/lender", "named by the lender")
            self.state.stipulation_items.append(item)

    def _stipulation_step(
        self,
        item: StipulationItem,
        status: StipulationStatus,
        by: str,
        reason: str = "",
        doc_id: str | None = None,
    ) -> None:
        item.status = status
        item.changes.append(
            StipulationChange(at=workflow.now(), status=status, by=by, reason=reason, doc_id=doc_id)
        )

    def _bound_lender_amount(self, sub: Submission, rec: DecisionRecord) -> None:
        """A decision whose amount is out of bounds is recorded as refused and
        escalated (the lender may send a corrected one); an approval of less
        than requested becomes a counter-offer the customer must accept."""
        requested = self.deal.amount_financed
        cap = rules.max_amount_financed(self.deal, self.policy)
        problem = rules.lender_amount_problem(rec.decision, rec.approved_amount, requested, cap)
        if problem is None and self._approved_terms:
            problem = rules.lender_terms_problem(
                rec.decision, rec.apr, rec.term_months, self.policy
            )
        if problem is not None:
            rec.applied, rec.note = False, f"refused: {problem}"
            self._notify(
                "escalation",
                f"{sub.lender_id} decision {rec.decision_seq} refused: {problem}",
                [Role.CREDIT, Role.ADMIN],
            )
        elif rules.is_partial_approval(rec.decision, rec.approved_amount, requested):
            rec.note = (
                f"approved {fmt_money(rec.approved_amount or 0)} of {fmt_money(requested)} "
                "requested: a counter-offer for the customer to accept"
            )
            rec.decision = Decision.COUNTER_OFFER

    def _answers_another_request(
        self, ev: LenderEventInput, request_id: str | None, pending: Disbursement | None
    ) -> bool:
        """Whether a disbursement answer names a request other than the open
        one (a late or repeated answer to an earlier attempt): recorded, and
        not applied to the newest attempt."""
        if request_id is None or pending is None:
            return False
        if not self._patched(DISBURSEMENT_REQUEST_IDS):
            return False
        open_id = rules.disbursement_request_id(self.inp.deal_id, pending.attempt)
        if request_id == open_id:
            return False
        if ev.disbursed is not None:
            # Money the lender says it paid on an earlier request: a person
            # must look (reconcile it, or have the open request withdrawn).
            self._notify(
                "escalation",
                f"{ev.type} {ev.webhook_id} reports a payout on request {request_id} while "
                f"{open_id} is open: reconcile it with the lender",
                [Role.FINANCE, Role.ADMIN],
            )
        else:
            self._notify(
                "info",
                f"ignored {ev.type} {ev.webhook_id}: it answers request {request_id}, "
                f"not the open {open_id}",
                [Role.FINANCE],
            )
        return True

    def _apply_disbursed(self, sub: Submission, ev: LenderEventInput) -> None:
        d = ev.disbursed
        assert d is not None
        pending = self._open_disbursement()
        if self._answers_another_request(ev, d.request_id, pending):
            return
        if sub is not self._approved_submission() or pending is None:
            self._notify(
                "escalation",
                f"unexpected disbursement {d.transaction_ref} of "
                f"{fmt_money(d.amount)} from {sub.lender_id}",
                [Role.FINANCE, Role.ADMIN],
            )
            return
        want = self._view().financed_amount
        if money(d.amount) != want:
            # Kept on the attempt: finance reconciles it, retries or unwinds.
            pending.mismatch = (
                f"paid {fmt_money(d.amount)}, not the approved {fmt_money(want)} "
                f"(transaction {d.transaction_ref})"
            )
            self._notify(
                "escalation",
                f"disbursed {fmt_money(d.amount)} does not match the approved "
                f"{fmt_money(want)} (transaction {d.transaction_ref})",
                [Role.FINANCE, Role.ADMIN],
            )
            return
        self._disbursed(pending, money(d.amount), d.transaction_ref, d.disbursed_at)
        self._set_stage(
            self._stage_after_funding(), f"disbursed {fmt_money(d.amount)} ({d.transaction_ref})"
        )

    def _disbursed(
        self, attempt: Disbursement, amount: Decimal, transaction_ref: str, at: datetime
    ) -> None:
        attempt.status = "completed"
        attempt.amount = amount
        attempt.transaction_ref = transaction_ref
        attempt.disbursed_at = at
        sub = self._approved_submission()
        if self._unwind_after_funding and sub is not None and sub.application_ref:
            rules.register_step(
                self.state.compensations,
                rules.repayment_step(
                    self.inp.deal_id, sub.lender_id, sub.application_ref, attempt, workflow.now()
                ),
            )
        for comp in self.state.compensations:
            # Once funded, the loan is no longer something to withdraw.
            if comp.kind == "withdraw_application" and comp.status == "pending":
                comp.status = "void"

    def _stage_after_funding(self) -> Stage:
        # A lender that funds after its mortgage is registered found the
        # registration done already: the vehicle can be handed over.
        return Stage.DELIVERY if self.state.mortgage is not None else Stage.REGISTRATION

    def _apply_disbursement_failed(self, sub: Submission, ev: LenderEventInput) -> None:
        f = ev.failed
        assert f is not None
        pending = self._open_disbursement()
        if self._answers_another_request(ev, f.request_id, pending):
            return
        if sub is not self._approved_submission() or pending is None:
            return
        pending.status = "failed"
        pending.failure_reason = f.reason
        if pending.attempt < self.policy.max_disbursement_attempts:
            self.state.disbursements.append(Disbursement(attempt=pending.attempt + 1))
            self._notify(
                "info",
                f"disbursement attempt {pending.attempt} failed ({f.reason}); requesting again",
                [Role.CREDIT],
            )
        else:
            self._notify(
                "escalation",
                f"disbursement failed {pending.attempt} times; last: {f.reason}",
                [Role.CREDIT, Role.FINANCE, Role.ADMIN],
            )
        self._project()

    def _open_disbursement(self) -> Disbursement | None:
        return next(
            (
                d
                for d in reversed(self.state.disbursements)
                if d.status in ("requesting", "requested")
            ),
            None,
        )

    # ------------------------------------------------------------------ staff updates

    def _validate(self, action: Action, inp: ActionInput) -> None:
        try:
            rules.check_action(action, inp, self._view())
        except rules.RuleError as e:
            # The type tells the API which status to answer (409/422/403).
            raise ApplicationError(e.message, type=f"Rule.{e.kind}", non_retryable=True) from None

    def _accept(self, action: Action, inp: ActionInput, summary: str = "") -> ActionReceipt:
        self.state.actions.append(
            ActionRecord(at=workflow.now(), action=action.value, actor=inp.actor, summary=summary)
        )
        self._advance(inp.actor)
        self._project()
        return ActionReceipt(
            action=action.value, stage=self.state.stage, version=self.state.version
        )

    @workflow.update(name="sign-sales-contract")
    def sign_sales_contract(self, inp: SignSalesContractInput) -> ActionReceipt:
        self.state.sales_contract = inp
        self.state.compensations.append(
            Compensation(
                kind="release_vehicle",
                key=f"{self.inp.deal_id}:release_vehicle",
                registered_at=workflow.now(),
                detail={"vin": self.deal.vehicle.vin},
            )
        )
        return self._accept(Action.SIGN_SALES_CONTRACT, inp, inp.contract_no)

    @sign_sales_contract.validator
    def _v_sign_sales_contract(self, inp: SignSalesContractInput) -> None:
        self._validate(Action.SIGN_SALES_CONTRACT, inp)

    @workflow.update(name="record-document")
    def record_document(self, inp: RecordDocumentInput) -> ActionReceipt:
        if rules.find_duplicate(self.state, inp) is None:
            doc = DocumentRecord(
                doc_id=f"{self.inp.deal_id}-d{len(self.state.documents) + 1}",
                kind=inp.kind,
                party=inp.party,
                file_name=inp.file_name,
                content_type=inp.content_type,
                size=inp.size,
                sha256=inp.sha256,
                storage_key=inp.storage_key,
                uploaded_by=f"{inp.actor.staff_id}/{inp.actor.role.value}",
                uploaded_at=workflow.now(),
                period_start=inp.period_start,
                period_end=inp.period_end,
                stipulation_code=inp.stipulation_code,
            )
            self.state.documents.append(doc)
            self._document_answers_condition(doc)
            self._spawn(
                f"document:{doc.doc_id}",
                self._bookkeeping(
                    names.RECORD_DOCUMENT_METADATA,
                    DocumentMetadataInput(deal_id=self.inp.deal_id, document=doc),
                ),
            )
        return self._accept(Action.RECORD_DOCUMENT, inp, f"{inp.party.value} {inp.kind.value}")

    def _document_answers_condition(self, doc: DocumentRecord) -> None:
        """A new stipulation document answers its condition while the deal
        collects them: an open or rejected one is received, and a received
        one takes the newer document; cleared and waived ones stay."""
        if doc.kind is not DocumentKind.STIPULATION or doc.stipulation_code is None:
            return
        item = rules.find_condition(self.state, doc.stipulation_code)
        if item is None or item.kind != "document" or item.status in ("cleared", "waived"):
            return
        item.doc_id = doc.doc_id
        self._stipulation_step(item, "received", doc.uploaded_by, doc.file_name, doc.doc_id)

    @record_document.validator
    def _v_record_document(self, inp: RecordDocumentInput) -> None:
        self._validate(Action.RECORD_DOCUMENT, inp)

    @workflow.update(name="submit-application")
    def submit_application(self, inp: SubmitApplicationInput) -> ActionReceipt:
        self.state.application = inp
        return self._accept(Action.SUBMIT_APPLICATION, inp, inp.form_no)

    @submit_application.validator
    def _v_submit_application(self, inp: SubmitApplicationInput) -> None:
        self._validate(Action.SUBMIT_APPLICATION, inp)

    @workflow.update(name="accept-counter-offer")
    def accept_counter_offer(self, inp: AcceptCounterOfferInput) -> ActionReceipt:
        sub = self._open_counter()
        assert sub is not None and sub.current is not None
        sub.counter_offer_response = "accepted"
        amount = fmt_money(sub.current.approved_amount or 0)
        self._set_stage(
            Stage.DOWN_PAYMENT, f"counter-offer of {sub.lender_id} accepted: {amount}", inp.actor
        )
        return self._accept(Action.ACCEPT_COUNTER_OFFER, inp, amount)

    @accept_counter_offer.validator
    def _v_accept_counter_offer(self, inp: AcceptCounterOfferInput) -> None:
        self._validate(Action.ACCEPT_COUNTER_OFFER, inp)

    @workflow.update(name="decline-counter-offer")
    def decline_counter_offer(self, inp: DeclineCounterOfferInput) -> ActionReceipt:
        sub = self._open_counter()
        assert sub is not None
        sub.counter_offer_response = "declined"
        self._withdraw(sub, f"counter-offer declined: {inp.reason}")
        self.state.adverse_action_reasons.append(
            Reason(code="COUNTER_OFFER_DECLINED", text=f"{sub.lender_id}: {inp.reason}")
        )
        self._route_to_next_lender(f"counter-offer of {sub.lender_id} declined")
        return self._accept(Action.DECLINE_COUNTER_OFFER, inp, inp.reason)

    @decline_counter_offer.validator
    def _v_decline_counter_offer(self, inp: DeclineCounterOfferInput) -> None:
        self._validate(Action.DECLINE_COUNTER_OFFER, inp)

    @workflow.update(name="confirm-down-payment")
    def confirm_down_payment(self, inp: ConfirmDownPaymentInput) -> ActionReceipt:
        self.state.down_payment = inp
        self.state.compensations.append(
            Compensation(
                kind="refund_down_payment",
                key=f"{self.inp.deal_id}:refund_down_payment",
                registered_at=workflow.now(),
                detail={"amount": str(money(inp.amount)), "payment_ref": inp.payment_ref},
            )
        )
        return self._accept(Action.CONFIRM_DOWN_PAYMENT, inp, fmt_money(inp.amount))

    @confirm_down_payment.validator
    def _v_confirm_down_payment(self, inp: ConfirmDownPaymentInput) -> None:
        self._validate(Action.CONFIRM_DOWN_PAYMENT, inp)

    @workflow.update(name="record-invoice")
    def record_invoice(self, inp: RecordInvoiceInput) -> ActionReceipt:
        self.state.invoice = inp
        if self._unwind_after_funding:
            rules.register_step(self.state.compensations, self._invoice_step(workflow.now()))
        return self._accept(Action.RECORD_INVOICE, inp, inp.invoice_no)

    @record_invoice.validator
    def _v_record_invoice(self, inp: RecordInvoiceInput) -> None:
        self._validate(Action.RECORD_INVOICE, inp)

    @workflow.update(name="record-insurance")
    def record_insurance(self, inp: RecordInsuranceInput) -> ActionReceipt:
        self.state.insurance = inp
        self.state.compensations.append(
            Compensation(
                kind="cancel_insurance",
                key=f"{self.inp.deal_id}:cancel_insurance",
                registered_at=workflow.now(),
                detail={"policy_no": inp.policy_no, "insurer": inp.insurer},
            )
        )
        return self._accept(Action.RECORD_INSURANCE, inp, inp.policy_no)

    @record_insurance.validator
    def _v_record_insurance(self, inp: RecordInsuranceInput) -> None:
        self._validate(Action.RECORD_INSURANCE, inp)

    @workflow.update(name="record-repayment-account")
    def record_repayment_account(self, inp: RecordRepaymentAccountInput) -> ActionReceipt:
        self.state.repayment_account = inp
        return self._accept(Action.RECORD_REPAYMENT_ACCOUNT, inp, inp.bank_name)

    @record_repayment_account.validator
    def _v_record_repayment_account(self, inp: RecordRepaymentAccountInput) -> None:
        self._validate(Action.RECORD_REPAYMENT_ACCOUNT, inp)

    @workflow.update(name="confirm-loan-terms")
    def confirm_loan_terms(self, inp: ConfirmLoanTermsInput) -> ActionReceipt:
        self.state.loan_terms_confirmed = inp
        self.state.loan_terms_confirmed_at = workflow.now()
        summary = (
            f"{fmt_money(inp.amount)} at {inp.apr}% over {inp.term_months} months "
            f"({inp.method.value}): {fmt_money(inp.total_repayable)} in all"
        )
        return self._accept(Action.CONFIRM_LOAN_TERMS, inp, summary)

    @confirm_loan_terms.validator
    def _v_confirm_loan_terms(self, inp: ConfirmLoanTermsInput) -> None:
        self._validate(Action.CONFIRM_LOAN_TERMS, inp)

    @workflow.update(name="sign-loan-contract")
    def sign_loan_contract(self, inp: SignLoanContractInput) -> ActionReceipt:
        self.state.loan_contract = inp
        return self._accept(Action.SIGN_LOAN_CONTRACT, inp, inp.contract_no)

    @sign_loan_contract.validator
    def _v_sign_loan_contract(self, inp: SignLoanContractInput) -> None:
        self._validate(Action.SIGN_LOAN_CONTRACT, inp)

    @workflow.update(name="record-certificate")
    def record_certificate(self, inp: RecordCertificateInput) -> ActionReceipt:
        self.state.certificate = inp
        return self._accept(Action.RECORD_CERTIFICATE, inp, inp.certificate_no)

    @record_certificate.validator
    def _v_record_certificate(self, inp: RecordCertificateInput) -> None:
        self._validate(Action.RECORD_CERTIFICATE, inp)

    @workflow.update(name="record-purchase-tax")
    def record_purchase_tax(self, inp: RecordPurchaseTaxInput) -> ActionReceipt:
        self.state.purchase_tax = inp
        return self._accept(Action.RECORD_PURCHASE_TAX, inp, inp.receipt_no)

    @record_purchase_tax.validator
    def _v_record_purchase_tax(self, inp: RecordPurchaseTaxInput) -> None:
        self._validate(Action.RECORD_PURCHASE_TAX, inp)

    @workflow.update(name="record-plate")
    def record_plate(self, inp: RecordPlateInput) -> ActionReceipt:
        self.state.plate = inp
        return self._accept(Action.RECORD_PLATE, inp, inp.plate_no)

    @record_plate.validator
    def _v_record_plate(self, inp: RecordPlateInput) -> None:
        self._validate(Action.RECORD_PLATE, inp)

    @workflow.update(name="record-mortgage")
    def record_mortgage(self, inp: RecordMortgageInput) -> ActionReceipt:
        self.state.mortgage = inp
        if self._unwind_after_funding:
            rules.register_step(self.state.compensations, self._mortgage_step(workflow.now()))
        return self._accept(Action.RECORD_MORTGAGE, inp, inp.registration_no)

    @record_mortgage.validator
    def _v_record_mortgage(self, inp: RecordMortgageInput) -> None:
        self._validate(Action.RECORD_MORTGAGE, inp)

    @workflow.update(name="record-stock-out")
    def record_stock_out(self, inp: RecordStockOutInput) -> ActionReceipt:
        self.state.stock_out = inp
        return self._accept(Action.RECORD_STOCK_OUT, inp, inp.form_no)

    @record_stock_out.validator
    def _v_record_stock_out(self, inp: RecordStockOutInput) -> None:
        self._validate(Action.RECORD_STOCK_OUT, inp)

    @workflow.update(name="record-settlement")
    def record_settlement(self, inp: RecordSettlementInput) -> ActionReceipt:
        self.state.settlement = inp
        return self._accept(Action.RECORD_SETTLEMENT, inp, fmt_money(inp.amount))

    @record_settlement.validator
    def _v_record_settlement(self, inp: RecordSettlementInput) -> None:
        self._validate(Action.RECORD_SETTLEMENT, inp)

    @workflow.update(name="deliver")
    def deliver(self, inp: DeliverInput) -> ActionReceipt:
        self.state.delivery = inp
        return self._accept(Action.DELIVER, inp, inp.after_sales_advisor)

    @deliver.validator
    def _v_deliver(self, inp: DeliverInput) -> None:
        self._validate(Action.DELIVER, inp)

    @workflow.update(name="record-follow-up")
    def record_follow_up(self, inp: RecordFollowUpInput) -> ActionReceipt:
        self.state.follow_ups[inp.call] = inp
        return self._accept(Action.RECORD_FOLLOW_UP, inp, inp.call)

    @record_follow_up.validator
    def _v_record_follow_up(self, inp: RecordFollowUpInput) -> None:
        self._validate(Action.RECORD_FOLLOW_UP, inp)

    @workflow.update(name="cancel")
    def cancel(self, inp: CancelInput) -> ActionReceipt:
        self.state.outcome_reason = f"cancelled by {inp.actor.staff_id}: {inp.reason}"
        self._set_stage(Stage.CANCELLED, inp.reason, inp.actor)
        return self._accept(Action.CANCEL, inp, inp.reason)

    @cancel.validator
    def _v_cancel(self, inp: CancelInput) -> None:
        self._validate(Action.CANCEL, inp)

    @workflow.update(name="retry-disbursement")
    def retry_disbursement(self, inp: RetryDisbursementInput) -> ActionReceipt:
        last = self.state.disbursements[-1]
        self.state.disbursements.append(Disbursement(attempt=last.attempt + 1))
        return self._accept(Action.RETRY_DISBURSEMENT, inp, inp.reason)

    @retry_disbursement.validator
    def _v_retry_disbursement(self, inp: RetryDisbursementInput) -> None:
        self._validate(Action.RETRY_DISBURSEMENT, inp)

    @workflow.update(name="reconcile-disbursement")
    def reconcile_disbursement(self, inp: ReconcileDisbursementInput) -> ActionReceipt:
        attempt = self.state.disbursements[-1]
        attempt.reconciled = f"{inp.actor.staff_id}: {inp.reason}"
        self._disbursed(attempt, money(inp.amount), inp.transaction_ref, workflow.now())
        summary = f"{fmt_money(inp.amount)} ({inp.transaction_ref}) paid on {inp.paid_on}"
        self._set_stage(
            self._stage_after_funding(), f"disbursement reconciled: {summary}", inp.actor
        )
        return self._accept(Action.RECONCILE_DISBURSEMENT, inp, summary)

    @reconcile_disbursement.validator
    def _v_reconcile_disbursement(self, inp: ReconcileDisbursementInput) -> None:
        self._validate(Action.RECONCILE_DISBURSEMENT, inp)

    @workflow.update(name="unwind")
    def unwind(self, inp: UnwindInput) -> ActionReceipt:
        if self._unwind_after_funding and rules.funded_disbursement(self.state) is not None:
            self._start_unwinding(inp)
            return self._accept(Action.UNWIND, inp, inp.reason)
        self.state.outcome_reason = f"unwound by {inp.actor.staff_id}: {inp.reason}"
        self._set_stage(Stage.CANCELLED, f"unwound: {inp.reason}", inp.actor)
        return self._accept(Action.UNWIND, inp, inp.reason)

    @unwind.validator
    def _v_unwind(self, inp: UnwindInput) -> None:
        self._validate(Action.UNWIND, inp)

    def _start_unwinding(self, inp: UnwindInput) -> None:
        self._register_unwind_facts()
        self.state.outcome_reason = f"unwound after funding: {inp.reason}"
        self._set_stage(Stage.UNWINDING, f"rescinded after funding: {inp.reason}", inp.actor)
        self._unwind_next()

    def _unwind_next(self) -> None:
        """Start the newest step not yet undone (DealFlow's own), or wait for
        a person to record it; with none left the deal is CANCELLED."""
        step = rules.next_unwind_step(self.state.compensations)
        if step is None:
            reason = self.state.outcome_reason or "unwound after funding"
            self._set_stage(Stage.CANCELLED, reason)
            return
        if not rules.is_staff_step(step) and step.status == "pending":
            step.status = "running"
        self._project()

    def _register_unwind_facts(self) -> None:
        """The steps to undo for facts recorded before this run registered
        them (a deal continued from a run started before the patch)."""
        kinds = {c.kind for c in self.state.compensations}
        paid, sub = rules.funded_disbursement(self.state), self._approved_submission()
        steps: list[Compensation] = []
        if "repay_lender" not in kinds and paid and sub and sub.application_ref:
            at = paid.disbursed_at or workflow.now()
            steps.append(
                rules.repayment_step(self.inp.deal_id, sub.lender_id, sub.application_ref, paid, at)
            )
        if "reverse_invoice" not in kinds and self.state.invoice:
            steps.append(self._invoice_step(self._recorded_at(Action.RECORD_INVOICE)))
        if "release_mortgage" not in kinds and self.state.mortgage:
            steps.append(self._mortgage_step(self._recorded_at(Action.RECORD_MORTGAGE)))
        for step in steps:
            rules.register_step(self.state.compensations, step)

    def _recorded_at(self, action: Action) -> datetime:
        return next(
            (a.at for a in reversed(self.state.actions) if a.action == action.value),
            workflow.now(),
        )

    def _invoice_step(self, at: datetime) -> Compensation:
        invoice = self.state.invoice
        assert invoice is not None
        return Compensation(
            kind="reverse_invoice",
            key=f"{self.inp.deal_id}:reverse_invoice",
            registered_at=at,
            detail={"invoice_no": invoice.invoice_no, "amount": str(money(invoice.amount))},
        )

    def _mortgage_step(self, at: datetime) -> Compensation:
        mortgage = self.state.mortgage
        assert mortgage is not None
        return Compensation(
            kind="release_mortgage",
            key=f"{self.inp.deal_id}:release_mortgage",
            registered_at=at,
            detail={"registration_no": mortgage.registration_no, "lienholder": mortgage.lienholder},
        )

    @workflow.update(name="record-unwind-step")
    def record_unwind_step(self, inp: RecordUnwindStepInput) -> ActionReceipt:
        step = rules.next_unwind_step(self.state.compensations)
        assert step is not None and step.kind == inp.step, "the validator checked it"
        step.status = "done"
        step.done_at = workflow.now()
        step.evidence = inp.reference
        step.done_by = _by(inp)
        step.note = inp.note or ""
        self._count_compensation(step)
        self._unwind_next()
        return self._accept(Action.RECORD_UNWIND_STEP, inp, f"{inp.step}: {inp.reference}")

    @record_unwind_step.validator
    def _v_record_unwind_step(self, inp: RecordUnwindStepInput) -> None:
        self._validate(Action.RECORD_UNWIND_STEP, inp)

    def _condition(self, code: str) -> StipulationItem:
        item = rules.find_condition(self.state, code)
        assert item is not None, "the validator found it"
        return item

    @workflow.update(name="answer-stipulation")
    def answer_stipulation(self, inp: AnswerStipulationInput) -> ActionReceipt:
        item = self._condition(inp.code)
        item.note = inp.note
        self._stipulation_step(item, "received", _by(inp), inp.note)
        return self._accept(Action.ANSWER_STIPULATION, inp, f"{inp.code}: {inp.note}")

    @answer_stipulation.validator
    def _v_answer_stipulation(self, inp: AnswerStipulationInput) -> None:
        self._validate(Action.ANSWER_STIPULATION, inp)

    @workflow.update(name="clear-stipulation")
    def clear_stipulation(self, inp: ClearStipulationInput) -> ActionReceipt:
        item = self._condition(inp.code)
        self._stipulation_step(item, "cleared", _by(inp), inp.note or "", item.doc_id)
        answer = rules.answered_by(item, self.state.documents)
        return self._accept(Action.CLEAR_STIPULATION, inp, f"{inp.code} cleared ({answer})")

    @clear_stipulation.validator
    def _v_clear_stipulation(self, inp: ClearStipulationInput) -> None:
        self._validate(Action.CLEAR_STIPULATION, inp)

    @workflow.update(name="waive-stipulation")
    def waive_stipulation(self, inp: WaiveStipulationInput) -> ActionReceipt:
        item = self._condition(inp.code)
        item.reason = inp.reason
        self._stipulation_step(item, "waived", _by(inp), inp.reason)
        return self._accept(Action.WAIVE_STIPULATION, inp, f"{inp.code} waived: {inp.reason}")

    @waive_stipulation.validator
    def _v_waive_stipulation(self, inp: WaiveStipulationInput) -> None:
        self._validate(Action.WAIVE_STIPULATION, inp)

    @workflow.update(name="reject-stipulation-document")
    def reject_stipulation_document(self, inp: RejectStipulationDocumentInput) -> ActionReceipt:
        item = self._condition(inp.code)
        refused, item.doc_id, item.reason = item.doc_id, None, inp.reason
        self._stipulation_step(item, "rejected", _by(inp), inp.reason, refused)
        # The replacement is the customer's to bring: sales collects it.
        self._notify(
            "info",
            f"document {refused} for {inp.code} rejected: {inp.reason}; upload a replacement",
            [Role.SALES, Role.CREDIT],
        )
        return self._accept(
            Action.REJECT_STIPULATION_DOCUMENT,
            inp,
            f"{inp.code}: document {refused} rejected: {inp.reason}",
        )

    @reject_stipulation_document.validator
    def _v_reject_stipulation_document(self, inp: RejectStipulationDocumentInput) -> None:
        self._validate(Action.REJECT_STIPULATION_DOCUMENT, inp)

    # ------------------------------------------------------------------ queries

    @workflow.query
    def status(self) -> DealStatus:
        return self._status()

    def _status(self) -> DealStatus:
        view = self._view()
        due, _ = self._next_timer()
        last_disb = next(
            (d for d in reversed(self.state.disbursements) if d.status == "completed"), None
        )
        fees = (
            sum((f.amount for f in self.state.sales_contract.fees), money(0))
            if (self.state.sales_contract)
            else money(0)
        )
        return DealStatus(
            deal_id=self.inp.deal_id,
            workflow_id=workflow.info().workflow_id,
            dealer_id=self.deal.dealer_id,
            stage=self.state.stage,
            stage_entered_at=self.state.stage_entered_at,
            lender_id=self._lender_id(),
            checklist=view.checklist(),
            funding=view.funding(),
            documents=self.state.documents,
            pending=[] if self.state.stage.terminal else rules.pending_actions(view, due),
            submissions=self.state.submissions,
            stipulations=self.state.stipulation_items,
            disbursements=self.state.disbursements,
            mortgage_before_funding=view.mortgage_before_funding,
            money=MoneySummary(
                vehicle_price=self.deal.vehicle.price,
                down_payment=rules.required_down_payment(self.deal, view.approved_amount),
                amount_financed=view.financed_amount,
                approved_amount=view.approved_amount,
                down_payment_received=self.state.down_payment.amount
                if self.state.down_payment
                else None,
                disbursed=last_disb.amount if last_disb else None,
                fees=money(fees),
            ),
            loan=self._loan_schedule(view),
            transitions=self.state.transitions,
            notices=self.state.notices,
            compensations=self.state.compensations,
            outcome_reason=self.state.outcome_reason,
            adverse_action_reasons=self.state.adverse_action_reasons,
            follow_ups_missed=self.state.follow_ups_missed,
            applied_webhooks=self.state.applied_webhooks,
            applied_lender_webhooks=self.state.applied_lender_webhooks,
            version=self.state.version,
        )

    def _loan_schedule(self, view: rules.DealView) -> LoanSchedule | None:
        terms = view.approved_terms
        if terms is None:
            return None
        schedule = rules.loan_schedule(terms)
        confirmed = self.state.loan_terms_confirmed
        if confirmed is not None:
            schedule.confirmed_at = self.state.loan_terms_confirmed_at
            schedule.confirmed_by = f"{confirmed.actor.staff_id}/{confirmed.actor.role.value}"
        return schedule

    # ------------------------------------------------------------------ helpers

    def _view(self) -> rules.DealView:
        return rules.DealView(
            deal=self.deal,
            policy=self.policy,
            lenders=self.inp.lenders,
            state=self.state,
            now=workflow.now(),
            dealer_dates=self._dealer_dates,
            terms_confirmation=self._approved_terms,
            follow_ups_from_due_date=self._follow_ups_from_due_date,
            funding_package=self._funding_package,
            unwind_after_funding=self._unwind_after_funding,
        )

    def _current_submission(self) -> Submission | None:
        return self.state.submissions[-1] if self.state.submissions else None

    def _approved_submission(self) -> Submission | None:
        return self._view().approved_submission

    def _open_counter(self) -> Submission | None:
        return self._view().open_counter_offer()

    def _lender_id(self) -> str | None:
        sub = self._current_submission()
        return sub.lender_id if sub else None

    def _pending_text(self) -> str:
        due, _ = self._next_timer()
        items = rules.pending_actions(self._view(), due)
        return "; ".join(f"{p.role.value}: {p.what}" for p in items) or "nothing pending"


def _by(inp: ActionInput) -> str:
    return f"{inp.actor.staff_id}/{inp.actor.role.value}"


def _cause(e: ActivityError) -> str:
    cause = e.cause
    return str(cause.message if isinstance(cause, ApplicationError) else cause or e)
