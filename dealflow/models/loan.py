"""The loan as the customer repays it: its terms and the schedule they give."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from dealflow.models.deal import RepaymentMethod


class LoanTerms(BaseModel):
    """What the lender approved (or the customer accepted as a counter-offer)."""

    amount: Decimal
    apr: Decimal = Field(description="annual rate in percent: 6.50 is 6.5 %")
    term_months: int
    method: RepaymentMethod


class Instalment(BaseModel):
    number: int
    payment: Decimal
    interest: Decimal
    principal: Decimal
    balance: Decimal = Field(description="left to repay after this instalment")


class LoanSchedule(BaseModel):
    """The repayment schedule of the approved terms, in fen (rules.loan_schedule)."""

    terms: LoanTerms
    first_payment: Decimal
    last_payment: Decimal
    total_interest: Decimal
    total_repayable: Decimal
    instalments: list[Instalment]
    # When staff recorded that the customer confirmed these terms, if yet.
    confirmed_at: datetime | None = None
    confirmed_by: str | None = None
