"""Field types every model shares (money, references, free text) and the
strict base of every public entry point."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


@dataclass(frozen=True)
class DecimalText:
    """How a decimal amount is written in the API: a plain decimal string that
    `pattern` matches, or (for older clients) a JSON integer within
    [minimum, maximum]. The published JSON schema says exactly this; the API
    enforces it on request bodies (`dealflow.api.boundary`). Workflow payloads
    are not checked against it: they keep Pydantic's Decimal (de)serialization,
    so histories written before replay unchanged."""

    pattern: str
    minimum: int
    maximum: int
    description: str

    def json_schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string", "pattern": self.pattern},
                {"type": "integer", "minimum": self.minimum, "maximum": self.maximum},
            ],
            "description": self.description,
        }

    def check(self, value: object) -> object:
        """The API's reading of a body value: a matching string, an integer in
        range or a Decimal (Python callers) passes on to the Decimal validator;
        anything else is refused here, with the form to use."""
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f"write amounts as decimal strings: {self.description}")
        matches = not isinstance(value, str) or re.fullmatch(self.pattern, value)
        if not matches and not self._below_bound(str(value)):
            raise ValueError(f"not an amount as the API takes it: {self.description}")
        return value

    def _below_bound(self, text: str) -> bool:
        """A plain decimal under the lower bound: the Decimal validator's own
        bound refuses it, with the words a clerk knows ("greater than 0")."""
        if not re.fullmatch(r"-?\d{1,20}(\.\d{1,20})?", text):
            return False
        amount = Decimal(text)
        return self.minimum >= 0 and amount < 0 or self.minimum > 0 and amount == 0

    def annotation(self) -> WithJsonSchema:
        return WithJsonSchema(self.json_schema())


_CENTS = r"(\.\d{1,2})?"
MAX_MONEY = 999_999_999_999
MONEY_TEXT = DecimalText(
    rf"^-?(0|[1-9]\d{{0,11}}){_CENTS}$",
    -MAX_MONEY,
    MAX_MONEY,
    'CNY as a decimal string, at most 12 digits and 2 places, e.g. "45000.00"',
)
NON_NEG_MONEY_TEXT = DecimalText(
    rf"^(0|[1-9]\d{{0,11}}){_CENTS}$",
    0,
    MAX_MONEY,
    'CNY, 0 or more, as a decimal string: at most 12 digits and 2 places, e.g. "45000.00"',
)
POS_MONEY_TEXT = DecimalText(
    rf"^([1-9]\d{{0,11}}{_CENTS}|0\.(0[1-9]|[1-9]\d?))$",
    1,
    MAX_MONEY,
    'CNY, more than 0, as a decimal string: at most 12 digits and 2 places, e.g. "45000.00"',
)

# Money is CNY with two places, never float. `allow_inf_nan=False` and the
# digit limits make "1e400" or "NaN" a validation error rather than a value.
Money = Annotated[
    Decimal,
    Field(max_digits=14, decimal_places=2, allow_inf_nan=False),
    MONEY_TEXT,
    MONEY_TEXT.annotation(),
]
NonNegMoney = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False),
    NON_NEG_MONEY_TEXT,
    NON_NEG_MONEY_TEXT.annotation(),
]
PosMoney = Annotated[
    Decimal,
    Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False),
    POS_MONEY_TEXT,
    POS_MONEY_TEXT.annotation(),
]
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"
REF_MAX_LENGTH = 64
Ref = Annotated[str, Field(min_length=1, max_length=REF_MAX_LENGTH, pattern=REF_PATTERN)]
_REF = re.compile(REF_PATTERN)


def is_ref(value: object) -> bool:
    """Whether `value` is a reference as `Ref` accepts it: what a lender's
    application_ref must be before DealFlow puts it into a URL or a deal."""
    return isinstance(value, str) and len(value) <= REF_MAX_LENGTH and bool(_REF.fullmatch(value))


Text = Annotated[str, Field(min_length=1, max_length=500)]


def normalise_id_number(value: object) -> object:
    """An ID number as printed, whatever the clerk typed: no spaces, and the
    check character X in capitals. Applied wherever an ID number enters (a new
    deal, an ID card's record, the application form), so every comparison
    after it compares one spelling."""
    if isinstance(value, str):
        return "".join(value.split()).upper()
    return value


# A PRC resident ID number; the rules (`dealflow.rules.identity`) check it.
# The schema states what the normaliser takes: 15 digits, or 17 and a digit
# or X (either case), with white space anywhere.
ID_NUMBER_PATTERN = r"^\s*(([0-9]\s*){15}|([0-9]\s*){17}[0-9Xx]\s*)$"
IdNumber = Annotated[
    str,
    BeforeValidator(normalise_id_number),
    Field(min_length=15, max_length=18),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": ID_NUMBER_PATTERN,
            "description": "PRC resident ID number (18 characters with its check "
            "character, or the old 15 digits); spaces are ignored",
        }
    ),
]

CENT = Decimal("0.01")


def money(value: Decimal | int | str) -> Decimal:
    return Decimal(value).quantize(CENT)


def fmt_money(value: Decimal | int | str) -> str:
    """30000 -> '30,000.00': the form clerks read in error messages."""
    return f"{money(value):,.2f}"


class Strict(BaseModel):
    # Unknown fields are an error at every public entry point: a typo in a
    # payload must not be silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=False)
