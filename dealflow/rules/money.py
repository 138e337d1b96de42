"""The amounts a deal's policy allows and the contract requires, and the
loan's ratio to the price."""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from dealflow.models import (
    CENT,
    DealInput,
    DealPolicy,
    Decision,
    Product,
    fmt_money,
    money,
)


def max_loan_ratio(product: Product, policy: DealPolicy) -> Decimal:
    return policy.max_loan_ratio[product]


def financing_limit(price: Decimal, product: Product, policy: DealPolicy) -> Decimal:
    """The most a lender may finance of a vehicle at `price` under `product`:
    the cap rounded down to the fen, so a loan at the limit never exceeds the
    ratio by a fraction of a fen."""
    return (price * max_loan_ratio(product, policy)).quantize(CENT, ROUND_DOWN)


def max_amount_financed(deal: DealInput, policy: DealPolicy) -> Decimal:
    return financing_limit(deal.vehicle.price, deal.product, policy)


def required_down_payment(deal: DealInput, approved_amount: Decimal | None) -> Decimal:
    """The contract's down payment, or what a counter-offer's smaller loan leaves to pay."""
    if approved_amount is None:
        return money(deal.down_payment)
    return money(deal.vehicle.price - approved_amount)


def lender_amount_problem(
    decision: Decision, amount: Decimal | None, requested: Decimal, cap: Decimal
) -> str | None:
    """Why the amount a lender's decision names cannot be applied to the deal,
    or None when it can: an approval, condition or counter-offer must name more
    than nothing and at most what was requested and what the loan-ratio cap
    allows (`cap`). An approval that names no amount approves the request."""
    if decision is Decision.DECLINED:
        return None
    if amount is None:
        if decision is Decision.COUNTER_OFFER:
            return "a counter-offer must name the amount offered"
        return None
    what = decision.value.replace("_", "-")
    if amount <= 0:
        return f"the {what} names {fmt_money(amount)}, not a positive amount"
    if amount > requested:
        return (
            f"the {what} names {fmt_money(amount)}, more than the {fmt_money(requested)} requested"
        )
    if amount > cap:
        return (
            f"the {what} names {fmt_money(amount)}, more than the loan-ratio cap "
            f"of {fmt_money(cap)} allows"
        )
    return None


def is_partial_approval(decision: Decision, amount: Decimal | None, requested: Decimal) -> bool:
    """An approval of less than was requested: the customer would pay the rest
    as a larger down payment, so it is a counter-offer the customer must accept."""
    return decision is Decision.APPROVED and amount is not None and amount < requested


PERCENT_PLACES = Decimal("0.01")


def loan_to_value(financed: Decimal, price: Decimal) -> Decimal:
    """The amount financed as a percentage of the vehicle's price, rounded half
    up to 0.01 (a 70 % loan is `Decimal("70.00")`)."""
    if price <= 0:
        raise ValueError(f"the vehicle price must be positive, not {price}")
    return (Decimal(100) * financed / price).quantize(PERCENT_PLACES, ROUND_HALF_UP)
