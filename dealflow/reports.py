"""The reports, as pure computations over facts the read model holds.

No clock and no I/O: callers pass the facts (`dealflow/storage/db/reports.py`
reads them) and `now`. The JSON routes (`/api/reports/...`) and the desk's
reports page show these very models, so both always agree.

Periods are whole days in UTC: `from` 00:00 up to the day after `to` 00:00,
at most `MAX_PERIOD_DAYS` days. Durations are in seconds.

Percentiles use linear interpolation between the closest ranks (Hyndman and
Fan's definition 7, the default of numpy, R and Excel's PERCENTILE.INC): for
sorted values x[0..n-1] the p-th percentile is at rank h = (n - 1) * p / 100,
x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). The median is
then the usual median (the mean of the middle two for an even count).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pydantic import BaseModel, ConfigDict, Field

from dealflow.models import STAGE_ORDER, Decision, PendingAction, Stage

MAX_PERIOD_DAYS = 366
DEFAULT_PERIOD_DAYS = 30
PERCENTILE_METHOD = "linear interpolation between closest ranks (Hyndman-Fan 7)"
# Decisions counted as approvals: a conditional approval is an approval with
# stipulations to meet before funding.
APPROVALS = frozenset({Decision.APPROVED, Decision.CONDITIONAL})
CLOSED_UNDONE = (Stage.CANCELLED, Stage.DECLINED, Stage.EXPIRED)


class PeriodError(ValueError):
    """A period that cannot be reported on (bad order, too long)."""


class Period(BaseModel):
    """Whole UTC days, both ends included."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    start: date = Field(alias="from")
    end: date = Field(alias="to")

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time(0), tzinfo=UTC)

    @property
    def until(self) -> datetime:
        """The first moment after the period."""
        return datetime.combine(self.end + timedelta(days=1), time(0), tzinfo=UTC)

    def holds(self, moment: datetime | None) -> bool:
        return moment is not None and self.since <= moment < self.until


def period_of(start: date | None, end: date | None, today: date) -> Period:
    """The period asked for. Without dates, the 30 days up to today; with one,
    the 30 days from or up to it."""
    span = timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    end = end or (today if start is None else start + span)
    start = start or end - span
    if start > end:
        raise PeriodError(f"from {start.isoformat()} is after to {end.isoformat()}")
    days = (end - start).days + 1
    if days > MAX_PERIOD_DAYS:
        raise PeriodError(
            f"the period from {start.isoformat()} to {end.isoformat()} is {days} days; "
            f"at most {MAX_PERIOD_DAYS} days can be reported at once"
        )
    return Period(start=start, end=end)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) of `values` by the method the module names."""
    if not values:
        raise ValueError("no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --------------------------------------------------------------------------- funnel


@dataclass(frozen=True)
class Move:
    """A stage change in the period; `entered_at` is when the stage it left was entered."""

    at: datetime
    from_stage: Stage | None
    to_stage: Stage
    entered_at: datetime | None = None


class FunnelStage(BaseModel):
    stage: Stage
    entered: int = Field(description="deals that entered the stage in the period")
    left: int = Field(description="deals that left the stage in the period")


class FunnelReport(BaseModel):
    period: Period
    stages: list[FunnelStage]


def funnel(moves: Iterable[Move], period: Period) -> FunnelReport:
    """Per stage, in process order, how many moves into and out of it the period saw.
    A deal that enters a stage twice (stipulations reopen DOCUMENTS) counts twice."""
    entered: Counter[Stage] = Counter()
    left: Counter[Stage] = Counter()
    for move in moves:
        if not period.holds(move.at):
            continue
        entered[move.to_stage] += 1
        if move.from_stage is not None:
            left[move.from_stage] += 1
    return FunnelReport(
        period=period,
        stages=[FunnelStage(stage=s, entered=entered[s], left=left[s]) for s in STAGE_ORDER],
    )


# --------------------------------------------------------------------------- time in stage


class StageTime(BaseModel):
    stage: Stage
    stays: int = Field(description="stays in the stage that ended in the period")
    median_seconds: float | None
    p90_seconds: float | None


class TimeInStageReport(BaseModel):
    period: Period
    method: str = PERCENTILE_METHOD
    stages: list[StageTime]


def time_in_stage(moves: Iterable[Move], period: Period) -> TimeInStageReport:
    """Median and 90th percentile of the stays that ended in the period, per stage.
    Stays still going are not counted: their length is not known yet."""
    stays: dict[Stage, list[float]] = {}
    for move in moves:
        if move.from_stage is None or move.entered_at is None or not period.holds(move.at):
            continue
        seconds = max((move.at - move.entered_at).total_seconds(), 0.0)
        stays.setdefault(move.from_stage, []).append(seconds)
    rows = []
    for stage in STAGE_ORDER:
        if stage.terminal:
            continue
        values = stays.get(stage, [])
        rows.append(
            StageTime(
                stage=stage,
                stays=len(values),
                median_seconds=_rounded(percentile(values, 50)) if values else None,
                p90_seconds=_rounded(percentile(values, 90)) if values else None,
            )
        )
    return TimeInStageReport(period=period, stages=rows)


# --------------------------------------------------------------------------- overdue


class OverdueCount(BaseModel):
    stage: Stage
    role: str
    overdue: int = Field(description="pending actions of the role past their due time")


class OverdueReport(BaseModel):
    as_of: datetime
    total: int
    rows: list[OverdueCount]


def overdue(pending: Iterable[tuple[Stage, PendingAction]], now: datetime) -> OverdueReport:
    """Pending actions past due now, by the deal's stage and the role that owes them."""
    counts: Counter[tuple[Stage, str]] = Counter(
        (stage, action.role.value)
        for stage, action in pending
        if action.due is not None and action.due < now
    )
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    rows = [
        OverdueCount(stage=stage, role=role, overdue=count)
        for (stage, role), count in sorted(
            counts.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
        )
    ]
    return OverdueReport(as_of=now, total=sum(counts.values()), rows=rows)


# --------------------------------------------------------------------------- lenders


@dataclass(frozen=True)
class Application:
    """One application to a lender, as the read model holds it."""

    lender_id: str
    submitted_at: datetime | None
    first_decided_at: datetime | None
    decision: Decision | None


class LenderFigures(BaseModel):
    lender_id: str
    submitted: int = Field(description="applications the lender acknowledged in the period")
    decided: int = Field(description="applications the lender first answered in the period")
    approved: int
    conditional: int
    counter_offer: int
    declined: int
    approval_rate: float | None = Field(
        description="(approved + conditional) / decided, by the decision in force"
    )
    median_turnaround_seconds: float | None = Field(
        description="from acknowledgement to the lender's first answer"
    )
    p90_turnaround_seconds: float | None


class LenderReport(BaseModel):
    period: Period
    method: str = PERCENTILE_METHOD
    lenders: list[LenderFigures]


def lender_figures(applications: Iterable[Application], period: Period) -> LenderReport:
    """Per lender: approval rate and decision turnaround of the answers given in the period."""
    submitted: Counter[str] = Counter()
    decisions: dict[str, Counter[Decision]] = {}
    turnarounds: dict[str, list[float]] = {}
    for app in applications:
        if period.holds(app.submitted_at):
            submitted[app.lender_id] += 1
        if not period.holds(app.first_decided_at) or app.decision is None:
            continue
        decisions.setdefault(app.lender_id, Counter())[app.decision] += 1
        if app.submitted_at is not None and app.first_decided_at is not None:
            # A webhook can overtake the lender's own 202: never a negative wait.
            waited = max((app.first_decided_at - app.submitted_at).total_seconds(), 0.0)
            turnarounds.setdefault(app.lender_id, []).append(waited)
    rows = []
    for lender in sorted(set(submitted) | set(decisions)):
        counts = decisions.get(lender, Counter())
        decided = sum(counts.values())
        waits = turnarounds.get(lender, [])
        rows.append(
            LenderFigures(
                lender_id=lender,
                submitted=submitted[lender],
                decided=decided,
                approved=counts[Decision.APPROVED],
                conditional=counts[Decision.CONDITIONAL],
                counter_offer=counts[Decision.COUNTER_OFFER],
                declined=counts[Decision.DECLINED],
                approval_rate=(
                    round(sum(counts[d] for d in APPROVALS) / decided, 4) if decided else None
                ),
                median_turnaround_seconds=_rounded(percentile(waits, 50)) if waits else None,
                p90_turnaround_seconds=_rounded(percentile(waits, 90)) if waits else None,
            )
        )
    return LenderReport(period=period, lenders=rows)


# --------------------------------------------------------------------------- reasons


@dataclass(frozen=True)
class Closure:
    stage: Stage
    closed_at: datetime
    reason: str
    reason_codes: tuple[str, ...] = ()


class ReasonCount(BaseModel):
    outcome: Stage
    reason: str = Field(
        description="a declined deal's adverse-action reason code; else the reason recorded"
    )
    deals: int


class ReasonReport(BaseModel):
    period: Period
    closed: dict[str, int] = Field(description="deals cancelled, declined, expired in the period")
    reasons: list[ReasonCount]


def close_reasons(closures: Iterable[Closure], period: Period) -> ReasonReport:
    """Why deals were cancelled, declined or expired in the period. A declined
    deal counts once under each of its reason codes; the others under their reason."""
    closed: Counter[Stage] = Counter()
    reasons: Counter[tuple[Stage, str]] = Counter()
    for closure in closures:
        if closure.stage not in CLOSED_UNDONE or not period.holds(closure.closed_at):
            continue
        closed[closure.stage] += 1
        if closure.stage is Stage.DECLINED and closure.reason_codes:
            for code in dict.fromkeys(closure.reason_codes):
                reasons[(closure.stage, code)] += 1
        else:
            reasons[(closure.stage, " ".join(closure.reason.split()))] += 1
    order = {stage: i for i, stage in enumerate(CLOSED_UNDONE)}
    rows = [
        ReasonCount(outcome=stage, reason=reason, deals=count)
        for (stage, reason), count in sorted(
            reasons.items(), key=lambda kv: (order[kv[0][0]], -kv[1], kv[0][1])
        )
    ]
    return ReasonReport(
        period=period,
        closed={stage.value: closed[stage] for stage in CLOSED_UNDONE},
        reasons=rows,
    )
