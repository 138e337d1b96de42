"""The desk's languages: English and Chinese, every string in one catalogue.

Templates write `{{ _("My work") }}`; the catalogue `dealflow/locale/zh/
LC_MESSAGES/messages.po` holds the Chinese. The language is the `lang`
cookie the switch sets, else the browser's Accept-Language, else English.
Dates and amounts are formatted for the language with Babel.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import (
    format_datetime,
    format_timedelta,
    get_date_format,
    get_datetime_format,
    get_time_format,
)
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from fastapi import Request

LANGUAGES = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE = "en"
LANGUAGE_COOKIE = "dealflow_lang"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_BABEL_LOCALES = {"en": "en_GB", "zh": "zh_Hans_CN"}
CENTS = Decimal("0.01")

current_language: ContextVar[str] = ContextVar("current_language", default=DEFAULT_LANGUAGE)


@cache
def catalogue(language: str) -> dict[str, str]:
    """msgid → translation for `language`; empty for English (the msgids are English)."""
    path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return {}
    with path.open("rb") as po:
        messages = read_po(po, locale=_BABEL_LOCALES.get(language, language))
    return {
        str(message.id): str(message.string)
        for message in messages
        if message.id and isinstance(message.id, str) and message.string
    }


def N_(message: str) -> str:
    """Marks a string for the catalogue; it is translated where it is shown."""
    return message


def gettext(message: str) -> str:
    return catalogue(current_language.get()).get(message, message)


def ngettext(singular: str, plural: str, count: int) -> str:
    return gettext(singular if count == 1 else plural)


def negotiate(request: Request) -> str:
    """The language of this request: the switch's cookie, else the browser's."""
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for part in request.headers.get("accept-language", "").split(",")[:20]:
        tag = part.split(";")[0].strip().lower()
        primary = tag.split("-")[0]
        if primary in LANGUAGES:
            return primary
    return DEFAULT_LANGUAGE


@cache
def _locale(language: str) -> Locale:
    return Locale.parse(_BABEL_LOCALES[language])


def babel_locale() -> Locale:
    return _locale(current_language.get())


# Formatting each amount and moment through Babel's general entry points cost
# more than the query behind a 50-row deals page (parsing the locale and the
# pattern every time). The shapes below are read from Babel once per language
# and give the same text (tests/desk/test_formatting.py compares them).


@dataclass(frozen=True)
class _MoneyShape:
    prefix: str
    suffix: str
    negative_prefix: str
    negative_suffix: str
    group: str
    decimal: str


_MONEY_SAMPLE = re.compile(r"^(.*?)1(?P<group>\D+)234(?P=group)567(\D+)89(.*)$")


@cache
def _money_shape(language: str) -> _MoneyShape:
    """How `language` writes yuan, read off Babel's text for a sample amount."""
    positive, negative = (
        format_currency(Decimal(sample), "CNY", locale=_locale(language))
        for sample in ("1234567.89", "-1234567.89")
    )
    pos, neg = _MONEY_SAMPLE.match(positive), _MONEY_SAMPLE.match(negative)
    if pos is None or neg is None:
        raise ValueError(f"unexpected money format for {language}: {positive!r}, {negative!r}")
    return _MoneyShape(pos[1], pos[4], neg[1], neg[4], pos[2], pos[3])


def format_money(amount: Decimal | None) -> str:
    """An amount in yuan, two decimals, grouped for the language."""
    if amount is None:
        return "—"
    shape = _money_shape(current_language.get())
    cents = Decimal(amount).quantize(CENTS)
    digits = f"{abs(cents):,.2f}"
    if (shape.group, shape.decimal) != (",", "."):
        digits = digits.translate({ord(","): shape.group, ord("."): shape.decimal})
    if cents.is_signed() and cents:
        return f"{shape.negative_prefix}{digits}{shape.negative_suffix}"
    return f"{shape.prefix}{digits}{shape.suffix}"


def format_number(value: Decimal | float | int) -> str:
    return format_decimal(value, locale=babel_locale())


def format_percent(points: Decimal | None) -> str:
    """A figure already in percent ("70.00" → "70.0%"): one decimal at least,
    two when the figure has them (an annual rate of 4.35%), shown as the
    language writes numbers; the digits are the figure's own, not rounded
    again."""
    if points is None:
        return "—"
    return format_decimal(points, format="#,##0.0#", locale=babel_locale()) + "%"


# The date and time fields Babel's medium patterns of our languages use, each
# formatted as Babel does; a pattern with any other field goes through Babel.
_WHEN_FIELDS = frozenset({"d", "dd", "M", "MM", "MMM", "y", "HH", "mm", "ss"})
_PATTERN_FIELD = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class _WhenShape:
    text: str  # the %-format of the date and time, or "" when Babel must do it
    months: tuple[str, ...]


@cache
def _when_shape(language: str) -> _WhenShape:
    locale = _locale(language)
    combined = str(get_datetime_format("medium", locale=locale)).replace("'", "")
    # A pattern's `format` is its %-style text, e.g. "%(d)s %(MMM)s %(y)s".
    date_format = str(get_date_format("medium", locale).format)
    time_format = str(get_time_format("medium", locale).format)
    text = combined.replace("{0}", time_format).replace("{1}", date_format)
    if not set(_PATTERN_FIELD.findall(text)) <= _WHEN_FIELDS or "%" in _PATTERN_FIELD.sub("", text):
        text = ""
    abbreviated = locale.months["format"]["abbreviated"]
    return _WhenShape(text, tuple(abbreviated[month] for month in range(1, 13)))


def format_when(moment: datetime | None) -> str:
    """A moment in UTC, medium length, for the language."""
    if moment is None:
        return "—"
    language = current_language.get()
    shape, at = _when_shape(language), moment.astimezone(UTC)
    if not shape.text:
        return format_datetime(at, "medium", tzinfo=UTC, locale=_locale(language)) + " UTC"
    fields = {
        "d": str(at.day),
        "dd": f"{at.day:02d}",
        "M": str(at.month),
        "MM": f"{at.month:02d}",
        "MMM": shape.months[at.month - 1],
        "y": str(at.year),
        "HH": f"{at.hour:02d}",
        "mm": f"{at.minute:02d}",
        "ss": f"{at.second:02d}",
    }
    return shape.text % fields + " UTC"


def format_duration(span: timedelta | None) -> str:
    """A span of time in its largest unit that counts at least two (26 hours,
    not 1 day), short, for the language."""
    if span is None:
        return "—"
    return format_timedelta(span, threshold=2, format="short", locale=babel_locale())
