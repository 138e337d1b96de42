"""Reports on the desk: the funnel, time in stage, overdue work, lenders and
why deals closed, for a period — each an SVG chart drawn on the server with
its numbers in a table beside it.

The figures are `operations`' report functions, the same the JSON routes
(`/api/reports/...`) answer with; who may see them is `rules.REPORT_ROLES`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dealflow import reports, rules
from dealflow.api import operations
from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.desk.charts import Chart, bar_chart, duration
from dealflow.desk.pages import render_page
from dealflow.desk.session import SignedIn
from dealflow.i18n import gettext as _

router = APIRouter()


@dataclass(frozen=True)
class ReportSet:
    funnel: reports.FunnelReport
    times: reports.TimeInStageReport
    overdue: reports.OverdueReport
    lenders: reports.LenderReport
    reasons: reports.ReasonReport


def _day(raw: str, name: str, errors: dict[str, str]) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        errors[name] = f"{raw[:40]!r} is not a date; write it as YYYY-MM-DD"
        return None


async def _gather(
    request: Request, period: reports.Period, dealers: rules.DealerScope
) -> ReportSet:
    """Every report of the period, of the deals of `dealers` (None: all)."""
    svc = services(request)
    funnel, times, overdue, lenders, reasons = await asyncio.gather(
        operations.funnel_report(svc, period, dealers),
        operations.time_in_stage_report(svc, period, dealers),
        operations.overdue_report(svc, dealers),
        operations.lender_report(svc, period, dealers),
        operations.close_reason_report(svc, period, dealers),
    )
    return ReportSet(funnel, times, overdue, lenders, reasons)


def charts(found: ReportSet) -> dict[str, Chart]:
    """The charts of the page, each drawn from the figures its table shows.
    Called by the template while it renders, so the words are in the page's language."""
    stages = found.funnel.stages
    timed = [row for row in found.times.stages if row.stays]
    lenders = found.lenders.lenders
    return {
        "funnel": bar_chart(
            "chart-funnel",
            [_(row.stage.value) for row in stages],
            [
                (_("entered"), [row.entered for row in stages]),
                (_("left"), [row.left for row in stages]),
            ],
        ),
        "times": bar_chart(
            "chart-times",
            [_(row.stage.value) for row in timed],
            [
                (_("median"), [row.median_seconds for row in timed]),
                (_("90th percentile"), [row.p90_seconds for row in timed]),
            ],
            text=duration,
        ),
        "overdue": bar_chart(
            "chart-overdue",
            [f"{_(row.stage.value)} · {_(row.role)}" for row in found.overdue.rows],
            [(_("overdue"), [row.overdue for row in found.overdue.rows])],
        ),
        "approvals": bar_chart(
            "chart-approvals",
            [row.lender_id for row in lenders],
            [
                (
                    _("approval rate"),
                    [
                        None if row.approval_rate is None else row.approval_rate * 100
                        for row in lenders
                    ],
                )
            ],
            text=lambda value: f"{value:.1f}%",
        ),
        "turnaround": bar_chart(
            "chart-turnaround",
            [row.lender_id for row in lenders],
            [
                (_("median"), [row.median_turnaround_seconds for row in lenders]),
                (_("90th percentile"), [row.p90_turnaround_seconds for row in lenders]),
            ],
            text=duration,
        ),
        "reasons": bar_chart(
            "chart-reasons",
            [f"{_(row.outcome.value)}: {row.reason}" for row in found.reasons.reasons],
            [(_("deals"), [row.deals for row in found.reasons.reasons])],
        ),
    }


@router.get("/desk/reports", include_in_schema=False)
async def reports_page(
    request: Request,
    user: SignedIn,
    start: Annotated[str, Query(alias="from", max_length=40)] = "",
    end: Annotated[str, Query(alias="to", max_length=40)] = "",
) -> HTMLResponse:
    if not user.may(rules.REPORT_ROLES):
        allowed = sorted(role.value for role in rules.REPORT_ROLES)
        return render_page(
            request,
            "desk/reports.html",
            user,
            status_code=403,
            section="reports",
            allowed_roles=allowed,
            may_read=False,
        )
    errors: dict[str, str] = {}
    first, last = _day(start.strip(), "from", errors), _day(end.strip(), "to", errors)
    period = None
    if not errors:
        try:
            period = operations.report_period(first, last)
        except Problem as problem:
            errors["period"] = problem.detail
    found = await _gather(request, period, user.dealers) if period is not None else None
    return render_page(
        request,
        "desk/reports.html",
        user,
        status_code=422 if errors else 200,
        section="reports",
        may_read=True,
        typed={"from": start, "to": end},
        errors=errors,
        period=period,
        found=found,
        draw=charts,
        duration=duration,
        max_days=reports.MAX_PERIOD_DAYS,
    )
