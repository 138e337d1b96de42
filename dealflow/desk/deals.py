"""The deals table: the read model with filters, search and paging by cursor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dealflow import i18n, rules
from dealflow.api import operations
from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.desk.pages import render_page
from dealflow.desk.session import SignedIn
from dealflow.i18n import N_
from dealflow.models import STAGE_ORDER, DealPage, Stage

router = APIRouter()

PAGE_SIZE = 50
SORT_LABELS = {
    "updated": N_("latest change first"),
    "created": N_("newest deal first"),
    "due": N_("soonest deadline first"),
    "stage_entered": N_("longest in its stage first"),
}


@dataclass(frozen=True)
class DealLine:
    """One row of the deals table, in the page's language."""

    deal_id: str
    customer: str
    stage: str
    lender: str
    dealer: str
    financed: str
    next_due: str
    overdue: bool
    waiting_on: str


def table_lines(page: DealPage, names: dict[str, str]) -> list[DealLine]:
    """The table's rows as text. Called by the template while it renders, so
    the words are in the page's language; formatting here rather than through
    filters in every cell of every row takes a third off the page's time (make
    bench, 7)."""
    return [
        DealLine(
            deal_id=deal.deal_id,
            customer=names.get(deal.deal_id, ""),
            stage=i18n.gettext(deal.stage.value),
            lender=deal.lender_id or "",
            dealer=deal.dealer_id,
            financed=i18n.format_money(deal.amount_financed),
            next_due=i18n.format_when(deal.next_due_at),
            overdue=deal.overdue,
            waiting_on=", ".join(i18n.gettext(role) for role in deal.pending_roles),
        )
        for deal in page.deals
    ]


@router.get("/desk/deals", include_in_schema=False)
async def deals_table(
    request: Request,
    user: SignedIn,
    stage: Annotated[str, Query(max_length=32)] = "",
    lender: Annotated[str, Query(max_length=64)] = "",
    dealer: Annotated[str, Query(max_length=64)] = "",
    q: Annotated[str, Query(max_length=100)] = "",
    overdue: bool = False,
    sort: Annotated[str, Query(max_length=32)] = "updated",
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
        "sort": sort if sort in SORT_LABELS else "updated",
    }
    show_names = user.may(rules.NAME_ROLES)
    page: DealPage | None = None
    names: dict[str, str] = {}
    try:
        page, names = await operations.list_deals_named(svc, user.dealers, **filters)
    except Problem as problem:
        error = problem.detail
    query = {
        "stage": stage,
        "lender": lender,
        "dealer": dealer,
        "q": q,
        "overdue": overdue,
        "sort": filters["sort"],
    }
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
        names=names if show_names else {},
        lines=table_lines,
        show_names=show_names,
        next_href=next_href,
        error=error,
        stages=[s.value for s in STAGE_ORDER],
        lenders=sorted(svc.lenders),
        query=query,
        sorts=SORT_LABELS,
    )
