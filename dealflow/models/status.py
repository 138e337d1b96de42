"""The deal's status as staff see it: checklist, pending actions, money, health."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from dealflow.models.deal import DocumentKind, Party, Role
from dealflow.models.lender_events import Reason
from dealflow.models.loan import LoanSchedule
from dealflow.models.state import (
    Compensation,
    Disbursement,
    DocumentRecord,
    Notice,
    Stage,
    StipulationItem,
    Submission,
    Transition,
)


class ChecklistItem(BaseModel):
    kind: DocumentKind
    party: Party
    label: str
    satisfied: bool
    detail: str = ""
    stipulation_code: str | None = None


class FundingItem(BaseModel):
    """One document of the funding package: who uploads it, and the upload
    the disbursement request carries (the newest of its kind), if any."""

    kind: DocumentKind
    label: str
    role: Role
    satisfied: bool
    document: DocumentRecord | None = None


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
    # The lender's conditions, per submission, each with its lifecycle
    # (deals whose conditions came before the lifecycle show none here).
    stipulations: list[StipulationItem] = Field(default_factory=list)
    disbursements: list[Disbursement]
    # The lender funds only once its mortgage is registered: REGISTRATION
    # comes before DISBURSEMENT.
    mortgage_before_funding: bool = False
    money: MoneySummary
    # The funding package, for deals started with it (dealflow/rules/funding.py).
    funding: list[FundingItem] = Field(default_factory=list)
    # The approved terms' repayment schedule, once a lender approved with a rate.
    loan: LoanSchedule | None = None
    transitions: list[Transition]
    notices: list[Notice]
    compensations: list[Compensation]
    outcome_reason: str | None = None
    adverse_action_reasons: list[Reason] = Field(default_factory=list)
    follow_ups_missed: list[str] = Field(default_factory=list)
    # Lender webhook ids the deal applied (each once): a lender's retry of one
    # of them after the deal closed is answered as delivered, not refused.
    applied_webhooks: list[str] = Field(default_factory=list)
    applied_lender_webhooks: list[str] = Field(default_factory=list)
    version: int
    # Only on a stuck deal: the rest of the status is then the read model's
    # last projection, as the deal itself cannot answer.
    health: DealHealth | None = None
