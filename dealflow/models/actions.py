"""Staff actions: the `Action` names and the payload each one takes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from dealflow.models.base import (
    DecimalText,
    IdNumber,
    NonNegMoney,
    PosMoney,
    Ref,
    Strict,
    Text,
)
from dealflow.models.deal import Actor, DocumentKind, Party, RepaymentMethod


class Action(StrEnum):
    """Staff actions of docs/architecture.md §3.3, in URL spelling."""

    SIGN_SALES_CONTRACT = "sign-sales-contract"
    RECORD_DOCUMENT = "record-document"
    SUBMIT_APPLICATION = "submit-application"
    ACCEPT_COUNTER_OFFER = "accept-counter-offer"
    DECLINE_COUNTER_OFFER = "decline-counter-offer"
    CONFIRM_DOWN_PAYMENT = "confirm-down-payment"
    RECORD_INVOICE = "record-invoice"
    RECORD_INSURANCE = "record-insurance"
    RECORD_REPAYMENT_ACCOUNT = "record-repayment-account"
    CONFIRM_LOAN_TERMS = "confirm-loan-terms"
    SIGN_LOAN_CONTRACT = "sign-loan-contract"
    RECORD_CERTIFICATE = "record-certificate"
    RECORD_PURCHASE_TAX = "record-purchase-tax"
    RECORD_PLATE = "record-plate"
    RECORD_MORTGAGE = "record-mortgage"
    RECORD_STOCK_OUT = "record-stock-out"
    RECORD_SETTLEMENT = "record-settlement"
    DELIVER = "deliver"
    RECORD_FOLLOW_UP = "record-follow-up"
    CANCEL = "cancel"
    RETRY_DISBURSEMENT = "retry-disbursement"
    RECONCILE_DISBURSEMENT = "reconcile-disbursement"
    UNWIND = "unwind"
    RECORD_UNWIND_STEP = "record-unwind-step"
    ANSWER_STIPULATION = "answer-stipulation"
    CLEAR_STIPULATION = "clear-stipulation"
    WAIVE_STIPULATION = "waive-stipulation"
    REJECT_STIPULATION_DOCUMENT = "reject-stipulation-document"

    @property
    def update_name(self) -> str:
        return self.value.replace("-", "_")


class ActionInput(Strict):
    actor: Actor


class FeeItem(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    amount: NonNegMoney


CONTRACT_COPIES = ("information_clerk", "finance", "sales_consultant")


class SignSalesContractInput(ActionInput):
    contract_no: Ref
    fees: list[FeeItem] = Field(default_factory=list, max_length=50)
    accessories: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100
    )
    # The three-part form: red copy to the information clerk, white to
    # finance, green stays with the consultant.
    copies_routed_to: list[Literal["information_clerk", "finance", "sales_consultant"]]
    down_payment: NonNegMoney


class RecordDocumentInput(ActionInput):
    kind: DocumentKind
    party: Party = Party.APPLICANT
    file_name: Annotated[str, Field(min_length=1, max_length=200)]
    content_type: Annotated[str, Field(min_length=3, max_length=100)]
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    storage_key: Annotated[str, Field(min_length=1, max_length=300)]
    # For an ID card: the number printed on it, checked against the deal.
    id_number: IdNumber | None = None
    # For a bank statement: the period it covers.
    period_start: date | None = None
    period_end: date | None = None
    # For a stipulation document: which stipulation it satisfies.
    stipulation_code: Ref | None = None


class SubmitApplicationInput(ActionInput):
    form_no: Ref
    # Re-keyed from the paper form: must agree with the documents on file.
    applicant_id_number: IdNumber
    monthly_income: PosMoney


class AcceptCounterOfferInput(ActionInput):
    application_ref: Ref
    decision_seq: int


class DeclineCounterOfferInput(ActionInput):
    application_ref: Ref
    decision_seq: int
    reason: Text


class ConfirmDownPaymentInput(ActionInput):
    amount: PosMoney
    payment_ref: Ref


class RecordInvoiceInput(ActionInput):
    invoice_no: Ref
    amount: PosMoney
    # The certificate-of-conformity request filed with the information clerk.
    coc_request_no: Ref


class RecordInsuranceInput(ActionInput):
    policy_no: Ref
    insurer: Text
    first_beneficiary: Text
    cover_amount: PosMoney
    starts_on: date
    ends_on: date


class RecordRepaymentAccountInput(ActionInput):
    bank_name: Text
    account_no: Annotated[str, Field(pattern=r"^[0-9]{12,19}$")]


# An annual rate in percent (6.5 % is 6.50), as lenders quote it.
APR_TEXT = DecimalText(
    r"^(100(\.0{1,4})?|(0|[1-9]\d?)(\.\d{1,4})?)$",
    0,
    100,
    'percent a year, 0 to 100, as a decimal string with at most 4 places, e.g. "6.50"',
)
AprPercent = Annotated[
    Decimal,
    Field(ge=0, le=100, max_digits=7, decimal_places=4),
    APR_TEXT,
    APR_TEXT.annotation(),
]
LoanTermMonths = Annotated[int, Field(ge=1, le=120)]


class ConfirmLoanTermsInput(ActionInput):
    """The customer confirms the rate and repayment before the loan contract is
    printed: the terms as approved, and what they repay in all."""

    amount: PosMoney
    apr: AprPercent
    term_months: LoanTermMonths
    method: RepaymentMethod
    total_repayable: PosMoney


class SignLoanContractInput(ActionInput):
    contract_no: Ref
    copies_signed: int
    # The terms printed on the contract; when given, they must be the approved ones.
    amount: PosMoney | None = None
    apr: AprPercent | None = None
    term_months: LoanTermMonths | None = None


class EvidenceInput(ActionInput):
    # A reference to the evidence: a document sha256, a scan's storage key or
    # an office receipt number.
    evidence: Text


class RecordCertificateInput(EvidenceInput):
    certificate_no: Ref


class RecordPurchaseTaxInput(EvidenceInput):
    receipt_no: Ref
    amount: PosMoney


class RecordPlateInput(EvidenceInput):
    plate_no: Annotated[str, Field(min_length=5, max_length=12)]


class RecordMortgageInput(EvidenceInput):
    registration_no: Ref
    lienholder: Text


class RecordStockOutInput(ActionInput):
    form_no: Ref
    copies_routed_to: list[Literal["information_clerk", "warehouse"]]


class RecordSettlementInput(ActionInput):
    settlement_no: Ref
    amount: NonNegMoney


class DeliverInput(EvidenceInput):
    after_sales_advisor: Text
    service_card_given: bool
    safety_briefing_given: bool


class RecordFollowUpInput(ActionInput):
    call: Literal["day3", "day30"]
    outcome: Text
    review_requested: bool = False


class CancelInput(ActionInput):
    reason: Text


class RetryDisbursementInput(ActionInput):
    """Ask the lender to pay out again after the last request failed, was
    refused or was answered with another amount."""

    reason: Text


class ReconcileDisbursementInput(ActionInput):
    """Record what the lender actually paid when its event never came or named
    another amount: from the bank statement, with the reason."""

    amount: PosMoney
    transaction_ref: Ref
    paid_on: date
    reason: Text


class UnwindInput(ActionInput):
    """End a deal whose disbursement cannot be completed, or a funded deal the
    customer rescinded before delivery: every step done is undone, newest first."""

    reason: Text


class RecordUnwindStepInput(ActionInput):
    """One step of an unwind after funding done outside DealFlow, with its
    evidence: the mortgage release no, the red-letter invoice no, the insurer's
    cancellation no or the bank's refund ref."""

    step: Literal["release_mortgage", "reverse_invoice", "cancel_insurance", "refund_down_payment"]
    reference: Ref
    note: Text | None = None


class StipulationActionInput(ActionInput):
    """A step on one of the lender's conditions, named by its code."""

    code: Ref


class AnswerStipulationInput(StipulationActionInput):
    """Answer a condition that is not a document (add a guarantor, a larger
    down payment) with a note saying how it is met."""

    note: Text


class ClearStipulationInput(StipulationActionInput):
    """Credit accepts what answers a condition (its document or note)."""

    note: Text | None = None


class WaiveStipulationInput(StipulationActionInput):
    """Credit drops a condition, with the reason (e.g. the lender agreed)."""

    reason: Text


class RejectStipulationDocumentInput(StipulationActionInput):
    """Credit refuses the document that answers a condition, with the reason:
    the condition reopens and needs a new document."""

    reason: Text


ACTION_INPUTS: dict[Action, type[ActionInput]] = {
    Action.SIGN_SALES_CONTRACT: SignSalesContractInput,
    Action.RECORD_DOCUMENT: RecordDocumentInput,
    Action.SUBMIT_APPLICATION: SubmitApplicationInput,
    Action.ACCEPT_COUNTER_OFFER: AcceptCounterOfferInput,
    Action.DECLINE_COUNTER_OFFER: DeclineCounterOfferInput,
    Action.CONFIRM_DOWN_PAYMENT: ConfirmDownPaymentInput,
    Action.RECORD_INVOICE: RecordInvoiceInput,
    Action.RECORD_INSURANCE: RecordInsuranceInput,
    Action.RECORD_REPAYMENT_ACCOUNT: RecordRepaymentAccountInput,
    Action.CONFIRM_LOAN_TERMS: ConfirmLoanTermsInput,
    Action.SIGN_LOAN_CONTRACT: SignLoanContractInput,
    Action.RECORD_CERTIFICATE: RecordCertificateInput,
    Action.RECORD_PURCHASE_TAX: RecordPurchaseTaxInput,
    Action.RECORD_PLATE: RecordPlateInput,
    Action.RECORD_MORTGAGE: RecordMortgageInput,
    Action.RECORD_STOCK_OUT: RecordStockOutInput,
    Action.RECORD_SETTLEMENT: RecordSettlementInput,
    Action.DELIVER: DeliverInput,
    Action.RECORD_FOLLOW_UP: RecordFollowUpInput,
    Action.CANCEL: CancelInput,
    Action.RETRY_DISBURSEMENT: RetryDisbursementInput,
    Action.RECONCILE_DISBURSEMENT: ReconcileDisbursementInput,
    Action.UNWIND: UnwindInput,
    Action.RECORD_UNWIND_STEP: RecordUnwindStepInput,
    Action.ANSWER_STIPULATION: AnswerStipulationInput,
    Action.CLEAR_STIPULATION: ClearStipulationInput,
    Action.WAIVE_STIPULATION: WaiveStipulationInput,
    Action.REJECT_STIPULATION_DOCUMENT: RejectStipulationDocumentInput,
}
