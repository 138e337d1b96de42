"""The dealer's calendar: every date rule ("today", "not in the future", "due
from") reads dates in the dealer's time zone, not in UTC — between midnight
and 08:00 in Beijing, UTC still says yesterday."""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dealflow.models import DealPolicy
from dealflow.rules.errors import invalid


@cache
def dealer_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise invalid(f"policy time_zone {name!r} is not a known IANA time zone") from e


def dealer_date(policy: DealPolicy, moment: datetime) -> date:
    """The dealer's date at `moment` (a naive time is taken as UTC)."""
    instant = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return instant.astimezone(dealer_zone(policy.time_zone)).date()
