"""Identity numbers: PRC resident ID cards and vehicle identification numbers."""

from __future__ import annotations

from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumError

from dealflow.rules.errors import invalid


def validate_id_number(number: str, whose: str) -> str:
    """A PRC resident ID number: 18 characters, valid birth date, ISO 7064 check digit."""
    try:
        return str(ric.validate(number))
    except StdnumError as e:
        raise invalid(f"{whose} ID number is not valid: {str(e).lower()}") from e


_VIN_VALUES = {
    **{str(i): i for i in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def validate_vin(vin: str) -> None:
    """17 characters without I, O, Q; position 9 is the check digit (GB 16735 / ISO 3779)."""
    bad = sorted({c for c in vin if c not in _VIN_VALUES})
    if len(vin) != 17 or bad:
        raise invalid(f"VIN {vin!r} must be 17 characters from 0-9 and A-Z without I, O, Q")
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True)) % 11
    expected = "X" if total == 10 else str(total)
    if vin[8] != expected:
        raise invalid(f"VIN {vin} fails its check digit (position 9 should be {expected})")
