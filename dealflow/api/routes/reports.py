"""The reports as JSON (`/api/reports/...`), the same figures the desk's
reports page shows: both call `operations`' report functions, which read the
read model's facts and compute with `dealflow.reports`.

Who may read them: `rules.REPORT_ROLES` (sales, credit, finance, auditor and
admin); a reader scoped to dealers counts only those dealers' deals. A
period is whole UTC days, `from` and `to` both included, at most 366 days;
without them, the last 30 days up to today.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BeforeValidator

from dealflow import rules
from dealflow.api import operations
from dealflow.api.boundary import iso_date
from dealflow.api.deps import services
from dealflow.api.problems import responses
from dealflow.api.security import bearer_scheme, dealer_scope, require_roles
from dealflow.models import Actor
from dealflow.reports import (
    MAX_PERIOD_DAYS,
    FunnelReport,
    LenderReport,
    OverdueReport,
    ReasonReport,
    TimeInStageReport,
)

router = APIRouter(dependencies=[Depends(bearer_scheme)])

ReportReader = Annotated[Actor, Depends(require_roles(rules.REPORT_ROLES, "read reports"))]
# A reader scoped to dealers (DEALFLOW_DEALERS_CLAIM) counts their deals only.
Dealers = Annotated[rules.DealerScope, Depends(dealer_scope)]
From = Annotated[
    date | None,
    BeforeValidator(iso_date),
    Query(alias="from", description="first day of the period (UTC), e.g. 2026-11-01"),
]
To = Annotated[
    date | None,
    BeforeValidator(iso_date),
    Query(alias="to", description="last day of the period (UTC), included; default: today"),
]

ROLES_TEXT = ", ".join(sorted(role.value for role in rules.REPORT_ROLES))
ERRORS = responses(
    401,
    403,
    422,
    d403=f"reports are for {ROLES_TEXT}",
    d422=f"a date that is not YYYY-MM-DD, `from` after `to`, or more than {MAX_PERIOD_DAYS} days",
)


@router.get(
    "/api/reports/funnel",
    response_model=FunnelReport,
    tags=["reports"],
    summary=f"Deals entering and leaving each stage in a period (roles: {ROLES_TEXT})",
    responses=ERRORS,
)
async def funnel(
    request: Request, actor: ReportReader, dealers: Dealers, start: From = None, end: To = None
) -> FunnelReport:
    period = operations.report_period(start, end)
    return await operations.funnel_report(services(request), period, dealers)


@router.get(
    "/api/reports/time-in-stage",
    response_model=TimeInStageReport,
    tags=["reports"],
    summary=f"Median and 90th percentile of time in each stage (roles: {ROLES_TEXT})",
    description="Stays that ended in the period; stays still going are not counted.",
    responses=ERRORS,
)
async def time_in_stage(
    request: Request, actor: ReportReader, dealers: Dealers, start: From = None, end: To = None
) -> TimeInStageReport:
    period = operations.report_period(start, end)
    return await operations.time_in_stage_report(services(request), period, dealers)


@router.get(
    "/api/reports/overdue",
    response_model=OverdueReport,
    tags=["reports"],
    summary=f"Pending actions past due now, by stage and role (roles: {ROLES_TEXT})",
    responses=responses(401, 403, d403=f"reports are for {ROLES_TEXT}"),
)
async def overdue(request: Request, actor: ReportReader, dealers: Dealers) -> OverdueReport:
    return await operations.overdue_report(services(request), dealers)


@router.get(
    "/api/reports/lenders",
    response_model=LenderReport,
    tags=["reports"],
    summary=f"Approval rate and decision turnaround per lender (roles: {ROLES_TEXT})",
    description="Counts the lenders' first answers given in the period, by the decision "
    "in force; the turnaround runs from the lender's acknowledgement to its first answer.",
    responses=ERRORS,
)
async def lenders(
    request: Request, actor: ReportReader, dealers: Dealers, start: From = None, end: To = None
) -> LenderReport:
    period = operations.report_period(start, end)
    return await operations.lender_report(services(request), period, dealers)


@router.get(
    "/api/reports/close-reasons",
    response_model=ReasonReport,
    tags=["reports"],
    summary=f"Why deals were cancelled, declined or expired (roles: {ROLES_TEXT})",
    responses=ERRORS,
)
async def close_reasons(
    request: Request, actor: ReportReader, dealers: Dealers, start: From = None, end: To = None
) -> ReasonReport:
    period = operations.report_period(start, end)
    return await operations.close_reason_report(services(request), period, dealers)
