"""The deals table: the read model with filters, search and paging by cursor."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dealflow import rules
from dealflow.api import operations
from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.desk.pages import render_page
from dealflow.desk.session import SignedIn
from dealflow.models import STAGE_ORDER, Stage

router = APIRouter()

PAGE_SIZE = 50


@router.get("/desk/deals", include_in_schema=False)
async def deals_table(
    request: Request,
    user: SignedIn,
    stage: Annotated[str, Query(max_length=32)] = "",
    lender: Annotated[str, Query(max_length=64)] = "",
    dealer: Annotated[str, Query(max_length=64)] = "",
    q: Annotated[str, Query(max_length=100)] = "",
    overdue: bool = False,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> HTMLResponse:
    svc = services(request)
    error = None
    filters = {
        "stage": stage if stage in {s.value for s in Stage} else None,
        "lender_id": lender or None,
        "dealer_id": dealer or None,
        "search": q.strip() or None,
        "search_names": user.may(rules.NAME_ROLES),
        "overdue": overdue,
        "limit": PAGE_SIZE,
        "cursor": cursor or None,
    }
    try:
        page = await operations.list_deals(svc, **filters)
    except Problem as problem:
        error, page = problem.detail, None
    show_names = user.may(rules.NAME_ROLES)
    names: dict[str, str] = {}
    if page is not None and show_names:
        names = await operations.customer_names(svc, [deal.deal_id for deal in page.deals])
    query = {"stage": stage, "lender": lender, "dealer": dealer, "q": q, "overdue": overdue}
    next_href = ""
    if page is not None and page.next_cursor:
        kept = {key: value for key, value in query.items() if value}
        next_href = "/desk/deals?" + urlencode({**kept, "cursor": page.next_cursor})
    return render_page(
        request,
        "desk/deals.html",
        user,
        section="deals",
        page=page,
        names=names,
        show_names=show_names,
        next_href=next_href,
        error=error,
        stages=[s.value for s in STAGE_ORDER],
        lenders=sorted(svc.lenders),
        query=query,
    )
