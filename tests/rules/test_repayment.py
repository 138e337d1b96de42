"""The loan's ratio to the price (dealflow/rules/money.py) and its repayment
schedule (dealflow/rules/schedule.py): equal instalments (等额本息) and equal
principal (等额本金), exact to the fen, the last instalment absorbing the rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dealflow import rules
from dealflow.models import DealPolicy, Decision, LoanTerms, RepaymentMethod

EQUAL_PRINCIPAL = RepaymentMethod.EQUAL_PRINCIPAL

principal_st = st.decimals(min_value=Decimal("1000.00"), max_value=Decimal("5000000.00"), places=2)
apr_st = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("36.00"), places=2)
term_st = st.integers(min_value=6, max_value=84)


def test_a_textbook_annuity_to_the_fen() -> None:
    schedule = rules.repayment_schedule(Decimal("100000.00"), Decimal("12"), 12)
    first, last = schedule[0], schedule[-1]
    # 100,000 at 1 % a month over 12 months: 8,884.88 a month (annuity formula).
    assert (first.payment, first.interest, first.principal) == (
        Decimal("8884.88"),
        Decimal("1000.00"),
        Decimal("7884.88"),
    )
    assert first.balance == Decimal("92115.12")
    assert all(instalment.payment == Decimal("8884.88") for instalment in schedule[:-1])
    # The last instalment repays exactly what is left: three fen less here.
    assert last.payment == Decimal("8884.85") and last.balance == Decimal("0.00")


def test_at_zero_rate_the_principal_is_split_and_the_last_takes_the_remainder() -> None:
    schedule = rules.repayment_schedule(Decimal("100.00"), Decimal("0"), 3)
    assert [instalment.payment for instalment in schedule] == [
        Decimal("33.33"),
        Decimal("33.33"),
        Decimal("33.34"),
    ]
    assert all(instalment.interest == 0 for instalment in schedule)


def test_halves_round_up() -> None:
    # 1,001.00 at 6 % (0.5 % a month): the first interest is exactly 5.005,
    # which rounds to 5.01 (half up; banker's rounding would give 5.00).
    assert rules.repayment_schedule(Decimal("1001.00"), Decimal("6"), 6)[0].interest == Decimal(
        "5.01"
    )


@given(principal=principal_st, apr=apr_st, term=term_st)
def test_the_principal_parts_repay_the_loan_exactly(
    principal: Decimal, apr: Decimal, term: int
) -> None:
    schedule = rules.repayment_schedule(principal, apr, term)
    assert len(schedule) == term
    assert sum(instalment.principal for instalment in schedule) == principal
    assert schedule[-1].balance == 0
    for instalment in schedule:
        assert instalment.payment == instalment.principal + instalment.interest
        assert instalment.payment.as_tuple().exponent == -2
        assert instalment.principal >= 0
    # Equal instalments: only the last may differ, by the rounding left over:
    # at most half a fen a month from the instalment's rounding and half from
    # the interest's, each growing at the monthly rate until the end.
    assert len({instalment.payment for instalment in schedule[:-1]}) <= 1
    growth = sum((1 + apr / 1200) ** month for month in range(term))
    assert abs(schedule[-1].payment - schedule[0].payment) <= Decimal("0.01") * growth


def test_equal_principal_repays_the_same_principal_with_interest_on_the_balance() -> None:
    schedule = rules.repayment_schedule(Decimal("120000.00"), Decimal("6"), 12, EQUAL_PRINCIPAL)
    first, second, last = schedule[0], schedule[1], schedule[-1]
    # 10,000 of principal a month; interest 0.5 % of the balance: 600, then 550, ... 50.
    assert (first.payment, first.interest, first.principal) == (
        Decimal("10600.00"),
        Decimal("600.00"),
        Decimal("10000.00"),
    )
    assert (second.payment, second.interest) == (Decimal("10550.00"), Decimal("550.00"))
    assert (last.payment, last.interest, last.balance) == (
        Decimal("10050.00"),
        Decimal("50.00"),
        Decimal("0.00"),
    )


def test_equal_principal_rounds_the_part_down_and_the_last_takes_the_remainder() -> None:
    schedule = rules.repayment_schedule(Decimal("100.00"), Decimal("0"), 3, EQUAL_PRINCIPAL)
    assert [row.principal for row in schedule] == [
        Decimal("33.33"),
        Decimal("33.33"),
        Decimal("33.34"),
    ]


@given(
    principal=principal_st,
    apr=apr_st,
    term=term_st,
    method=st.sampled_from(list(RepaymentMethod)),
)
def test_every_schedule_sums_to_the_amount_plus_its_interest_in_positive_instalments(
    principal: Decimal, apr: Decimal, term: int, method: RepaymentMethod
) -> None:
    loan = rules.loan_schedule(
        LoanTerms(amount=principal, apr=apr, term_months=term, method=method)
    )
    rows = loan.instalments
    assert sum(row.payment for row in rows) == principal + loan.total_interest
    assert loan.total_repayable == principal + loan.total_interest
    assert sum(row.principal for row in rows) == principal and rows[-1].balance == 0
    assert all(row.payment > 0 and row.principal > 0 for row in rows)
    assert (loan.first_payment, loan.last_payment) == (rows[0].payment, rows[-1].payment)


@given(principal=principal_st, apr=apr_st, term=term_st)
def test_equal_principal_parts_are_equal_but_the_last_which_takes_under_a_fen_a_month(
    principal: Decimal, apr: Decimal, term: int
) -> None:
    rows = rules.repayment_schedule(principal, apr, term, EQUAL_PRINCIPAL)
    part = rows[0].principal
    assert all(row.principal == part for row in rows[:-1])
    assert Decimal(0) <= rows[-1].principal - part < Decimal("0.01") * term
    # Interest falls with the balance, so no payment before the last rises.
    assert all(a.payment >= b.payment for a, b in zip(rows[:-2], rows[1:-1], strict=True))


@pytest.mark.parametrize(
    ("decision", "apr", "term", "problem"),
    [
        (
            Decision.APPROVED,
            None,
            36,
            "the approved names no APR, so no loan contract can be drawn up",
        ),
        (
            Decision.COUNTER_OFFER,
            None,
            36,
            "the counter-offer names no APR, so no loan contract can be drawn up",
        ),
        (
            Decision.APPROVED,
            Decimal("24.01"),
            36,
            "the approved names an APR of 24.01%, outside 0 to the policy's 24.00%",
        ),
        (
            Decision.APPROVED,
            Decimal("-1"),
            36,
            "the approved names an APR of -1%, outside 0 to the policy's 24.00%",
        ),
        (
            Decision.APPROVED,
            Decimal("6.5"),
            120,
            "the approved names a term of 120 months, outside 6 to 84",
        ),
        (Decision.APPROVED, Decimal("24.00"), 84, None),
        (Decision.APPROVED, Decimal("0"), None, None),
        (Decision.CONDITIONAL, None, None, None),
        (Decision.DECLINED, None, None, None),
    ],
)
def test_a_lenders_rate_and_term_are_bounded(
    decision: Decision, apr: Decimal | None, term: int | None, problem: str | None
) -> None:
    assert rules.lender_terms_problem(decision, apr, term, DealPolicy()) == problem


def test_a_used_car_is_repaid_in_equal_principal_by_default() -> None:
    policy = DealPolicy()
    assert policy.repayment_method == {
        "new_car": RepaymentMethod.EQUAL_INSTALMENTS,
        "new_energy_car": RepaymentMethod.EQUAL_INSTALMENTS,
        "used_car": EQUAL_PRINCIPAL,
    }


@pytest.mark.parametrize(
    ("principal", "apr", "term"),
    [(Decimal("0"), Decimal("5"), 12), (Decimal("100"), Decimal("-1"), 12), (Decimal(1), 5, 0)],
)
def test_impossible_terms_are_refused(principal: Decimal, apr: Decimal, term: int) -> None:
    with pytest.raises(ValueError):
        rules.repayment_schedule(principal, Decimal(apr), term)


def test_loan_to_value_is_a_percentage_rounded_half_up() -> None:
    assert rules.loan_to_value(Decimal("105000.00"), Decimal("150000.00")) == Decimal("70.00")
    assert rules.loan_to_value(Decimal("1.00"), Decimal("3.00")) == Decimal("33.33")
    assert rules.loan_to_value(Decimal("1.00"), Decimal("1600.00")) == Decimal("0.06")  # 0.0625
    with pytest.raises(ValueError):
        rules.loan_to_value(Decimal("1.00"), Decimal("0"))
