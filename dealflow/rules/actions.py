"""The checks on one staff action: role, stage, then what its payload says.

One small check per action, each named for the rule it enforces; actions
whose payload the models already fully validate have none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from dealflow.models import (
    AcceptCounterOfferInput,
    Action,
    ActionInput,
    AnswerStipulationInput,
    CancelInput,
    ClearStipulationInput,
    ConfirmDownPaymentInput,
    ConfirmLoanTermsInput,
    DeclineCounterOfferInput,
    DeliverInput,
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
    RetryDisbursementInput,
    SignLoanContractInput,
    SignSalesContractInput,
    Stage,
    StipulationActionInput,
    SubmitApplicationInput,
    UnwindInput,
    WaiveStipulationInput,
    fmt_money,
    money,
)
from dealflow.rules.documents import (
    checklist_complete,
    describe_missing,
    find_duplicate,
    validate_document,
)
from dealflow.rules.errors import RuleError, conflict, invalid
from dealflow.rules.funding import (
    check_document_stage,
    funding_document_problem,
    is_funding_document,
)
from dealflow.rules.money import required_down_payment
from dealflow.rules.permissions import check_document_role, check_role, check_stage
from dealflow.rules.schedule import loan_schedule
from dealflow.rules.stipulations import collecting, find_condition, stipulation_problem
from dealflow.rules.unwind import funded_disbursement, unwind_step_problem
from dealflow.rules.view import DealView, follow_up_due, stalled_disbursement


def check_action(action: Action, inp: ActionInput, view: DealView) -> None:
    """Role, stage and content of one staff action. Raises RuleError."""
    check_role(action, inp.actor)
    check_stage(action, view.state.stage)
    for payload_type in type(inp).__mro__:
        check = _CHECKS.get(payload_type)
        if check is not None:
            check(inp, view)
            return


def _eq_money(label: str, got: Decimal, want: Decimal) -> None:
    if money(got) != money(want):
        raise invalid(f"{label} {fmt_money(got)} does not match {fmt_money(want)}")


def _missing_copies(routed_to: Sequence[str], required: set[str]) -> list[str]:
    return sorted(required - set(routed_to))


def _sales_contract_routed_with_agreed_down_payment(
    inp: SignSalesContractInput, view: DealView
) -> None:
    missing = _missing_copies(
        inp.copies_routed_to, {"information_clerk", "finance", "sales_consultant"}
    )
    if missing:
        raise invalid("the three contract copies must be routed; missing: " + ", ".join(missing))
    _eq_money("the contract's down payment", inp.down_payment, view.deal.down_payment)


def _document_valid(inp: RecordDocumentInput, view: DealView) -> None:
    check_document_role(inp.kind, inp.actor)
    if is_funding_document(inp.kind):
        # The same file again (a retry whose first answer was lost, the deal
        # gone on to DISBURSEMENT with it) changes nothing: no need to wait.
        already = find_duplicate(view.state, inp)
        repeat = already is not None and already.kind is inp.kind
        stalled = repeat or stalled_disbursement(view.state) is not None
        problem = funding_document_problem(
            inp.kind, view.state.stage, view.funding_package, stalled
        )
        if problem is not None:
            raise problem
    else:
        check_document_stage(inp.kind, view.state.stage)
    validate_document(view.deal, view.state, view.policy, inp, view.today)


def _application_complete_and_matching(inp: SubmitApplicationInput, view: DealView) -> None:
    items = view.checklist()
    if not checklist_complete(items):
        raise conflict("documents are incomplete: " + describe_missing(items))
    applicant = view.deal.customer.applicant
    if inp.applicant_id_number != applicant.id_number:
        raise invalid("applicant_id_number does not match the applicant's ID card")
    _eq_money("declared monthly income", inp.monthly_income, applicant.monthly_income)


def _answers_the_open_counter_offer(
    inp: AcceptCounterOfferInput | DeclineCounterOfferInput, view: DealView
) -> None:
    submission = view.open_counter_offer()
    if submission is None or submission.current is None:
        raise conflict("there is no open counter-offer to answer")
    open_offer = (submission.application_ref, submission.current.decision_seq)
    if (inp.application_ref, inp.decision_seq) != open_offer:
        raise conflict(
            f"the open counter-offer is {open_offer[0]} #{open_offer[1]};"
            f" got {inp.application_ref} #{inp.decision_seq}"
        )


def _down_payment_as_required(inp: ConfirmDownPaymentInput, view: DealView) -> None:
    required = required_down_payment(view.deal, view.approved_amount)
    if money(inp.amount) != required:
        raise invalid(
            f"down payment {fmt_money(inp.amount)} does not match the contract's "
            f"{fmt_money(required)}"
        )


def _invoice_for_the_price(inp: RecordInvoiceInput, view: DealView) -> None:
    _eq_money("invoice amount", inp.amount, view.deal.vehicle.price)


def _policy_protects_the_lender(inp: RecordInsuranceInput, view: DealView) -> None:
    legal = view.lender_legal_name
    if legal is not None and inp.first_beneficiary.strip() != legal:
        raise invalid(
            f"first beneficiary must be the lender {legal!r}, not {inp.first_beneficiary!r}"
        )
    if inp.cover_amount < view.financed_amount:
        raise invalid(
            f"cover {fmt_money(inp.cover_amount)} is below the amount financed "
            f"{fmt_money(view.financed_amount)}"
        )
    if inp.ends_on <= inp.starts_on:
        raise invalid("the policy must end after it starts")
    if inp.ends_on < view.today:
        raise invalid(f"the policy ended on {inp.ends_on}")


def _repayment_account_once(inp: RecordRepaymentAccountInput, view: DealView) -> None:
    if view.state.repayment_account is not None:
        raise conflict("the repayment account is already recorded")


def _terms_as_approved_once(inp: ConfirmLoanTermsInput, view: DealView) -> None:
    if view.state.loan_terms_confirmed is not None:
        raise conflict("the customer has already confirmed the loan terms")
    terms = view.approved_terms
    if terms is None:
        raise conflict("the lender's approval names no rate: there are no terms to confirm")
    _eq_money("the amount", inp.amount, terms.amount)
    if inp.apr != terms.apr:
        raise invalid(f"the APR {inp.apr}% is not the approved {terms.apr}%")
    if inp.term_months != terms.term_months:
        raise invalid(
            f"the term of {inp.term_months} months is not the approved {terms.term_months}"
        )
    if inp.method is not terms.method:
        raise invalid(
            f"the repayment method {inp.method.value} is not this product's {terms.method.value}"
        )
    total = loan_schedule(terms).total_repayable
    if money(inp.total_repayable) != total:
        raise invalid(
            f"the total repayable {fmt_money(inp.total_repayable)} is not the schedule's "
            f"{fmt_money(total)}"
        )


def _loan_contract_as_confirmed_in_three_copies_once(
    inp: SignLoanContractInput, view: DealView
) -> None:
    if inp.copies_signed != 3:
        raise invalid(f"the loan contract is signed in three copies; got {inp.copies_signed}")
    if view.state.loan_contract is not None:
        raise conflict("the loan contract is already signed")
    terms = view.approved_terms
    if terms is None:
        return
    if inp.amount is not None:
        _eq_money("the contract's amount", inp.amount, terms.amount)
    if inp.apr is not None and inp.apr != terms.apr:
        raise invalid(f"the contract's APR {inp.apr}% is not the approved {terms.apr}%")
    if inp.term_months is not None and inp.term_months != terms.term_months:
        raise invalid(
            f"the contract's term of {inp.term_months} months is not the approved "
            f"{terms.term_months}"
        )
    if view.terms_confirmation and view.state.loan_terms_confirmed is None:
        raise conflict(
            "the customer has not confirmed the rate and repayment yet: confirm-loan-terms first"
        )


def _certificate_once(inp: RecordCertificateInput, view: DealView) -> None:
    if view.state.certificate is not None:
        raise conflict("the certificate of conformity is already recorded")


def _purchase_tax_once(inp: RecordPurchaseTaxInput, view: DealView) -> None:
    if view.state.purchase_tax is not None:
        raise conflict("the purchase tax is already recorded")


def _plate_once_after_certificate_and_tax(inp: RecordPlateInput, view: DealView) -> None:
    state = view.state
    if state.plate is not None:
        raise conflict("the plate is already recorded")
    if state.certificate is None or state.purchase_tax is None:
        raise conflict("a plate needs the certificate of conformity and the purchase tax first")


def _mortgage_once_for_the_lender(inp: RecordMortgageInput, view: DealView) -> None:
    state = view.state
    if state.mortgage is not None:
        raise conflict("the mortgage is already recorded")
    if state.plate is None:
        raise conflict("the mortgage can be registered only after the plate is issued")
    legal = view.lender_legal_name
    if legal is not None and inp.lienholder.strip() != legal:
        raise invalid(f"the lienholder must be the lender {legal!r}")


def _stock_out_routed_once(inp: RecordStockOutInput, view: DealView) -> None:
    missing = _missing_copies(inp.copies_routed_to, {"information_clerk", "warehouse"})
    if missing:
        raise invalid("stock-out copies must go to: " + ", ".join(missing))
    if view.state.stock_out is not None:
        raise conflict("the stock-out form is already recorded")


def _settlement_once(inp: RecordSettlementInput, view: DealView) -> None:
    if view.state.settlement is not None:
        raise conflict("the final settlement is already recorded")


def _delivery_after_stock_out_and_settlement(inp: DeliverInput, view: DealView) -> None:
    if view.state.stock_out is None or view.state.settlement is None:
        raise conflict("delivery needs the stock-out form and the final settlement first")
    if not (inp.service_card_given and inp.safety_briefing_given):
        raise invalid("delivery needs the customer-service card and the safe-driving briefing")


def _follow_up_calls_in_order_once_when_due(inp: RecordFollowUpInput, view: DealView) -> None:
    if inp.call in view.state.follow_ups:
        raise conflict(f"the {inp.call} follow-up call is already recorded")
    if inp.call == "day30" and "day3" not in view.state.follow_ups:
        raise conflict("record the day-3 follow-up call first")
    due = follow_up_due(view, inp.call)
    if view.follow_ups_from_due_date and due is not None and view.today < view.date_of(due):
        raise conflict(
            f"the {inp.call} follow-up call falls due on {view.date_of(due).isoformat()}; "
            "it can be recorded from that day on"
        )


def _cancel_before_funding_requested(inp: CancelInput, view: DealView) -> None:
    if view.state.stage is Stage.REGISTRATION and (view.funded or view.state.disbursements):
        remedy = "; unwind the deal instead" if view.unwind_after_funding else ""
        raise conflict(
            "the lender has funded the loan: cancel is possible only until the disbursement "
            "is requested" + remedy
        )


def _disbursement_stalled(inp: RetryDisbursementInput | UnwindInput, view: DealView) -> None:
    if stalled_disbursement(view.state) is None:
        last = view.state.disbursements[-1] if view.state.disbursements else None
        state = f"attempt {last.attempt} is {last.status}" if last else "nothing was requested"
        raise conflict(f"the disbursement is not stalled ({state}); wait for the lender's answer")


def _stalled_or_funded_and_not_delivered(inp: UnwindInput, view: DealView) -> None:
    """A stalled disbursement is unwound as a cancellation; a funded loan is
    unwound step by step until the vehicle is delivered, from the facts
    (paid out, not delivered), whatever order the lender's stages run in."""
    state = view.state
    if state.delivery is not None:
        delivered = view.date_of(state.delivered_at) if state.delivered_at else "already"
        raise conflict(f"the vehicle was delivered ({delivered}): a delivered deal is not unwound")
    paid = funded_disbursement(state)
    if paid is None:
        if state.stage is Stage.DISBURSEMENT:
            _disbursement_stalled(inp, view)
            return
        raise conflict("the loan is not funded: nothing was paid out to unwind; cancel instead")
    if not view.unwind_after_funding:
        raise conflict(
            "this deal was funded before unwinding after funding existed: settle the "
            "repayment with the lender outside DealFlow"
        )


def _unwind_step_next_and_by_its_role(inp: RecordUnwindStepInput, view: DealView) -> None:
    problem = unwind_step_problem(view.state, inp.step, inp.actor.role)
    if problem is None:
        return
    kind, _, message = problem.partition(": ")
    raise RuleError("forbidden" if kind == "forbidden" else "conflict", message)


def _reconciled_within_tolerance(inp: ReconcileDisbursementInput, view: DealView) -> None:
    last = view.state.disbursements[-1] if view.state.disbursements else None
    if last is None or last.status == "completed":
        raise conflict("there is no open disbursement to reconcile")
    if inp.paid_on > view.today:
        raise invalid(f"paid_on {inp.paid_on.isoformat()} is in the future")
    approved = view.financed_amount
    difference = abs(money(inp.amount) - approved)
    tolerance = view.policy.disbursement_tolerance
    if difference > tolerance:
        raise invalid(
            f"paid {fmt_money(inp.amount)} differs from the approved {fmt_money(approved)} "
            f"by {fmt_money(difference)}, more than the policy's tolerance of "
            f"{fmt_money(tolerance)}; retry the disbursement or unwind the deal"
        )


def _condition_step(action: Action, inp: StipulationActionInput, view: DealView) -> None:
    """A step on one of the lender's conditions: the condition is one the
    deal is answering now, and the step fits where it is in its lifecycle."""
    state = view.state
    if not collecting(state):
        raise conflict("the deal is not answering any lender conditions now")
    item = find_condition(state, inp.code)
    if item is None:
        answering = collecting(state)
        codes = ", ".join(i.code for i in answering)
        raise invalid(
            f"{inp.code} is not a condition of the lender's decision on submission "
            f"{answering[0].submission_no} (conditions: {codes})"
        )
    problem = stipulation_problem(action, item)
    if problem is not None:
        raise problem


def _blank(text: str | None) -> bool:
    return text is not None and not text.strip()


def _condition_answered_by_a_note(inp: AnswerStipulationInput, view: DealView) -> None:
    if _blank(inp.note):
        raise invalid(f"the note answering {inp.code} is empty; say how it is met")
    _condition_step(Action.ANSWER_STIPULATION, inp, view)


def _condition_cleared_once_answered(inp: ClearStipulationInput, view: DealView) -> None:
    _condition_step(Action.CLEAR_STIPULATION, inp, view)


def _condition_waived_with_a_reason(inp: WaiveStipulationInput, view: DealView) -> None:
    if _blank(inp.reason):
        raise invalid(f"a reason is required to waive {inp.code}")
    _condition_step(Action.WAIVE_STIPULATION, inp, view)


def _document_rejected_with_a_reason(inp: RejectStipulationDocumentInput, view: DealView) -> None:
    if _blank(inp.reason):
        raise invalid(f"a reason is required to reject the document answering {inp.code}")
    _condition_step(Action.REJECT_STIPULATION_DOCUMENT, inp, view)


# Keyed by payload type: each action has its own payload model.
_CHECKS: dict[type, Callable[[Any, DealView], None]] = {
    SignSalesContractInput: _sales_contract_routed_with_agreed_down_payment,
    RecordDocumentInput: _document_valid,
    SubmitApplicationInput: _application_complete_and_matching,
    AcceptCounterOfferInput: _answers_the_open_counter_offer,
    DeclineCounterOfferInput: _answers_the_open_counter_offer,
    ConfirmDownPaymentInput: _down_payment_as_required,
    RecordInvoiceInput: _invoice_for_the_price,
    RecordInsuranceInput: _policy_protects_the_lender,
    RecordRepaymentAccountInput: _repayment_account_once,
    ConfirmLoanTermsInput: _terms_as_approved_once,
    SignLoanContractInput: _loan_contract_as_confirmed_in_three_copies_once,
    RecordCertificateInput: _certificate_once,
    RecordPurchaseTaxInput: _purchase_tax_once,
    RecordPlateInput: _plate_once_after_certificate_and_tax,
    RecordMortgageInput: _mortgage_once_for_the_lender,
    RecordStockOutInput: _stock_out_routed_once,
    RecordSettlementInput: _settlement_once,
    DeliverInput: _delivery_after_stock_out_and_settlement,
    RecordFollowUpInput: _follow_up_calls_in_order_once_when_due,
    CancelInput: _cancel_before_funding_requested,
    RetryDisbursementInput: _disbursement_stalled,
    ReconcileDisbursementInput: _reconciled_within_tolerance,
    UnwindInput: _stalled_or_funded_and_not_delivered,
    RecordUnwindStepInput: _unwind_step_next_and_by_its_role,
    AnswerStipulationInput: _condition_answered_by_a_note,
    ClearStipulationInput: _condition_cleared_once_answered,
    WaiveStipulationInput: _condition_waived_with_a_reason,
    RejectStipulationDocumentInput: _document_rejected_with_a_reason,
}
