"""The deal read model: projections written by the workflow's activities, and
the deal list the API and the CLI page through."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, literal, or_, true
from sqlmodel import Session, col, select

from dealflow.models import DealSummary, PendingAction, ProjectionInput, Stage
from dealflow.storage.db.engine import dialect_insert_for, writing, wrote_with
from dealflow.storage.db.reports import write_report_facts
from dealflow.storage.db.tables import DEALS, DealRow


def upsert_deal(engine: Engine, projection: ProjectionInput) -> bool:
    """Write the projection unless the stored one is as new or newer.

    Projections are retried and may arrive out of order; the version guard in
    the ON CONFLICT clause makes the check and the write one atomic statement,
    so concurrent writers end at the highest version. The reports' facts are
    written in the same transaction, when the row was. Returns whether it wrote.
    """
    values: dict[str, Any] = {
        "deal_id": projection.deal_id,
        "workflow_id": projection.workflow_id,
        "version": projection.version,
        "dealer_id": projection.dealer_id,
        "stage": projection.stage.value,
        "stage_entered_at": projection.stage_entered_at,
        "lender_id": projection.lender_id,
        "vehicle_price": projection.vehicle_price,
        "amount_financed": projection.amount_financed,
        "approved_amount": projection.approved_amount,
        "created_at": projection.created_at,
        "updated_at": projection.updated_at,
        "next_due_at": projection.next_due_at,
        "pending_roles": ",".join(str(role) for role in projection.pending_roles),
        "pending_actions": json.dumps(
            [action.model_dump(mode="json") for action in projection.pending_actions]
        ),
        "customer_name": projection.customer_name,
        "lender_ids": ",".join(projection.lender_ids),
    }
    with writing(engine) as conn:
        wrote = wrote_with(conn, _upsert_deal_statement(conn.dialect.name), values)
        if wrote:
            write_report_facts(conn, projection)
        return wrote


@functools.cache
def _upsert_deal_statement(dialect: str) -> Any:
    # Built once per dialect, values bound at execution: the read model is
    # written after nearly every step of every deal, and building and
    # compiling this statement each time was most of the write's CPU.
    stmt = dialect_insert_for(dialect, DEALS)
    columns = [c.name for c in DEALS.columns if c.name != "deal_id"]
    return stmt.on_conflict_do_update(
        index_elements=["deal_id"],
        set_={k: stmt.excluded[k] for k in columns},
        where=DEALS.c.version < stmt.excluded.version,
    ).returning(DEALS.c.deal_id)


def deal_summary(row: DealRow, now: datetime) -> DealSummary:
    """A read-model row as the API and the CLI show it."""
    return DealSummary(
        deal_id=row.deal_id,
        workflow_id=row.workflow_id,
        dealer_id=row.dealer_id,
        stage=Stage(row.stage),
        stage_entered_at=row.stage_entered_at,
        lender_id=row.lender_id,
        vehicle_price=row.vehicle_price,
        amount_financed=row.amount_financed,
        approved_amount=row.approved_amount,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_due_at=row.next_due_at,
        overdue=row.next_due_at is not None and row.next_due_at < now,
        pending_roles=row.pending_role_list,
    )


def get_deal(engine: Engine, deal_id: str) -> DealRow | None:
    with Session(engine) as session:
        return session.get(DealRow, deal_id)


@dataclass(frozen=True)
class DealMark:
    """How far a deal's projection has come: what a wait for its change watches."""

    version: int
    stage: Stage
    dealer_id: str


def deal_marks(engine: Engine, deal_ids: Collection[str]) -> dict[str, DealMark]:
    """The projected version, stage and dealer of each of `deal_ids` that has a row.

    One indexed read of three columns for every deal watched at once: the
    waits of `dealflow.deal_wait` share it, so its cost does not grow with
    how many clients wait."""
    if not deal_ids:
        return {}
    query = select(DEALS.c.deal_id, DEALS.c.version, DEALS.c.stage, DEALS.c.dealer_id).where(
        DEALS.c.deal_id.in_(list(deal_ids))
    )
    with engine.connect() as conn:
        return {
            deal_id: DealMark(version=version, stage=Stage(stage), dealer_id=dealer_id)
            for deal_id, version, stage, dealer_id in conn.execute(query)
        }


# How the deal list may be ordered, each a keyset: the column (deadlines
# without one sort last) and whether the newest/largest comes first; ties
# fall to the deal id in the same direction, so every order is total.
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
SORTS: dict[str, tuple[Any, bool]] = {
    "updated": (col(DealRow.updated_at), True),
    "created": (col(DealRow.created_at), True),
    "due": (func.coalesce(col(DealRow.next_due_at), FAR_FUTURE), False),
    "stage_entered": (col(DealRow.stage_entered_at), False),
}
_SORT_VALUES = {
    "updated": lambda row: row.updated_at,
    "created": lambda row: row.created_at,
    "due": lambda row: row.next_due_at or FAR_FUTURE,
    "stage_entered": lambda row: row.stage_entered_at,
}


def _encode_cursor(row: DealRow, sort: str) -> str:
    value: datetime = _SORT_VALUES[sort](row)
    position = [value.astimezone(UTC).isoformat(), row.deal_id]
    raw = json.dumps(position if sort == "updated" else [*position, sort])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[datetime, str]:
    problem = f"invalid cursor {cursor[:80]!r}: pass back a cursor returned by the deal list"
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        # A cursor of the default order has two parts (as before sorting existed).
        at_text, deal_id, *sorted_by = json.loads(raw)
        if not isinstance(at_text, str) or not isinstance(deal_id, str):
            raise ValueError(problem)
        at = datetime.fromisoformat(at_text)
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError) as e:
        raise ValueError(problem) from e
    if at.tzinfo is None or (sorted_by or ["updated"]) != [sort]:
        raise ValueError(problem)
    return at, deal_id


def _after(cursor: str, sort: str) -> Any:
    """The rows that come after the cursor's row in `sort` order."""
    column, newest_first = SORTS[sort]
    at, deal_id = _decode_cursor(cursor, sort)
    if newest_first:
        return or_(column < at, and_(column == at, col(DealRow.deal_id) < deal_id))
    return or_(column > at, and_(column == at, col(DealRow.deal_id) > deal_id))


def list_deals(
    engine: Engine,
    *,
    stage: str | None = None,
    lender_id: str | None = None,
    dealer_id: str | None = None,
    overdue_at: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
    search: str | None = None,
    search_names: bool = False,
    sort: str = "updated",
    dealer_ids: Collection[str] | None = None,
) -> tuple[list[DealRow], str | None]:
    """One page of deals in `sort` order (SORTS; by default newest change
    first), and the cursor of the next page.

    Keyset pagination on (sort value, deal_id): pages stay stable while deals
    are updated, and no page costs an OFFSET scan. `overdue_at` keeps deals
    whose next deadline is before it. `dealer_ids` (None: every dealer) is the
    reader's dealer scope. `search` matches the start of a deal id
    and, with `search_names`, any part of the customer's name. The cursor is
    None on the last page.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort[:40]!r}; one of {', '.join(SORTS)}")
    if overdue_at is not None and overdue_at.utcoffset() is None:
        raise ValueError(f"overdue_at {overdue_at.isoformat()} is naive; use an aware UTC datetime")
    query = select(DealRow)
    if stage is not None:
        query = query.where(col(DealRow.stage) == str(stage))
    if lender_id is not None:
        query = query.where(col(DealRow.lender_id) == lender_id)
    if dealer_id is not None:
        query = query.where(col(DealRow.dealer_id) == dealer_id)
    if dealer_ids is not None:
        query = query.where(of_dealers(dealer_ids))
    if overdue_at is not None:
        query = query.where(col(DealRow.next_due_at) < overdue_at)
    if search:
        query = query.where(_matches(search, search_names))
    if cursor is not None:
        query = query.where(_after(cursor, sort))
    column, newest_first = SORTS[sort]
    if newest_first:
        query = query.order_by(column.desc(), col(DealRow.deal_id).desc())
    else:
        query = query.order_by(column.asc(), col(DealRow.deal_id).asc())
    with Session(engine) as session:
        rows = list(session.exec(query.limit(limit + 1)).all())
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, _encode_cursor(rows[-1], sort)
    return rows, None


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matches(search: str, search_names: bool) -> Any:
    pattern = _like_escaped(search.strip())
    by_id = col(DealRow.deal_id).like(f"{pattern}%", escape="\\")
    if not search_names:
        return by_id
    return or_(
        by_id, func.lower(col(DealRow.customer_name)).like(f"%{pattern.lower()}%", escape="\\")
    )


def of_dealers(dealer_ids: Collection[str]) -> Any:
    """Deals of these dealers (none, for an empty collection)."""
    return col(DealRow.dealer_id).in_(sorted(dealer_ids))


def _of_dealers_or_all(dealer_ids: Collection[str] | None) -> Any:
    return true() if dealer_ids is None else of_dealers(dealer_ids)


def _waiting_on(roles: list[str] | None) -> Any:
    """Deals that wait on one of `roles` (on anyone, for None)."""
    if roles is None:
        return col(DealRow.pending_roles) != ""
    padded = literal(",") + col(DealRow.pending_roles) + literal(",")
    return or_(*(padded.like(f"%,{role},%") for role in roles))


def pending_work(
    engine: Engine,
    roles: list[str] | None,
    limit: int = 200,
    dealer_ids: Collection[str] | None = None,
) -> list[DealRow]:
    """The deals (of `dealer_ids`, None: all) waiting on `roles` (None: on
    anyone), soonest deadline first."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = (
        select(DealRow)
        .where(_waiting_on(roles))
        .where(_of_dealers_or_all(dealer_ids))
        .order_by(
            col(DealRow.next_due_at).is_(None),
            col(DealRow.next_due_at),
            col(DealRow.deal_id),
        )
        .limit(limit)
    )
    with Session(engine) as session:
        return list(session.exec(query).all())


def waiting_by_stage(
    engine: Engine, roles: list[str] | None, dealer_ids: Collection[str] | None = None
) -> dict[str, int]:
    """How many deals (of `dealer_ids`, None: all) wait on `roles` in each stage."""
    query = (
        select(col(DealRow.stage), func.count())
        .where(_waiting_on(roles))
        .where(_of_dealers_or_all(dealer_ids))
        .group_by(col(DealRow.stage))
    )
    with Session(engine) as session:
        return {stage: count for stage, count in session.exec(query).all()}


def pending_actions_of(row: DealRow) -> list[PendingAction]:
    return [PendingAction.model_validate(item) for item in json.loads(row.pending_actions)]


def customer_names(engine: Engine, deal_ids: list[str]) -> dict[str, str]:
    """deal id → customer name, for the deals that have one recorded."""
    if not deal_ids:
        return {}
    query = select(col(DealRow.deal_id), col(DealRow.customer_name)).where(
        col(DealRow.deal_id).in_(deal_ids)
    )
    with Session(engine) as session:
        return {deal_id: name for deal_id, name in session.exec(query).all() if name}


def open_by_stage(engine: Engine) -> dict[str, int]:
    """How many deals are open (in a stage that is not terminal), per stage."""
    query = select(col(DealRow.stage), func.count()).where(_open()).group_by(col(DealRow.stage))
    with Session(engine) as session:
        return {stage: count for stage, count in session.exec(query).all()}


def overdue_by_stage(engine: Engine, now: datetime) -> dict[str, int]:
    """How many open deals are past their next deadline, per stage."""
    query = (
        select(col(DealRow.stage), func.count())
        .where(col(DealRow.next_due_at) < now)
        .where(_open())
        .group_by(col(DealRow.stage))
    )
    with Session(engine) as session:
        return {stage: count for stage, count in session.exec(query).all()}


def _open() -> Any:
    return col(DealRow.stage).not_in([stage.value for stage in Stage if stage.terminal])
