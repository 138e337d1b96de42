"""Everything about a new deal that must hold before its workflow starts.

Each check takes only the values it needs and names the body field it is
about (`vehicle.vin`, `customer.applicant.id_number`), so the API can refuse a
whole deal in one message and the desk's form can show each problem beside its
field while the clerk is still typing — with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from dealflow.models import (
    DealInput,
    DealPolicy,
    Product,
    fmt_money,
    normalise_id_number,
)
from dealflow.rules.errors import RuleError, invalid
from dealflow.rules.identity import validate_id_number, validate_vin
from dealflow.rules.money import financing_limit, max_loan_ratio


@dataclass(frozen=True)
class FieldProblem:
    """A broken rule and the body field (dotted path) it is about."""

    field: str
    message: str


def id_number_problems(
    number: str, whose: str, field: str, today: date, ages: tuple[int, int] | None = None
) -> list[FieldProblem]:
    try:
        validate_id_number(number, whose, today=today, ages=ages)
    except RuleError as e:
        return [FieldProblem(field, e.message)]
    return []


def party_problems(
    applicant_id: str,
    married: bool,
    spouse_id: str | None,
    today: date,
    ages: tuple[int, int],
) -> list[FieldProblem]:
    """The applicant's ID number and age, and the spouse a married applicant needs."""
    problems = id_number_problems(
        applicant_id, "applicant", "customer.applicant.id_number", today, ages
    )
    if married and spouse_id is None:
        problems.append(
            FieldProblem(
                "customer.applicant.married",
                "a married applicant needs the spouse's details (customer.spouse)",
            )
        )
    if not married and spouse_id is not None:
        problems.append(
            FieldProblem(
                "customer.applicant.married",
                "customer.spouse is given but the applicant is not married",
            )
        )
    if spouse_id is not None:
        problems += id_number_problems(spouse_id, "spouse", "customer.spouse.id_number", today)
        if normalise_id_number(spouse_id) == normalise_id_number(applicant_id):
            problems.append(
                FieldProblem(
                    "customer.spouse.id_number", "the spouse's ID number is the applicant's"
                )
            )
    return problems


def vin_problems(vin: str) -> list[FieldProblem]:
    try:
        validate_vin(vin)
    except RuleError as e:
        return [FieldProblem("vehicle.vin", e.message)]
    return []


def product_problems(product: Product, condition: str, new_energy: bool) -> list[FieldProblem]:
    """The product must fit the vehicle: used cars, new cars, new-energy cars."""
    problems: list[FieldProblem] = []
    if product is Product.USED_CAR and condition != "used":
        problems.append(
            FieldProblem("product", "product used_car needs a vehicle with condition 'used'")
        )
    if product in (Product.NEW_CAR, Product.NEW_ENERGY_CAR) and condition != "new":
        problems.append(
            FieldProblem("product", f"product {product.value} needs a vehicle with condition 'new'")
        )
    if product is Product.NEW_ENERGY_CAR and not new_energy:
        problems.append(
            FieldProblem(
                "product", "product new_energy_car needs a new-energy vehicle (new_energy: true)"
            )
        )
    return problems


def financing_problems(
    price: Decimal, down_payment: Decimal, product: Product, policy: DealPolicy
) -> list[FieldProblem]:
    """Something to finance, and no more than the product's loan-ratio cap."""
    if down_payment >= price:
        return [
            FieldProblem(
                "down_payment",
                f"down payment {fmt_money(down_payment)} leaves nothing to finance on a "
                f"price of {fmt_money(price)}",
            )
        ]
    limit = financing_limit(price, product, policy)
    financed = price - down_payment
    if financed > limit:
        ratio = max_loan_ratio(product, policy) * 100
        return [
            FieldProblem(
                "down_payment",
                f"amount financed {fmt_money(financed)} exceeds {ratio:.0f}% of the "
                f"price {fmt_money(price)} ({fmt_money(limit)}) allowed for {product.value};"
                f" the down payment must be at least {fmt_money(price - limit)}",
            )
        ]
    return []


def lender_problems(lender_ids: Iterable[str], known_lenders: Iterable[str]) -> list[FieldProblem]:
    known = set(known_lenders)
    seen: set[str] = set()
    problems: list[FieldProblem] = []
    for lid in lender_ids:
        if lid in seen:
            problems.append(
                FieldProblem("lender_ids", f"lender {lid!r} appears twice in lender_ids")
            )
        seen.add(lid)
        if lid not in known:
            problems.append(
                FieldProblem(
                    "lender_ids", f"unknown lender {lid!r} (known: {', '.join(sorted(known))})"
                )
            )
    return problems


def deal_problems(
    deal: DealInput, policy: DealPolicy, known_lenders: Iterable[str], today: date
) -> list[FieldProblem]:
    """Every rule a new deal breaks on `today` (the dealer's date), in the
    order the API names them."""
    applicant, spouse, vehicle = deal.customer.applicant, deal.customer.spouse, deal.vehicle
    return [
        *party_problems(
            applicant.id_number,
            applicant.married,
            spouse.id_number if spouse else None,
            today,
            (policy.min_applicant_age, policy.max_applicant_age),
        ),
        *vin_problems(vehicle.vin),
        *product_problems(deal.product, vehicle.condition, vehicle.new_energy),
        *financing_problems(vehicle.price, deal.down_payment, deal.product, policy),
        *lender_problems(deal.lender_ids, known_lenders),
    ]


def validate_deal(
    deal: DealInput, policy: DealPolicy, known_lenders: Iterable[str], today: date
) -> None:
    """Everything about a new deal that must hold before a workflow is started."""
    problems = deal_problems(deal, policy, known_lenders, today)
    if problems:
        raise invalid("; ".join(problem.message for problem in problems))
