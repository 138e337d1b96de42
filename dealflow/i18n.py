"""The desk's languages: English and Chinese, every string in one catalogue.

Templates write `{{ _("My work") }}`; the catalogue `dealflow/locale/zh/
LC_MESSAGES/messages.po` holds the Chinese. The language is the `lang`
cookie the switch sets, else the browser's Accept-Language, else English.
Dates and amounts are formatted for the language with Babel.
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime, format_timedelta
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from fastapi import Request

LANGUAGES = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE = "en"
LANGUAGE_COOKIE = "dealflow_lang"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_BABEL_LOCALES = {"en": "en_GB", "zh": "zh_Hans_CN"}

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


def babel_locale() -> Locale:
    return Locale.parse(_BABEL_LOCALES[current_language.get()])


def format_money(amount: Decimal | None) -> str:
    """An amount in yuan, two decimals, grouped for the language."""
    if amount is None:
        return "—"
    return format_currency(amount, "CNY", locale=babel_locale(), decimal_quantization=True)


def format_number(value: Decimal | float | int) -> str:
    return format_decimal(value, locale=babel_locale())


def format_when(moment: datetime | None) -> str:
    """A moment in UTC, medium length, for the language."""
    if moment is None:
        return "—"
    return format_datetime(moment, "medium", tzinfo=UTC, locale=babel_locale()) + " UTC"


def format_duration(span: timedelta | None) -> str:
    """A span of time in its largest unit that counts at least two (26 hours,
    not 1 day), short, for the language."""
    if span is None:
        return "—"
    return format_timedelta(span, threshold=2, format="short", locale=babel_locale())
