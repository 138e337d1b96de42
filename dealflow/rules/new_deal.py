"""Everything about a new deal that must hold before its workflow starts."""

from __future__ import annotations

from collections.abc import Iterable

from dealflow.models import (
    DealInput,
    DealPolicy,
    Product,
    fmt_money,
)
from dealflow.rules.errors import RuleError, invalid
from dealflow.rules.identity import validate_id_number, validate_vin
from dealflow.rules.money import max_amount_financed, max_loan_ratio


def validate_deal(deal: DealInput, policy: DealPolicy, known_lenders: Iterable[str]) -> None:
    """Everything about a new deal that must hold before a workflow is started."""
    problems: list[str] = []

    def collect(check: object) -> None:
        try:
            if callable(check):
                check()
        except RuleError as e:
            problems.append(e.message)

    applicant = deal.customer.applicant
    spouse = deal.customer.spouse
    collect(lambda: validate_id_number(applicant.id_number, "applicant"))
    if applicant.married and spouse is None:
        problems.append("a married applicant needs the spouse's details (customer.spouse)")
    if not applicant.married and spouse is not None:
        problems.append("customer.spouse is given but the applicant is not married")
    if spouse is not None:
        collect(lambda: validate_id_number(spouse.id_number, "spouse"))
        if spouse.id_number == applicant.id_number:
            problems.append("the spouse's ID number is the applicant's")
    collect(lambda: validate_vin(deal.vehicle.vin))

    v = deal.vehicle
    if deal.product is Product.USED_CAR and v.condition != "used":
        problems.append("product used_car needs a vehicle with condition 'used'")
    if deal.product in (Product.NEW_CAR, Product.NEW_ENERGY_CAR) and v.condition != "new":
        problems.append(f"product {deal.product.value} needs a vehicle with condition 'new'")
    if deal.product is Product.NEW_ENERGY_CAR and not v.new_energy:
        problems.append("product new_energy_car needs a new-energy vehicle (new_energy: true)")

    if deal.down_payment >= v.price:
        problems.append(
            f"down payment {fmt_money(deal.down_payment)} leaves nothing to finance on a "
            f"price of {fmt_money(v.price)}"
        )
    else:
        limit = max_amount_financed(deal, policy)
        if deal.amount_financed > limit:
            ratio = max_loan_ratio(deal.product, policy) * 100
            problems.append(
                f"amount financed {fmt_money(deal.amount_financed)} exceeds {ratio:.0f}% of the "
                f"price {fmt_money(v.price)} ({fmt_money(limit)}) allowed for {deal.product.value};"
                f" the down payment must be at least {fmt_money(v.price - limit)}"
            )

    known = set(known_lenders)
    seen: set[str] = set()
    for lid in deal.lender_ids:
        if lid in seen:
            problems.append(f"lender {lid!r} appears twice in lender_ids")
        seen.add(lid)
        if lid not in known:
            problems.append(f"unknown lender {lid!r} (known: {', '.join(sorted(known))})")
    if problems:
        raise invalid("; ".join(problems))
