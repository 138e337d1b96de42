"""What a lender's error answer says, fit for history, staff notices and logs.

A lender's error body may quote what it was sent — the customer's name, ID
number, phone. The text of an activity's failure lands in the worker's log
and in history (encrypted) and, for a refusal, in the notice staff read; so
only its gist goes there: the `detail` (or `reason`, `message`, `title`) of a
JSON body, else the body itself, with every personal value DealFlow sent
replaced and long digit runs masked, at most `MAX_REASON_CHARS` characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

MAX_REASON_CHARS = 300
# Parts of a request body that hold a person's data (the application's
# `applicant` and `spouse`), and fields that are personal wherever they are.
_PERSONAL_SECTIONS = frozenset({"applicant", "spouse"})
_PERSONAL_FIELDS = frozenset(
    {"full_name", "id_number", "phone", "account_number", "account_name", "bank_account"}
)
# Phone, ID and account numbers: 11 digits or more in a row.
_LONG_DIGITS = re.compile(r"\d{11,}")
_REASON_FIELDS = ("detail", "reason", "message", "title", "error")


def personal_values(body: Any, personal: bool = False) -> Iterator[str]:
    """The string values of `body` that are personal data."""
    if isinstance(body, dict):
        for key, value in body.items():
            yield from personal_values(
                value, personal or key in _PERSONAL_SECTIONS or key in _PERSONAL_FIELDS
            )
    elif isinstance(body, list):
        for item in body:
            yield from personal_values(item, personal)
    elif personal and isinstance(body, str) and len(body.strip()) >= 2:
        yield body.strip()


def _gist(text: str) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    if isinstance(answer, dict):
        for field in _REASON_FIELDS:
            if isinstance(answer.get(field), str) and answer[field].strip():
                return str(answer[field])
    return text


def lender_reason(text: str, sent: dict[str, Any]) -> str:
    """The gist of a lender's error body `text`, without the personal values of
    `sent` (the body DealFlow posted) or long digit runs, truncated."""
    reason = " ".join(_gist(text).split())
    for value in sorted(set(personal_values(sent)), key=len, reverse=True):
        reason = reason.replace(value, "[personal data]")
    reason = _LONG_DIGITS.sub("[number]", reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return reason or "(no reason given)"
