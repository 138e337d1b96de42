"""The loan's ratio to the price and its repayment schedule (dealflow/rules/money.py):
equal monthly instalments, every amount rounded half up to the fen."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dealflow import rules

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
