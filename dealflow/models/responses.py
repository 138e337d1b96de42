"""What DealFlow answers its callers: staff-action receipts and results, and
the API's deal list, new deal and uploaded document."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from dealflow.models.deal import DocumentKind, Party
from dealflow.models.state import Stage
from dealflow.models.status import DealStatus


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
