"""The loan's terms and their repayment schedule: equal instalments (等额本息)
or equal principal (等额本金), exact to the fen.

Rounding, stated once: a month's interest is the balance times APR ÷ 12,
rounded half up to the fen; an equal instalment is the annuity rounded half up
once; an equal-principal part is the amount ÷ term rounded down. The last
instalment repays exactly the balance left, so it absorbs every rounding and
the principal parts add up to the amount to the fen.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext

from dealflow.models import (
    CENT,
    DealPolicy,
    Decision,
    Instalment,
    LoanSchedule,
    LoanTerms,
    RepaymentMethod,
    money,
)

# The terms a lender may name, in months: the deal's own bounds (DealInput).
MIN_TERM_MONTHS, MAX_TERM_MONTHS = 6, 84


def _fen(value: Decimal) -> Decimal:
    return value.quantize(CENT, ROUND_HALF_UP)


def _check_terms(principal: Decimal, apr_percent: Decimal, term_months: int) -> None:
    if principal <= 0:
        raise ValueError(f"the principal must be positive, not {principal}")
    if apr_percent < 0:
        raise ValueError(f"the rate must not be negative, not {apr_percent}")
    if not 1 <= term_months <= 600:
        raise ValueError(f"the term must be 1 to 600 months, not {term_months}")


def repayment_schedule(
    principal: Decimal,
    apr_percent: Decimal,
    term_months: int,
    method: RepaymentMethod = RepaymentMethod.EQUAL_INSTALMENTS,
) -> list[Instalment]:
    """The monthly instalments repaying `principal` over `term_months` at
    `apr_percent` a year (monthly rate = APR ÷ 12), by `method`."""
    _check_terms(principal, apr_percent, term_months)
    with localcontext() as context:
        context.prec = 34
        rate = apr_percent / Decimal(1200)
        balance = money(principal)
        if method is RepaymentMethod.EQUAL_PRINCIPAL:
            part = (balance / term_months).quantize(CENT, ROUND_DOWN)
            parts = [part] * (term_months - 1)
        else:
            if rate == 0:
                payment = _fen(balance / term_months)
            else:
                payment = _fen(balance * rate / (1 - (1 + rate) ** -term_months))
            parts = []
        schedule = []
        for number in range(1, term_months + 1):
            interest = _fen(balance * rate)
            if number == term_months:
                repaid = balance
            elif method is RepaymentMethod.EQUAL_PRINCIPAL:
                repaid = parts[number - 1]
            else:
                repaid = min(payment - interest, balance)
            balance -= repaid
            schedule.append(
                Instalment(
                    number=number,
                    payment=repaid + interest,
                    interest=interest,
                    principal=repaid,
                    balance=balance,
                )
            )
    return schedule


def loan_schedule(terms: LoanTerms) -> LoanSchedule:
    """The schedule of `terms` with what the customer pays in all."""
    instalments = repayment_schedule(terms.amount, terms.apr, terms.term_months, terms.method)
    total_interest = sum((row.interest for row in instalments), money(0))
    return LoanSchedule(
        terms=terms,
        first_payment=instalments[0].payment,
        last_payment=instalments[-1].payment,
        total_interest=total_interest,
        total_repayable=money(terms.amount) + total_interest,
        instalments=instalments,
    )


def lender_terms_problem(
    decision: Decision, apr: Decimal | None, term_months: int | None, policy: DealPolicy
) -> str | None:
    """Why the rate or term a lender's decision names cannot go into a loan
    contract, or None when they can. An approval or counter-offer must name
    its rate, at most the policy's `max_apr`; a term, when named, must be one
    the deal could have asked for (a missing term is the one requested)."""
    if decision is Decision.DECLINED:
        return None
    what = decision.value.replace("_", "-")
    if apr is None:
        if decision in (Decision.APPROVED, Decision.COUNTER_OFFER):
            return f"the {what} names no APR, so no loan contract can be drawn up"
    elif not 0 <= apr <= policy.max_apr:
        return f"the {what} names an APR of {apr}%, outside 0 to the policy's {policy.max_apr}%"
    if term_months is not None and not MIN_TERM_MONTHS <= term_months <= MAX_TERM_MONTHS:
        return (
            f"the {what} names a term of {term_months} months, outside "
            f"{MIN_TERM_MONTHS} to {MAX_TERM_MONTHS}"
        )
    return None
