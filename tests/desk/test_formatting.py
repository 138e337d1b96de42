"""The desk's money and time formatting gives Babel's own text, in every language."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from babel.dates import format_datetime
from babel.numbers import format_currency

from dealflow import i18n


@pytest.mark.parametrize("language", sorted(i18n.LANGUAGES))
def test_money_and_moments_read_as_babel_writes_them(language: str) -> None:
    rng = random.Random(11)
    amounts = [Decimal("0"), Decimal("-0.01"), Decimal("0.5"), Decimal("999.999")]
    amounts += [Decimal(rng.randrange(-(10**12), 10**12)) / 100 for _ in range(300)]
    moments = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**9))]
    moments += [datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=8)))]
    moments += [
        datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**9))
        for _ in range(200)
    ]
    token = i18n.current_language.set(language)
    try:
        locale = i18n.babel_locale()
        for amount in amounts:
            expected = format_currency(amount, "CNY", locale=locale, decimal_quantization=True)
            assert i18n.format_money(amount) == expected, amount
        for moment in moments:
            expected = format_datetime(moment, "medium", tzinfo=UTC, locale=locale) + " UTC"
            assert i18n.format_when(moment) == expected, moment
        assert i18n.format_money(None) == i18n.format_when(None) == "—"
    finally:
        i18n.current_language.reset(token)
