"""Field types every model shares (money, references, free text) and the
strict base of every public entry point."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Money is CNY with two places, never float. `allow_inf_nan=False` and the
# digit limits make "1e400" or "NaN" a validation error rather than a value.
Money = Annotated[Decimal, Field(max_digits=14, decimal_places=2, allow_inf_nan=False)]
NonNegMoney = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
PosMoney = Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
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
IdNumber = Annotated[str, BeforeValidator(normalise_id_number), Field(min_length=15, max_length=18)]

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
