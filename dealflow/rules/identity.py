"""Identity numbers: PRC resident ID cards and vehicle identification numbers."""

from __future__ import annotations

import re
from datetime import date

from dealflow.rules.errors import invalid

# 6-digit region code, birth date YYYYMMDD, 3-digit sequence, check character.
_ID_SHAPE = re.compile(r"^(\d{6})(\d{4})(\d{2})(\d{2})(\d{3})([0-9X])$")
# ISO 7064 MOD 11-2 (GB 11643): the weight of position i is 2^(17-i) mod 11.
_ID_WEIGHTS = tuple(2 ** (17 - i) % 11 for i in range(17))


def id_check_character(first17: str) -> str:
    """The check character GB 11643 gives the first 17 digits."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def id_birth_date(number: str) -> date | None:
    """The birth date an ID number of the right shape carries, None if not a date."""
    try:
        return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return None


def age_on(birth: date, day: date) -> int:
    """Full years from `birth` to `day` (a 29 February birthday falls on 1 March)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def validate_id_number(
    number: str, whose: str, *, today: date, ages: tuple[int, int] | None = None
) -> str:
    """A PRC resident ID number (GB 11643): 18 characters, a real birth date in
    the past, the check character; with `ages`, a holder of that age range on
    `today`. Nothing else: a region code is not looked up (codes are renamed
    and retired, yet IDs issued under them stay valid for life). Returns the
    number as printed (X in capitals)."""
    printed = "".join(number.split()).upper()
    match = _ID_SHAPE.match(printed)
    if match is None:
        raise invalid(
            f"{whose} ID number is not valid: it must be 17 digits and a check "
            "character (a digit or X)"
        )
    birth = id_birth_date(printed)
    if birth is None:
        raise invalid(f"{whose} ID number is not valid: digits 7-14 are not a birth date")
    if birth >= today:
        raise invalid(f"{whose} ID number is not valid: its birth date is not in the past")
    if printed[17] != id_check_character(printed[:17]):
        raise invalid(
            f"{whose} ID number is not valid: its check character does not match the "
            "other 17 digits (one of them is mistyped)"
        )
    if ages is not None:
        youngest, oldest = ages
        age = age_on(birth, today)
        if not youngest <= age <= oldest:
            raise invalid(
                f"the {whose} is {age} years old; the policy finances applicants "
                f"aged {youngest} to {oldest}"
            )
    return printed


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
