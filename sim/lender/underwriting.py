"""The simulator's underwriting rules: pure functions, Decimal money, never float.

- Loan ratio: amount_requested / vehicle_price above the product's maximum
  (new car 0.80, new-energy 0.85, used 0.70) -> declined, LTV_EXCEEDED.
- Affordability: the annuity payment of amount_requested at the lender's APR
  over term_months, against the applicant's monthly income:
  <= 50 % approved; <= 70 % counter offer for the largest amount whose payment
  is 50 % of income, rounded down to 1,000.00; above -> declined, DTI_TOO_HIGH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from dealflow.models import ApplicationPackage, Decision, Product, fmt_money

CENT = Decimal("0.01")
THOUSAND = Decimal("1000.00")
APPROVE_RATIO = Decimal("0.50")
COUNTER_RATIO = Decimal("0.70")

MAX_LOAN_RATIO: dict[Product, Decimal] = {
    Product.NEW_CAR: Decimal("0.80"),
    Product.NEW_ENERGY_CAR: Decimal("0.85"),
    Product.USED_CAR: Decimal("0.70"),
}


@dataclass(frozen=True)
class RuleDecision:
    decision: Decision
    approved_amount: Decimal | None
    apr: Decimal
    term_months: int
    stipulations: list[dict[str, str]] = field(default_factory=list)
    reasons: list[dict[str, str]] = field(default_factory=list)
    monthly_payment: Decimal | None = None


def _monthly_rate(apr_percent: Decimal) -> Decimal:
    return apr_percent / Decimal(1200)


def _annuity_factor(apr_percent: Decimal, term_months: int) -> Decimal:
    """Present value of 1.00 paid monthly for term_months: (1 - (1+r)^-n) / r."""
    if term_months <= 0:
        raise ValueError("term_months must be positive")
    r = _monthly_rate(apr_percent)
    if r == 0:
        return Decimal(term_months)
    return (1 - (1 + r) ** -term_months) / r


def monthly_payment(principal: Decimal, apr_percent: Decimal, term_months: int) -> Decimal:
    """The level monthly payment repaying `principal`, rounded half-up to the cent."""
    with localcontext() as ctx:
        ctx.prec = 40
        payment = Decimal(principal) / _annuity_factor(Decimal(apr_percent), term_months)
    return payment.quantize(CENT, rounding=ROUND_HALF_UP)


def max_principal(payment: Decimal, apr_percent: Decimal, term_months: int) -> Decimal:
    """The largest principal a monthly `payment` repays, rounded down to the cent."""
    with localcontext() as ctx:
        ctx.prec = 40
        principal = Decimal(payment) * _annuity_factor(Decimal(apr_percent), term_months)
    return principal.quantize(CENT, rounding=ROUND_DOWN)


def round_down(value: Decimal, step: Decimal = THOUSAND) -> Decimal:
    """Round down to a multiple of `step`: 81,234.56 -> 81,000.00."""
    if value <= 0:
        return Decimal("0.00")
    return ((value / step).to_integral_value(rounding=ROUND_DOWN) * step).quantize(CENT)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _pct(part: Decimal, whole: Decimal) -> str:
    return f"{(part / whole * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"


def decide(package: ApplicationPackage, apr_percent: Decimal) -> RuleDecision:
    """Underwrite one application package by the rules above."""
    apr = Decimal(apr_percent).quantize(CENT)
    term = package.term_months
    requested = Decimal(package.amount_requested).quantize(CENT)
    price = Decimal(package.vehicle_price)

    def declined(reasons: list[dict[str, str]], payment: Decimal | None = None) -> RuleDecision:
        return RuleDecision(Decision.DECLINED, None, apr, term, [], reasons, payment)

    if requested <= 0 or price <= 0 or term <= 0:
        return declined(
            [
                {
                    "code": "INVALID_PACKAGE",
                    "text": "Amount requested, vehicle price and term must be positive.",
                }
            ]
        )

    max_ratio = MAX_LOAN_RATIO[Product(package.product)]
    ltv_reason: dict[str, str] | None = None
    if requested / price > max_ratio:
        ltv_reason = {
            "code": "LTV_EXCEEDED",
            "text": (
                f"Amount requested {fmt_money(requested)} is {_pct(requested, price)} of the "
                f"vehicle price {fmt_money(price)}; the maximum for {package.product} is "
                f"{_pct(max_ratio, Decimal(1))}."
            ),
        }

    income = _decimal(package.applicant.get("monthly_income"))
    if income is None or income <= 0:
        reasons = [ltv_reason] if ltv_reason else []
        reasons.append(
            {
                "code": "INCOME_UNVERIFIED",
                "text": "The applicant's monthly income is missing or invalid.",
            }
        )
        return declined(reasons)

    payment = monthly_payment(requested, apr, term)
    dti_reason = {
        "code": "DTI_TOO_HIGH",
        # A reason reaches the customer's adverse-action notice and the
        # dealer's logs: it names the rule, never the applicant's figures.
        "text": (
            "The monthly payment is more than "
            f"{_pct(APPROVE_RATIO, Decimal(1))} of the applicant's monthly income."
        ),
    }
    if ltv_reason:
        reasons = [ltv_reason]
        if payment > income * COUNTER_RATIO:
            reasons.append(dti_reason)
        return declined(reasons, payment)

    if payment <= income * APPROVE_RATIO:
        return RuleDecision(Decision.APPROVED, requested, apr, term, [], [], payment)
    if payment <= income * COUNTER_RATIO:
        offer = round_down(max_principal(income * APPROVE_RATIO, apr, term))
        if offer > 0:
            return RuleDecision(Decision.COUNTER_OFFER, offer, apr, term, [], [], payment)
    return declined([dti_reason], payment)


def counter_offer_amount(package: ApplicationPackage, apr_percent: Decimal) -> Decimal:
    """A counter-offer amount for a scripted counter_offer step that names none: the
    rules' affordable amount when there is an income, else 80 % of the request;
    always below the request and rounded down to 1,000.00 (at least 1,000.00)."""
    requested = Decimal(package.amount_requested).quantize(CENT)
    candidate = round_down(requested * Decimal("0.80"))
    income = _decimal(package.applicant.get("monthly_income"))
    if income and income > 0 and package.term_months > 0:
        affordable = round_down(
            max_principal(income * APPROVE_RATIO, Decimal(apr_percent), package.term_months)
        )
        if 0 < affordable < requested:
            candidate = affordable
    return max(candidate, THOUSAND)
