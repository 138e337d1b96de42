"""The data every part of DealFlow exchanges: deal body, policy, staff actions,
lender events, workflow state and status, activity inputs.

Pure pydantic, no I/O: the workflow imports this module (passed through the
sandbox), so everything here must stay deterministic. Every workflow, update,
signal and activity takes exactly one of these models, so fields can be added
compatibly later.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Money is CNY with two places, never float. `allow_inf_nan=False` and the
# digit limits make "1e400" or "NaN" a validation error rather than a value.
Money = Annotated[Decimal, Field(max_digits=14, decimal_places=2, allow_inf_nan=False)]
NonNegMoney = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
PosMoney = Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
Ref = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")]
Text = Annotated[str, Field(min_length=1, max_length=500)]

CENT = Decimal("0.01")


def money(value: Decimal | int | str) -> Decimal:
    return Decimal(value).quantize(CENT)


def fmt_money(value: Decimal | int | str) -> str:
    """30000 -> '30,000.00': the form clerks read in error messages."""
    return f"{money(value):,.2f}"


class Strict(BaseModel):
    # Unknown fields are an error at every public entry point: a typo in a
    # payload must not be silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- enums


class Stage(StrEnum):
    CONTRACT = "CONTRACT"
    DOCUMENTS = "DOCUMENTS"
    APPLICATION = "APPLICATION"
    UNDERWRITING = "UNDERWRITING"
    DOWN_PAYMENT = "DOWN_PAYMENT"
    INVOICING = "INVOICING"
    INSURANCE = "INSURANCE"
    LOAN_CONTRACT = "LOAN_CONTRACT"
    DISBURSEMENT = "DISBURSEMENT"
    REGISTRATION = "REGISTRATION"
    DELIVERY = "DELIVERY"
    FOLLOW_UP = "FOLLOW_UP"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    DECLINED = "DECLINED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STAGES


TERMINAL_STAGES = frozenset({Stage.COMPLETED, Stage.CANCELLED, Stage.DECLINED, Stage.EXPIRED})
STAGE_ORDER = list(Stage)


class Role(StrEnum):
    SALES = "sales"
    CREDIT = "credit"
    FINANCE = "finance"
    INSURANCE = "insurance"
    REGISTRATION = "registration"
    DELIVERY = "delivery"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Product(StrEnum):
    NEW_CAR = "new_car"  # new car for own use
    NEW_ENERGY_CAR = "new_energy_car"
    USED_CAR = "used_car"


class Party(StrEnum):
    APPLICANT = "applicant"
    SPOUSE = "spouse"


class DocumentKind(StrEnum):
    ID_CARD = "id_card"
    DRIVERS_LICENCE = "drivers_licence"
    BANK_STATEMENT = "bank_statement"
    PROOF_OF_RESIDENCE = "proof_of_residence"
    PROOF_OF_INCOME = "proof_of_income"
    HOUSEHOLD_REGISTER = "household_register"
    MARRIAGE_CERTIFICATE = "marriage_certificate"
    # Documents a lender asks for in its stipulations.
    STIPULATION = "stipulation"


class Decision(StrEnum):
    APPROVED = "approved"
    CONDITIONAL = "conditional"
    COUNTER_OFFER = "counter_offer"
    DECLINED = "declined"


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

    @property
    def update_name(self) -> str:
        return self.value.replace("-", "_")


# --------------------------------------------------------------------------- deal body


class Actor(Strict):
    """Who acted. Taken from the token (API) or the operator's flags (CLI), never a body."""

    staff_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    role: Role


SYSTEM_ACTOR = Actor(staff_id="dealflow", role=Role.ADMIN)


class Person(Strict):
    full_name: Annotated[str, Field(min_length=1, max_length=100)]
    id_number: Annotated[str, Field(min_length=15, max_length=18)]
    phone: Annotated[str, Field(pattern=r"^\+?[0-9 -]{6,20}$")]


class Applicant(Person):
    married: bool = False
    monthly_income: PosMoney
    employer: Annotated[str, Field(max_length=200)] = ""


class Customer(Strict):
    applicant: Applicant
    spouse: Person | None = None


class Vehicle(Strict):
    vin: Annotated[str, Field(min_length=17, max_length=17)]
    make: Annotated[str, Field(min_length=1, max_length=60)]
    model: Annotated[str, Field(min_length=1, max_length=60)]
    condition: Literal["new", "used"]
    new_energy: bool = False
    price: PosMoney

    @field_validator("vin")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()


class DealInput(Strict):
    """The body of `POST /api/deals` and of `starter.py start` (examples/deal.json)."""

    dealer_id: Ref
    customer: Customer
    vehicle: Vehicle
    down_payment: NonNegMoney
    term_months: Annotated[int, Field(ge=6, le=84)]
    product: Product
    lender_ids: Annotated[list[Ref], Field(min_length=1, max_length=10)]

    @property
    def amount_financed(self) -> Decimal:
        return money(self.vehicle.price - self.down_payment)


class LenderRef(Strict):
    id: str
    legal_name: str


def _days(n: float) -> timedelta:
    return timedelta(days=n)


class DealPolicy(Strict):
    """Deadlines, reminders and escalations (docs/architecture.md §1). Copied into the workflow
    input at start so a history says by itself which rules the deal ran under."""

    contract_deadline: timedelta = _days(7)
    documents_reminder_every: timedelta = _days(3)
    documents_deadline: timedelta = _days(30)
    application_deadline: timedelta = _days(7)
    underwriting_escalate_after: timedelta = _days(5)
    underwriting_timeout: timedelta = _days(15)
    down_payment_deadline: timedelta = _days(14)
    invoicing_escalate_after: timedelta = _days(7)
    insurance_escalate_after: timedelta = _days(7)
    loan_contract_escalate_after: timedelta = _days(14)
    disbursement_escalate_after: timedelta = _days(3)
    registration_reminder_every: timedelta = _days(7)
    registration_escalate_after: timedelta = _days(60)
    delivery_escalate_after: timedelta = _days(14)
    follow_up_first: timedelta = _days(3)
    follow_up_second: timedelta = _days(30)
    # A follow-up call not recorded this long after it fell due is escalated
    # and the deal closes with the call marked missed, so no deal stays open forever.
    follow_up_grace: timedelta = _days(7)
    max_disbursement_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    max_loan_ratio: dict[Product, Decimal] = Field(
        default_factory=lambda: {
            Product.NEW_CAR: Decimal("0.80"),
            Product.NEW_ENERGY_CAR: Decimal("0.85"),
            Product.USED_CAR: Decimal("0.70"),
        }
    )
    bank_statement_months: Annotated[int, Field(ge=1, le=24)] = 6
    max_document_bytes: Annotated[int, Field(ge=1)] = 20 * 1024 * 1024
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["application/pdf", "image/jpeg", "image/png"]
    )
    # Continue-as-new well before Temporal's own suggestion (~10k events / 10 MB
    # history) so a deal that waits years on registration keeps a small history.
    # Tests lower it to exercise continue-as-new mid-deal.
    max_history_events: Annotated[int, Field(ge=50)] = 5000


# --------------------------------------------------------------------------- staff actions


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
    id_number: str | None = None
    # For a bank statement: the period it covers.
    period_start: date | None = None
    period_end: date | None = None
    # For a stipulation document: which stipulation it satisfies.
    stipulation_code: Ref | None = None


class SubmitApplicationInput(ActionInput):
    form_no: Ref
    # Re-keyed from the paper form: must agree with the documents on file.
    applicant_id_number: str
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


class SignLoanContractInput(ActionInput):
    contract_no: Ref
    copies_signed: int


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
}


# --------------------------------------------------------------------------- lender events


class Stipulation(Strict):
    code: Ref
    description: Text


class Reason(Strict):
    code: Ref
    text: Text


class ApplicationDecided(BaseModel):
    deal_id: str
    application_ref: str
    decision_seq: int
    decision: Decision
    approved_amount: Money | None = None
    apr: Decimal | None = None
    term_months: int | None = None
    stipulations: list[Stipulation] = Field(default_factory=list)
    reasons: list[Reason] = Field(default_factory=list)


class DisbursementCompleted(BaseModel):
    deal_id: str
    application_ref: str
    amount: Money
    transaction_ref: str
    disbursed_at: datetime


class DisbursementFailed(BaseModel):
    deal_id: str
    application_ref: str
    reason: str


LenderEventType = Literal["application.decided", "disbursement.completed", "disbursement.failed"]


class LenderEventInput(BaseModel):
    """A verified, stored lender webhook, as signalled to the deal."""

    webhook_id: str
    lender_id: str
    type: LenderEventType
    received_at: datetime
    decided: ApplicationDecided | None = None
    disbursed: DisbursementCompleted | None = None
    failed: DisbursementFailed | None = None
    # The lender's own payload, kept verbatim for audit.
    raw: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- workflow state


class Transition(BaseModel):
    at: datetime
    from_stage: Stage | None
    to_stage: Stage
    actor: str
    reason: str


class ActionRecord(BaseModel):
    """Every accepted staff action, with its actor: the audit trail."""

    at: datetime
    action: str
    actor: Actor
    summary: str = ""


class DocumentRecord(BaseModel):
    doc_id: str
    kind: DocumentKind
    party: Party
    file_name: str
    content_type: str
    size: int
    sha256: str
    storage_key: str
    uploaded_by: str
    uploaded_at: datetime
    period_start: date | None = None
    period_end: date | None = None
    stipulation_code: str | None = None


class DecisionRecord(BaseModel):
    webhook_id: str
    received_at: datetime
    decision_seq: int
    decision: Decision
    approved_amount: Decimal | None = None
    apr: Decimal | None = None
    term_months: int | None = None
    stipulations: list[Stipulation] = Field(default_factory=list)
    reasons: list[Reason] = Field(default_factory=list)
    applied: bool = True
    note: str = ""


SubmissionStatus = Literal[
    "sending", "submitted", "decided", "withdrawing", "withdrawn", "rejected"
]


class Submission(BaseModel):
    """One application package sent to one lender (`submission_no` counts all sends)."""

    submission_no: int
    lender_id: str
    status: SubmissionStatus = "sending"
    application_ref: str | None = None
    submitted_at: datetime | None = None
    decisions: list[DecisionRecord] = Field(default_factory=list)
    # The decision in force (highest decision_seq applied).
    current: DecisionRecord | None = None
    counter_offer_response: Literal["accepted", "declined"] | None = None
    error: str | None = None

    @property
    def last_seq(self) -> int:
        return max((d.decision_seq for d in self.decisions if d.applied), default=-1)


class Disbursement(BaseModel):
    attempt: int
    requested_at: datetime | None = None
    status: Literal["requesting", "requested", "completed", "failed", "error"] = "requesting"
    amount: Decimal | None = None
    transaction_ref: str | None = None
    disbursed_at: datetime | None = None
    failure_reason: str | None = None


class Compensation(BaseModel):
    """A step done that must be undone if the deal ends without delivery."""

    kind: Literal[
        "release_vehicle", "withdraw_application", "refund_down_payment", "cancel_insurance"
    ]
    key: str
    registered_at: datetime
    status: Literal["pending", "running", "done", "void"] = "pending"
    done_at: datetime | None = None
    detail: dict[str, str] = Field(default_factory=dict)


class Notice(BaseModel):
    at: datetime
    kind: Literal["reminder", "escalation", "adverse_action", "follow_up_due", "info"]
    stage: Stage
    message: str


class DealState(BaseModel):
    """Everything the deal knows. Carried whole across continue-as-new."""

    stage: Stage = Stage.CONTRACT
    stage_entered_at: datetime
    # Counts each entry into a stage, so timer bookkeeping restarts when a
    # stage is entered again (stipulations reopen DOCUMENTS).
    stage_entry: int = 0
    reminders_sent: int = 0
    escalated: bool = False
    version: int = 0
    transitions: list[Transition] = Field(default_factory=list)
    actions: list[ActionRecord] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)
    sales_contract: SignSalesContractInput | None = None
    documents: list[DocumentRecord] = Field(default_factory=list)
    application: SubmitApplicationInput | None = None
    lender_index: int = 0
    submissions: list[Submission] = Field(default_factory=list)
    stipulations: list[Stipulation] = Field(default_factory=list)
    resubmit_pending: bool = False
    down_payment: ConfirmDownPaymentInput | None = None
    invoice: RecordInvoiceInput | None = None
    insurance: RecordInsuranceInput | None = None
    repayment_account: RecordRepaymentAccountInput | None = None
    loan_contract: SignLoanContractInput | None = None
    disbursements: list[Disbursement] = Field(default_factory=list)
    certificate: RecordCertificateInput | None = None
    purchase_tax: RecordPurchaseTaxInput | None = None
    plate: RecordPlateInput | None = None
    mortgage: RecordMortgageInput | None = None
    stock_out: RecordStockOutInput | None = None
    settlement: RecordSettlementInput | None = None
    delivery: DeliverInput | None = None
    delivered_at: datetime | None = None
    follow_ups: dict[str, RecordFollowUpInput] = Field(default_factory=dict)
    follow_ups_missed: list[str] = Field(default_factory=list)
    follow_ups_reminded: list[str] = Field(default_factory=list)
    compensations: list[Compensation] = Field(default_factory=list)
    applied_webhooks: list[str] = Field(default_factory=list)
    # Lender events that name an application we have not yet heard back
    # about from our own submit call (the webhook raced the 202).
    unmatched_events: list[LenderEventInput] = Field(default_factory=list)
    outcome_reason: str | None = None
    adverse_action_reasons: list[Reason] = Field(default_factory=list)
    continued_as_new: int = 0


class StartDealInput(BaseModel):
    """The workflow's single argument. `state` is set only on continue-as-new."""

    deal_id: str
    deal: DealInput
    policy: DealPolicy = Field(default_factory=DealPolicy)
    lenders: list[LenderRef]
    created_by: Actor
    state: DealState | None = None


# --------------------------------------------------------------------------- status


class ChecklistItem(BaseModel):
    kind: DocumentKind
    party: Party
    label: str
    satisfied: bool
    detail: str = ""
    stipulation_code: str | None = None


class PendingAction(BaseModel):
    action: str
    role: Role
    what: str
    due: datetime | None = None


class MoneySummary(BaseModel):
    vehicle_price: Decimal
    down_payment: Decimal
    amount_financed: Decimal
    approved_amount: Decimal | None = None
    down_payment_received: Decimal | None = None
    disbursed: Decimal | None = None
    fees: Decimal = Decimal("0.00")


class DealHealth(BaseModel):
    """Whether Temporal can run the deal: set only on a deal whose workflow task
    keeps failing (a stuck deal; `starter.py heal` brings it back)."""

    stuck: bool
    attempts: int = Field(description="attempt number of the workflow task now pending")
    cause: str | None = Field(
        default=None, description="why the last workflow task failed, as Temporal names it"
    )
    message: str | None = Field(default=None, description="first line of the last failure")
    failing_since: datetime | None = None
    last_event: str | None = Field(default=None, description="the last event of the history")
    reported_problems: list[str] = Field(default_factory=list)
    heal: str | None = Field(default=None, description="the operator command that heals it")


class DealStatus(BaseModel):
    deal_id: str
    workflow_id: str
    dealer_id: str
    stage: Stage
    stage_entered_at: datetime
    lender_id: str | None
    checklist: list[ChecklistItem]
    documents: list[DocumentRecord] = Field(default_factory=list)
    pending: list[PendingAction]
    submissions: list[Submission]
    disbursements: list[Disbursement]
    money: MoneySummary
    transitions: list[Transition]
    notices: list[Notice]
    compensations: list[Compensation]
    outcome_reason: str | None = None
    adverse_action_reasons: list[Reason] = Field(default_factory=list)
    follow_ups_missed: list[str] = Field(default_factory=list)
    version: int
    # Only on a stuck deal: the rest of the status is then the read model's
    # last projection, as the deal itself cannot answer.
    health: DealHealth | None = None


class DealCreated(BaseModel):
    deal_id: str = Field(examples=["20261128-3f9a0c1e"])
    workflow_id: str = Field(examples=["deal-20261128-3f9a0c1e"])


class DealSummary(BaseModel):
    """One row of the read model (a projection of the workflow; it may lag by a moment)."""

    deal_id: str
    workflow_id: str
    dealer_id: str
    stage: Stage
    stage_entered_at: datetime
    lender_id: str | None
    vehicle_price: Decimal
    amount_financed: Decimal
    approved_amount: Decimal | None
    created_at: datetime
    updated_at: datetime
    next_due_at: datetime | None = Field(description="the deal's next deadline or reminder")
    overdue: bool = Field(description="next_due_at has passed")
    pending_roles: list[str] = Field(description="whose desk the deal waits on")


class DealPage(BaseModel):
    deals: list[DealSummary]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )


class DocumentUploaded(BaseModel):
    doc_id: str | None = Field(description="the document's id on the deal")
    deal_id: str
    kind: DocumentKind
    party: Party
    file_name: str
    content_type: str = Field(description="sniffed from the file's bytes")
    size: int
    sha256: str
    status: DealStatus = Field(description="the deal after the document was recorded")


class ActionReceipt(BaseModel):
    """What a staff Update returns: small on purpose.

    Every update result is written to the deal's history and read back on each
    replay; the whole status there was two thirds of a deal's history bytes.
    Callers that show the status ask the `status` query (`client.act`).
    Results of deals that ran before receipts hold `status` instead of
    `stage`/`version`: they parse as a receipt with those two left empty.
    """

    action: str
    accepted: bool = True
    stage: Stage | None = None
    version: int | None = None


class ActionResult(BaseModel):
    """The answer to a staff action over HTTP or the CLI: the new status."""

    action: str
    accepted: bool = True
    status: DealStatus


# --------------------------------------------------------------------------- activities


class LenderDocument(BaseModel):
    kind: str
    party: str
    sha256: str
    content_type: str
    url: str


class ApplicationPackage(BaseModel):
    """What goes to the lender: figures and document links, never bytes."""

    deal_id: str
    submission_no: int
    dealer_id: str
    product: Product
    term_months: int
    vehicle_price: Decimal
    down_payment: Decimal
    amount_requested: Decimal
    vehicle: dict[str, Any]
    applicant: dict[str, Any]
    spouse: dict[str, Any] | None = None
    stipulations_met: list[str] = Field(default_factory=list)
    documents: list[LenderDocument] = Field(default_factory=list)


class SubmitToLenderInput(BaseModel):
    deal_id: str
    lender_id: str
    submission_no: int
    deal: DealInput
    documents: list[DocumentRecord]
    stipulations_met: list[str] = Field(default_factory=list)


class SendApplicationInput(BaseModel):
    deal_id: str
    lender_id: str
    submission_no: int
    package: ApplicationPackage


class SubmitToLenderResult(BaseModel):
    application_ref: str


class DisbursementRequestInput(BaseModel):
    deal_id: str
    lender_id: str
    application_ref: str
    attempt: int
    amount: Decimal
    loan_contract_no: str
    insurance_policy_no: str
    first_beneficiary: str
    repayment_bank: str


class WithdrawInput(BaseModel):
    deal_id: str
    lender_id: str
    application_ref: str
    submission_no: int
    reason: str


class ProjectionInput(BaseModel):
    """A snapshot of the deal for the read model; `version` orders snapshots."""

    deal_id: str
    workflow_id: str
    version: int
    dealer_id: str
    stage: Stage
    stage_entered_at: datetime
    lender_id: str | None
    vehicle_price: Decimal
    amount_financed: Decimal
    approved_amount: Decimal | None
    created_at: datetime
    updated_at: datetime
    next_due_at: datetime | None
    pending_roles: list[str] = Field(default_factory=list)


class NotificationInput(BaseModel):
    key: str
    deal_id: str
    kind: str
    stage: Stage
    roles: list[Role] = Field(default_factory=list)
    message: str


class CompensationInput(BaseModel):
    key: str
    deal_id: str
    kind: str
    detail: dict[str, str] = Field(default_factory=dict)


class DocumentMetadataInput(BaseModel):
    deal_id: str
    document: DocumentRecord
