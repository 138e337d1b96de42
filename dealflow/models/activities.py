"""Inputs and results of the deal's activities (lender calls, read model,
notifications, compensations, document metadata)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from dealflow.models.deal import DealInput, Product, Role
from dealflow.models.state import DocumentRecord, Stage
from dealflow.models.status import PendingAction


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
    # For the desk's lists: what each role is to do, and whose deal it is
    # (searched by staff who may see names). Older workers sent neither.
    pending_actions: list[PendingAction] = Field(default_factory=list)
    customer_name: str | None = None


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
