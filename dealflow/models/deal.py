"""The deal application: who applies, for which vehicle, with how much money,
through which lenders, under which policy; and who acts on it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator

from dealflow.models.base import IdNumber, NonNegMoney, PosMoney, Ref, Strict, money


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


class RepaymentMethod(StrEnum):
    # 等额本息: the same payment every month, interest on the falling balance.
    EQUAL_INSTALMENTS = "equal_instalments"
    # 等额本金: the same principal every month plus interest on the balance,
    # so payments fall month by month.
    EQUAL_PRINCIPAL = "equal_principal"


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
    # The funding package: what the lender receives before it pays out
    # (dealflow/rules/funding.py), each from the team that produced it.
    SIGNED_LOAN_CONTRACT = "signed_loan_contract"
    INSURANCE_POLICY_PAGE = "insurance_policy_page"
    VEHICLE_INVOICE = "vehicle_invoice"


class Actor(Strict):
    """Who acted. Taken from the token (API) or the operator's flags (CLI), never a body."""

    staff_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    role: Role


SYSTEM_ACTOR = Actor(staff_id="dealflow", role=Role.ADMIN)


class Person(Strict):
    full_name: Annotated[str, Field(min_length=1, max_length=100)]
    id_number: IdNumber
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
    # The lender funds only after its mortgage is registered (lenders file).
    mortgage_before_funding: bool = False


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
    # An unwind after funding still open this long goes to finance and admin.
    unwinding_escalate_after: timedelta = _days(7)
    follow_up_first: timedelta = _days(3)
    follow_up_second: timedelta = _days(30)
    # A follow-up call not recorded this long after it fell due is escalated
    # and the deal closes with the call marked missed, so no deal stays open forever.
    follow_up_grace: timedelta = _days(7)
    max_disbursement_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # How far a payout finance reconciles by hand may differ from the approved
    # amount (bank charges deducted on the way); more is refused.
    disbursement_tolerance: Annotated[
        Decimal, Field(ge=0, le=10000, max_digits=7, decimal_places=2)
    ] = Decimal("50.00")
    max_loan_ratio: dict[Product, Decimal] = Field(
        default_factory=lambda: {
            Product.NEW_CAR: Decimal("0.80"),
            Product.NEW_ENERGY_CAR: Decimal("0.85"),
            Product.USED_CAR: Decimal("0.70"),
        }
    )
    # How each product's loan is repaid: the loan contract's schedule follows it.
    repayment_method: dict[Product, RepaymentMethod] = Field(
        default_factory=lambda: {
            Product.NEW_CAR: RepaymentMethod.EQUAL_INSTALMENTS,
            Product.NEW_ENERGY_CAR: RepaymentMethod.EQUAL_INSTALMENTS,
            Product.USED_CAR: RepaymentMethod.EQUAL_PRINCIPAL,
        }
    )
    # The highest annual rate (percent) a lender's approval may name; above it
    # the approval is refused. 24 % is the line above which PRC courts do not
    # protect interest on a private loan.
    max_apr: Annotated[Decimal, Field(ge=0, le=100, max_digits=6, decimal_places=4)] = Decimal(
        "24.00"
    )
    bank_statement_months: Annotated[int, Field(ge=1, le=24)] = 6
    # The applicant's age on the day the deal starts, in full years.
    min_applicant_age: Annotated[int, Field(ge=16, le=100)] = 18
    max_applicant_age: Annotated[int, Field(ge=16, le=100)] = 70
    # The dealer's clock: "today" in every date rule is a date in this zone.
    time_zone: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")] = (
        "Asia/Shanghai"
    )
    max_document_bytes: Annotated[int, Field(ge=1)] = 20 * 1024 * 1024
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["application/pdf", "image/jpeg", "image/png"]
    )
    # Limits on what an upload may hold once parsed (dealflow/document_check.py):
    # pages of a PDF, width × height of an image. Pillow itself refuses images of
    # more than ~179 million pixels whatever this says.
    max_document_pages: Annotated[int, Field(ge=1)] = 200
    max_image_pixels: Annotated[int, Field(ge=1)] = 50_000_000
    # Continue-as-new well before Temporal's own suggestion (~10k events / 10 MB
    # history) so a deal that waits years on registration keeps a small history.
    # Tests lower it to exercise continue-as-new mid-deal.
    max_history_events: Annotated[int, Field(ge=50)] = 5000
