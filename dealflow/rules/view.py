"""What the action and pending-work rules read of one deal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from dealflow.models import (
    Action,
    ChecklistItem,
    DealInput,
    DealPolicy,
    DealState,
    Decision,
    Disbursement,
    FundingItem,
    LenderRef,
    LoanTerms,
    RepaymentMethod,
    Submission,
    money,
)
from dealflow.rules.dates import dealer_date
from dealflow.rules.documents import checklist
from dealflow.rules.funding import funding_checklist


def stalled_disbursement(state: DealState) -> Disbursement | None:
    """The last disbursement attempt when nothing is open at the lender any
    more and the deal cannot go on by itself: it failed for the last time, the
    request was refused, or the lender paid another amount than approved."""
    if not state.disbursements:
        return None
    last = state.disbursements[-1]
    if last.status in ("failed", "error") or (last.status == "requested" and last.mismatch):
        return last
    return None


def follow_up_due(view: DealView, call: str) -> datetime | None:
    """When a follow-up call falls due: the policy's days after delivery."""
    delivered = view.state.delivered_at
    if delivered is None:
        return None
    offset = view.policy.follow_up_first if call == "day3" else view.policy.follow_up_second
    return delivered + offset


def approved_submission(submissions: list[Submission]) -> Submission | None:
    """The submission whose terms the deal goes ahead on: the latest approved
    one, or one whose counter-offer was accepted."""
    for s in reversed(submissions):
        cur = s.current
        if cur is None:
            continue
        if cur.decision is Decision.APPROVED or (
            cur.decision is Decision.COUNTER_OFFER and s.counter_offer_response == "accepted"
        ):
            return s
    return None


@dataclass(frozen=True)
class DealView:
    """What an action check needs to know about a deal."""

    deal: DealInput
    policy: DealPolicy
    lenders: list[LenderRef]
    state: DealState
    now: datetime
    # Whether dates are the dealer's (the policy's time zone) or UTC's: deals
    # started before the dealer's date was used keep UTC (patch "dealer-dates").
    dealer_dates: bool = False
    # Whether the customer confirms the approved terms before the loan
    # contract is signed: deals started before keep signing without (patch
    # "approved-terms-in-loan-contract").
    terms_confirmation: bool = False
    # Whether a follow-up call is taken only from its due date: deals started
    # before took it at any time (patch "follow-up-from-due-date").
    follow_ups_from_due_date: bool = False
    # Whether the loan contract waits for the funding package and the
    # disbursement request carries it: deals started before sent reference
    # numbers only (patch "funding-package").
    funding_package: bool = False
    # Whether a funded deal may be unwound before delivery: deals started
    # before registered no lender repayment (patch "unwind-after-funding").
    unwind_after_funding: bool = False

    @property
    def today(self) -> date:
        return self.date_of(self.now)

    def date_of(self, moment: datetime) -> date:
        return dealer_date(self.policy, moment) if self.dealer_dates else moment.date()

    def lender(self, lender_id: str) -> LenderRef:
        return next(lender for lender in self.lenders if lender.id == lender_id)

    @property
    def current_submission(self) -> Submission | None:
        return self.state.submissions[-1] if self.state.submissions else None

    @property
    def approved_submission(self) -> Submission | None:
        return approved_submission(self.state.submissions)

    @property
    def approved_amount(self) -> Decimal | None:
        s = self.approved_submission
        return s.current.approved_amount if s and s.current else None

    @property
    def financed_amount(self) -> Decimal:
        return money(self.approved_amount or self.deal.amount_financed)

    @property
    def approved_terms(self) -> LoanTerms | None:
        """The terms the loan contract must carry: the approved (or accepted)
        amount, the lender's rate and term (the requested term when it names
        none), repaid by the product's method. None while no lender approved
        with a rate."""
        s = self.approved_submission
        if s is None or s.current is None or s.current.apr is None:
            return None
        return LoanTerms(
            amount=self.financed_amount,
            apr=s.current.apr,
            term_months=s.current.term_months or self.deal.term_months,
            method=self.policy.repayment_method.get(
                self.deal.product, RepaymentMethod.EQUAL_INSTALMENTS
            ),
        )

    @property
    def funded(self) -> bool:
        return any(d.status == "completed" for d in self.state.disbursements)

    @property
    def mortgage_before_funding(self) -> bool:
        """Whether the lender the deal goes ahead with funds only once its
        mortgage is registered: registration then comes before disbursement."""
        s = self.approved_submission
        return s is not None and self.lender(s.lender_id).mortgage_before_funding

    @property
    def lender_legal_name(self) -> str | None:
        s = self.approved_submission
        return self.lender(s.lender_id).legal_name if s else None

    def checklist_as_of(self) -> date:
        # Statements are judged as of the application: the list must not turn
        # incomplete again while the deal waits weeks for the lender.
        if self.state.application is not None:
            submitted = next(
                (a.at for a in self.state.actions if a.action == Action.SUBMIT_APPLICATION.value),
                None,
            )
            if submitted is not None:
                return self.date_of(submitted)
        return self.today

    def funding(self) -> list[FundingItem]:
        return funding_checklist(self.state.documents) if self.funding_package else []

    def checklist(self) -> list[ChecklistItem]:
        return checklist(self.deal, self.state, self.policy, self.checklist_as_of())

    def open_counter_offer(self) -> Submission | None:
        s = self.current_submission
        if (
            s is not None
            and s.current is not None
            and s.current.decision is Decision.COUNTER_OFFER
            and s.counter_offer_response is None
            and s.status == "decided"
        ):
            return s
        return None
