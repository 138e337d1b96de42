"""The workflow's state: the deal's stage, everything it has recorded, and
the input that starts (or continues) it."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from dealflow.models.actions import (
    ConfirmDownPaymentInput,
    ConfirmLoanTermsInput,
    DeliverInput,
    RecordCertificateInput,
    RecordFollowUpInput,
    RecordInsuranceInput,
    RecordInvoiceInput,
    RecordMortgageInput,
    RecordPlateInput,
    RecordPurchaseTaxInput,
    RecordRepaymentAccountInput,
    RecordSettlementInput,
    RecordStockOutInput,
    SignLoanContractInput,
    SignSalesContractInput,
    SubmitApplicationInput,
)
from dealflow.models.deal import Actor, DealInput, DealPolicy, DocumentKind, LenderRef, Party
from dealflow.models.lender_events import (
    Decision,
    LenderEventInput,
    Reason,
    Stipulation,
    StipulationKind,
)


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
    # Off the happy path: a funded deal the customer rescinded before
    # delivery, undoing its steps newest first until it is CANCELLED.
    UNWINDING = "UNWINDING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    DECLINED = "DECLINED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STAGES


TERMINAL_STAGES = frozenset({Stage.COMPLETED, Stage.CANCELLED, Stage.DECLINED, Stage.EXPIRED})
STAGE_ORDER = list(Stage)
# The stages a deal goes through when nothing goes wrong, in order.
HAPPY_PATH = [s for s in STAGE_ORDER if not s.terminal and s is not Stage.UNWINDING]


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


# A lender condition's lifecycle (docs/architecture.md §1, "Stipulations"):
# open -> received (a document or a staff note answers it) -> cleared or waived
# by credit; a received document may be rejected (the condition reopens and
# needs a new document). Received, cleared and waived count as answered.
StipulationStatus = Literal["open", "received", "cleared", "waived", "rejected"]


class StipulationChange(BaseModel):
    """One step of a condition's lifecycle: when, to what, by whom, why."""

    at: datetime
    status: StipulationStatus
    # "staff_id/role" of who acted; "lender_id/lender" when the lender named it.
    by: str
    # The note that answers or clears it, or why it was waived or rejected.
    reason: str = ""
    # The document received, or the one rejected.
    doc_id: str | None = None


class StipulationItem(BaseModel):
    """One condition of one conditional decision: a lender names it for a
    submission, and the deal answers it before it resubmits."""

    submission_no: int
    lender_id: str
    code: str
    description: str
    kind: StipulationKind = "document"
    status: StipulationStatus = "open"
    named_at: datetime
    # What answers it now: the document (a document condition) or the staff
    # note (any other condition).
    doc_id: str | None = None
    note: str | None = None
    # Why it was waived, or why its last document was rejected.
    reason: str | None = None
    # The submission that carried its answer to the lender (set on resubmission).
    answered_in: int | None = None
    changes: list[StipulationChange] = Field(default_factory=list)

    @property
    def rejected_doc_ids(self) -> list[str]:
        return [c.doc_id for c in self.changes if c.status == "rejected" and c.doc_id]


class Disbursement(BaseModel):
    attempt: int
    requested_at: datetime | None = None
    status: Literal["requesting", "requested", "completed", "failed", "error"] = "requesting"
    amount: Decimal | None = None
    transaction_ref: str | None = None
    disbursed_at: datetime | None = None
    failure_reason: str | None = None
    # The lender paid another amount than the approved one: the event, kept
    # for finance to reconcile or retry.
    mismatch: str | None = None
    # Recorded by finance from the bank statement (reconcile-disbursement).
    reconciled: str | None = None
    # The funding documents this request carried (doc ids), newest of each
    # kind when it was sent; empty for deals without the funding package.
    funding_doc_ids: list[str] = Field(default_factory=list)


CompensationKind = Literal[
    "release_vehicle",
    "withdraw_application",
    "refund_down_payment",
    "cancel_insurance",
    "reverse_invoice",
    "repay_lender",
    "release_mortgage",
]
# The steps of an unwind after funding that a person does outside DealFlow
# and records with its evidence (record-unwind-step).
UnwindStepKind = Literal[
    "release_mortgage", "reverse_invoice", "cancel_insurance", "refund_down_payment"
]
UNWIND_STAFF_STEPS: tuple[UnwindStepKind, ...] = (
    "release_mortgage",
    "reverse_invoice",
    "cancel_insurance",
    "refund_down_payment",
)


class Compensation(BaseModel):
    """A step done that must be undone if the deal ends without delivery."""

    kind: CompensationKind
    key: str
    registered_at: datetime
    # "refused": the other side said no (a lender refusing a withdrawal); the
    # reason is in `refusal`, a person was told, and the other steps went on.
    status: Literal["pending", "running", "done", "void", "refused"] = "pending"
    done_at: datetime | None = None
    detail: dict[str, str] = Field(default_factory=dict)
    refusal: str = ""
    # What proves the step undone: the lender's repayment ref, or the
    # reference staff recorded (red-letter invoice no, insurer's cancellation
    # no, bank refund ref, mortgage release no); who recorded it, and a note.
    evidence: str = ""
    done_by: str = ""
    note: str = ""


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
    # How many of `transitions` the read model is known to hold: projections
    # send only the ones after (the reports keep every stage change).
    projected_transitions: int = 0
    actions: list[ActionRecord] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)
    sales_contract: SignSalesContractInput | None = None
    documents: list[DocumentRecord] = Field(default_factory=list)
    application: SubmitApplicationInput | None = None
    lender_index: int = 0
    submissions: list[Submission] = Field(default_factory=list)
    stipulations: list[Stipulation] = Field(default_factory=list)
    # When the lender last named each stipulation: only a document uploaded
    # since then answers it, so a condition named again waits for a new one.
    stipulation_asked_at: dict[str, datetime] = Field(default_factory=dict)
    # Each condition of each conditional decision with its lifecycle (patch
    # "stipulation-lifecycle"); deals whose conditions came before it keep
    # `stipulations` and `stipulation_asked_at` above, and this stays empty.
    stipulation_items: list[StipulationItem] = Field(default_factory=list)
    resubmit_pending: bool = False
    down_payment: ConfirmDownPaymentInput | None = None
    invoice: RecordInvoiceInput | None = None
    insurance: RecordInsuranceInput | None = None
    repayment_account: RecordRepaymentAccountInput | None = None
    loan_terms_confirmed: ConfirmLoanTermsInput | None = None
    loan_terms_confirmed_at: datetime | None = None
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
    # "lender_id webhook_id" of each event applied since ids were scoped by
    # lender (rules.lender_webhook_key); `applied_webhooks` holds the earlier ones.
    applied_lender_webhooks: list[str] = Field(default_factory=list)
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
