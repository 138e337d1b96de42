"""The amounts a deal's policy allows and the contract requires."""

from __future__ import annotations

from decimal import Decimal

from dealflow.models import (
    DealInput,
    DealPolicy,
    Product,
    money,
)


def max_loan_ratio(product: Product, policy: DealPolicy) -> Decimal:
    return policy.max_loan_ratio[product]


def financing_limit(price: Decimal, product: Product, policy: DealPolicy) -> Decimal:
    """The most a lender may finance of a vehicle at `price` under `product`."""
    return money(price * max_loan_ratio(product, policy))


def max_amount_financed(deal: DealInput, policy: DealPolicy) -> Decimal:
    return financing_limit(deal.vehicle.price, deal.product, policy)


def required_down_payment(deal: DealInput, approved_amount: Decimal | None) -> Decimal:
    """The contract's down payment, or what a counter-offer's smaller loan leaves to pay."""
    if approved_amount is None:
        return money(deal.down_payment)
    return money(deal.vehicle.price - approved_amount)
