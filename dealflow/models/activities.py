"""Inputs and results of the deal's activities (lender calls, read model,
notifications, compensations, document metadata)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from dealflow.models.deal import DealInput, Product, Role
from dealflow.models.lender_events import Decision, StipulationKind
from dealflow.models.state import DealState, DocumentRecord, Stage, Submission, Transition
from dealflow.models.status import PendingAction


class LenderDocument(BaseModel):
    kind: str
    party: str
    sha256: str
    content_type: str
    url: str


class StipulationAnswer(BaseModel):
    """How one condition of the lender's conditional decision is answered in a
    resubmission: by which document or staff note, or waived and why."""

    code: str
    description: str
    kind: StipulationKind = "document"
    status: Literal["received", "cleared", "waived"]
    # The document that answers it: the package's document with this sha256
    # (the deal's own id for it beside).
    doc_id: str | None = None
    sha256: str | None = None
    # The staff note that answers a condition that is no document.
    note: str | None = None
    # Why it was waived.
    reason: str | None = None


class PackageDocument(BaseModel):
    """A document of a package as history keeps it: where it is, not a link to it."""

    kind: str
    party: str
    sha256: str
    content_type: str
    storage_key: str


class _PackageFigures(BaseModel):
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
    # Which document or note answers which condition, and which were waived
    # (resubmissions of deals with the stipulation lifecycle; else empty).
    stipulation_answers: list[StipulationAnswer] = Field(default_factory=list)
    stipulations_waived: list[str] = Field(default_factory=list)


class ApplicationPackage(_PackageFigures):
    """What goes to the lender: figures and document links, never bytes."""

    documents: list[LenderDocument] = Field(default_factory=list)


class SubmitToLenderInput(BaseModel):
    deal_id: str
    lender_id: str
    submission_no: int
    deal: DealInput
    documents: list[DocumentRecord]
    stipulations_met: list[str] = Field(default_factory=list)
    stipulation_answers: list[StipulationAnswer] = Field(default_factory=list)
    stipulations_waived: list[str] = Field(default_factory=list)


class UnsignedApplicationPackage(_PackageFigures):
    """The package as recorded in history: documents by storage key, no links.

    A link is a bearer credential with an expiry; one written into history would
    be sent again by every retry, however stale (patch `fresh-document-links`).
    The sending activity signs the links at each attempt instead.
    """

    documents: list[PackageDocument] = Field(default_factory=list)

    @classmethod
    def for_submission(cls, inp: SubmitToLenderInput) -> UnsignedApplicationPackage:
        deal = inp.deal
        return cls(
            deal_id=inp.deal_id,
            submission_no=inp.submission_no,
            dealer_id=deal.dealer_id,
            product=deal.product,
            term_months=deal.term_months,
            vehicle_price=deal.vehicle.price,
            down_payment=deal.down_payment,
            amount_requested=deal.amount_financed,
            vehicle=deal.vehicle.model_dump(mode="json"),
            applicant=deal.customer.applicant.model_dump(mode="json"),
            spouse=deal.customer.spouse.model_dump(mode="json") if deal.customer.spouse else None,
            stipulations_met=inp.stipulations_met,
            stipulation_answers=inp.stipulation_answers,
            stipulations_waived=inp.stipulations_waived,
            documents=[
                PackageDocument(
                    kind=d.kind.value,
                    party=d.party.value,
                    sha256=d.sha256,
                    content_type=d.content_type,
                    storage_key=d.storage_key,
                )
                for d in inp.documents
            ],
        )

    def signed(self, link: Callable[[str], str]) -> ApplicationPackage:
        """The package as the lender gets it, `link(storage_key)` giving each URL."""
        return ApplicationPackage(
            **self.model_dump(exclude={"documents"}),
            documents=[
                LenderDocument(
                    kind=d.kind,
                    party=d.party,
                    sha256=d.sha256,
                    content_type=d.content_type,
                    url=link(d.storage_key),
                )
                for d in self.documents
            ],
        )


class SendApplicationInput(BaseModel):
    deal_id: str
    lender_id: str
    submission_no: int
    package: ApplicationPackage


class SignAndSendApplicationInput(BaseModel):
    deal_id: str
    lender_id: str
    submission_no: int
    package: UnsignedApplicationPackage
    # Absolute, set by the workflow: a retry signs its links to the same end,
    # not to "now + lifetime" from wherever the retry happens to be.
    links_expire_at: datetime


class SubmitToLenderResult(BaseModel):
    application_ref: str


class FundingDocument(BaseModel):
    """A document of the funding package as the lender gets it: what it is,
    its hash and size to check the bytes by, and a link signed for this call."""

    kind: str
    sha256: str
    size: int
    content_type: str
    url: str


class PackagedFundingDocument(BaseModel):
    """A funding document as history keeps it: where it is, not a link to it."""

    doc_id: str
    kind: str
    sha256: str
    size: int
    content_type: str
    storage_key: str

    @classmethod
    def of(cls, doc: DocumentRecord) -> PackagedFundingDocument:
        return cls(
            doc_id=doc.doc_id,
            kind=doc.kind.value,
            sha256=doc.sha256,
            size=doc.size,
            content_type=doc.content_type,
            storage_key=doc.storage_key,
        )

    def signed(self, link: Callable[[str], str]) -> FundingDocument:
        return FundingDocument(
            kind=self.kind,
            sha256=self.sha256,
            size=self.size,
            content_type=self.content_type,
            url=link(self.storage_key),
        )


class _DisbursementFigures(BaseModel):
    """What a disbursement request says, in the lender's order; the lender's
    body and the activity's input differ only in how they carry documents."""

    deal_id: str
    lender_id: str
    application_ref: str
    attempt: int
    # The id the lender echoes in its answer, so an answer to an earlier
    # attempt is known as one ("" from workers before it was sent).
    request_id: str = ""
    amount: Decimal
    loan_contract_no: str
    insurance_policy_no: str
    first_beneficiary: str
    repayment_bank: str
    # The lender's mortgage registration, for a lender that funds only once it
    # is registered (None for the others, who are funded before registration).
    mortgage_registration_no: str | None = None


class DisbursementRequest(_DisbursementFigures):
    """The body of a disbursement request as the lender gets it
    (docs/architecture.md §3.5)."""

    # The documents behind those numbers, each with a link signed for this
    # call. Absent from requests of deals started before the funding package.
    funding_package: list[FundingDocument] | None = None


class DisbursementRequestInput(_DisbursementFigures):
    """The disbursement activity's input, as history keeps it."""

    # Deals with the funding package (patch `funding-package`): its documents
    # by storage key; the activity signs a link to each at every attempt, to
    # `links_expire_at` (absolute, so a retry signs to the same end).
    funding_package: list[PackagedFundingDocument] | None = None
    links_expire_at: datetime | None = None

    def for_lender(self, link: Callable[[str], str]) -> DisbursementRequest:
        """The request as the lender gets it, `link(storage_key)` giving each URL;
        without a funding package, the same body as before it existed."""
        figures = self.model_dump(exclude={"funding_package", "links_expire_at"})
        if self.funding_package is None:
            return DisbursementRequest(**figures)
        return DisbursementRequest(
            **figures, funding_package=[d.signed(link) for d in self.funding_package]
        )


class WithdrawInput(BaseModel):
    deal_id: str
    lender_id: str
    application_ref: str
    submission_no: int
    reason: str


class RepaymentInput(BaseModel):
    """Pay the lender back what it disbursed (an unwind after funding)."""

    deal_id: str
    lender_id: str
    application_ref: str
    amount: Decimal
    # The disbursement's transaction, which this repayment returns.
    transaction_ref: str
    reason: str


class RepaymentResult(BaseModel):
    """The lender's receipt of a repayment: its ref is the step's evidence."""

    application_ref: str
    repayment_ref: str
    status: str = "repaid"
    repaid_at: str | None = None


class StageChange(BaseModel):
    """A move of the deal from one stage to the next; `seq` is its place among
    the deal's moves (0: the start), so a retried projection rewrites, never adds."""

    seq: int
    at: datetime
    from_stage: Stage | None
    to_stage: Stage


class LenderDecisionFact(BaseModel):
    """One application sent to a lender and what the lender answered."""

    submission_no: int
    lender_id: str
    submitted_at: datetime | None = None
    # When the lender first answered: the decision turnaround ends here.
    first_decided_at: datetime | None = None
    # The decision in force (a newer decision_seq replaces an older one).
    decision: Decision | None = None
    decided_at: datetime | None = None
    reason_codes: list[str] = Field(default_factory=list)


class DealClosed(BaseModel):
    """How a deal ended: its terminal stage, when, and why."""

    stage: Stage
    at: datetime
    reason: str
    # The adverse-action reason codes of a declined deal (lenders' codes and ours).
    reason_codes: list[str] = Field(default_factory=list)


def stage_changes(transitions: list[Transition], since: int = 0) -> list[StageChange]:
    """The deal's stage changes from the `since`-th on (those before it are projected)."""
    return [
        StageChange(seq=seq, at=t.at, from_stage=t.from_stage, to_stage=t.to_stage)
        for seq, t in enumerate(transitions)
        if seq >= since
    ]


def lender_decision_facts(submissions: list[Submission]) -> list[LenderDecisionFact]:
    facts = []
    for sub in submissions:
        applied = [d for d in sub.decisions if d.applied]
        current = sub.current
        facts.append(
            LenderDecisionFact(
                submission_no=sub.submission_no,
                lender_id=sub.lender_id,
                submitted_at=sub.submitted_at,
                first_decided_at=min(d.received_at for d in applied) if applied else None,
                decision=current.decision if current else None,
                decided_at=current.received_at if current else None,
                reason_codes=[r.code for r in current.reasons] if current else [],
            )
        )
    return facts


def deal_closed(state: DealState) -> DealClosed | None:
    if not state.stage.terminal or not state.transitions:
        return None
    last = state.transitions[-1]
    codes = (
        list(dict.fromkeys(r.code for r in state.adverse_action_reasons))
        if state.stage is Stage.DECLINED
        else []
    )
    return DealClosed(stage=state.stage, at=last.at, reason=last.reason, reason_codes=codes)


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
    # For the desk's lists: what each role is to do, and whose deal it is
    # (searched by staff who may see names). Older workers sent neither.
    pending_actions: list[PendingAction] = Field(default_factory=list)
    customer_name: str | None = None
    # The deal's routing list, for the webhook receiver. Older workers sent none.
    lender_ids: list[str] = Field(default_factory=list)
    # For the reports: the stage changes the read model may not hold yet
    # (DealState.projected_transitions), every lender application with its
    # answer, and how the deal ended. Older workers sent none of them.
    transitions: list[StageChange] = Field(default_factory=list)
    lender_decisions: list[LenderDecisionFact] = Field(default_factory=list)
    closed: DealClosed | None = None


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


class NotificationWritten(BaseModel):
    """What `notify` wrote. The marker of a local activity keeps its result,
    not its input, so the audit timeline reads the notice from here."""

    new: bool
    notification: NotificationInput


class CompensationWritten(BaseModel):
    """What `record_compensation` wrote (read by the audit timeline, as above)."""

    new: bool
    compensation: CompensationInput


class DocumentMetadataInput(BaseModel):
    deal_id: str
    document: DocumentRecord
