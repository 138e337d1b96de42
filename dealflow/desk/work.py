"""My work: what the signed-in role is to do, across all deals.

Read from the read model, which every deal keeps current with its pending
actions; overdue first, then by deadline. Admin sees everyone's work; a
session scoped to dealers, those dealers' deals only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dealflow.api.deps import services
from dealflow.desk.pages import render_page
from dealflow.desk.session import DeskUser, SignedIn
from dealflow.models import STAGE_ORDER, PendingAction, Role
from dealflow.storage import db

router = APIRouter()

MAX_ITEMS = 200


@dataclass(frozen=True)
class WorkItem:
    deal_id: str
    customer_name: str | None
    stage: str
    action: PendingAction
    overdue: bool


def _roles_of(user: DeskUser) -> list[str] | None:
    return None if Role.ADMIN in user.roles else [role.value for role in user.roles]


def work_items(rows: list[db.DealRow], roles: list[str] | None, now: datetime) -> list[WorkItem]:
    """Each pending action of `roles` (all, for None): overdue first, then by due time."""
    items = [
        WorkItem(
            row.deal_id, row.customer_name, row.stage, action, bool(action.due and action.due < now)
        )
        for row in rows
        for action in db.pending_actions_of(row)
        if roles is None or action.role.value in roles
    ]
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(items, key=lambda item: (not item.overdue, item.action.due or far, item.deal_id))


@router.get("/desk/", include_in_schema=False)
async def my_work(request: Request, user: SignedIn) -> HTMLResponse:
    engine = services(request).engine
    roles = _roles_of(user)
    rows = await asyncio.to_thread(db.pending_work, engine, roles, MAX_ITEMS, user.dealers)
    counts = await asyncio.to_thread(db.waiting_by_stage, engine, roles, user.dealers)
    items = work_items(rows, roles, datetime.now(UTC))
    template = "desk/_work_items.html" if request.headers.get("hx-request") else "desk/work.html"
    return render_page(
        request,
        template,
        user,
        section="work",
        items=items,
        counts=[(stage.value, counts.get(stage.value, 0)) for stage in STAGE_ORDER],
        truncated=len(rows) == MAX_ITEMS,
    )
