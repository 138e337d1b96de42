"""What lenders tell a deal through their webhooks: decisions and disbursements."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from dealflow.models.base import Money, Ref, Strict, Text


class Decision(StrEnum):
    APPROVED = "approved"
    CONDITIONAL = "conditional"
    COUNTER_OFFER = "counter_offer"
    DECLINED = "declined"


# What answers a lender's condition: a document (of kind `stipulation`, the
# default, and all a lender could name before the field existed), or, for a
# condition that is no document ("add a guarantor", "a larger down payment"),
# a staff note recorded by credit (`answer-stipulation`).
StipulationKind = Literal["document", "condition"]


class Stipulation(Strict):
    code: Ref
    description: Text
    # Optional on the wire: a lender that leaves it out names a document.
    kind: StipulationKind = "document"


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
    # The disbursement request this answers (DealFlow's request_id, echoed).
    request_id: str | None = None
    amount: Money
    transaction_ref: str
    disbursed_at: datetime


class DisbursementFailed(BaseModel):
    deal_id: str
    application_ref: str
    request_id: str | None = None
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
