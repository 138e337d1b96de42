"""The reports' facts: each deal's stage changes, lender applications and
closure, written with the deal's projection and read back for a period.

Written in the transaction that writes the deal's row, and only when that row
was written (the projection was newer than the stored one), so a retried or
late projection changes nothing. Each fact is keyed by the deal id and its
sequence (the stage change's place, the submission number): a stage change
never changes once made, so it is inserted once; an application's answer and
a closure can change, so they are rewritten only by a newer projection (the
same version guard as the deal's row).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, and_, select, true
from sqlalchemy.engine import Connection

from dealflow.models import Decision, PendingAction, ProjectionInput, Stage
from dealflow.reports import Application, Closure, Move
from dealflow.storage.db.engine import dialect_insert_for
from dealflow.storage.db.tables import (
    DEAL_CLOSURES,
    DEAL_TRANSITIONS,
    DEALS,
    LENDER_DECISIONS,
)


def write_report_facts(conn: Connection, projection: ProjectionInput) -> None:
    """The projection's facts, in the caller's transaction (see the module's docstring)."""
    dialect = conn.dialect.name
    deal_id, version = projection.deal_id, projection.version
    if projection.transitions:
        conn.execute(
            _insert_once(dialect, DEAL_TRANSITIONS),
            [
                {
                    "deal_id": deal_id,
                    "seq": change.seq,
                    "version": version,
                    "at": change.at,
                    "from_stage": change.from_stage.value if change.from_stage else None,
                    "to_stage": change.to_stage.value,
                }
                for change in projection.transitions
            ],
        )
    if projection.lender_decisions:
        conn.execute(
            _upsert_if_newer(dialect, LENDER_DECISIONS),
            [
                {
                    "deal_id": deal_id,
                    "submission_no": fact.submission_no,
                    "version": version,
                    "lender_id": fact.lender_id,
                    "submitted_at": fact.submitted_at,
                    "first_decided_at": fact.first_decided_at,
                    "decision": fact.decision.value if fact.decision else None,
                    "decided_at": fact.decided_at,
                    "reason_codes": ",".join(fact.reason_codes),
                }
                for fact in projection.lender_decisions
            ],
        )
    closed = projection.closed
    if closed is not None:
        conn.execute(
            _upsert_if_newer(dialect, DEAL_CLOSURES),
            {
                "deal_id": deal_id,
                "version": version,
                "stage": closed.stage.value,
                "closed_at": closed.at,
                "reason": closed.reason,
                "reason_codes": ",".join(closed.reason_codes),
            },
        )


@functools.cache
def _insert_once(dialect: str, table: Table) -> Any:
    pk = [c.name for c in table.primary_key.columns]
    return dialect_insert_for(dialect, table).on_conflict_do_nothing(index_elements=pk)


@functools.cache
def _upsert_if_newer(dialect: str, table: Table) -> Any:
    stmt = dialect_insert_for(dialect, table)
    pk = [c.name for c in table.primary_key.columns]
    return stmt.on_conflict_do_update(
        index_elements=pk,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in pk},
        where=table.c.version < stmt.excluded.version,
    )


# --------------------------------------------------------------------------- reading
#
# Each reader takes `dealer_ids`, the reader's dealer scope (None: every
# dealer): a fact counts only when its deal's row names one of them.


def _of_dealers(deal_id: Any, dealer_ids: Collection[str] | None) -> Any:
    if dealer_ids is None:
        return true()
    of_scope = select(DEALS.c.deal_id).where(DEALS.c.dealer_id.in_(sorted(dealer_ids)))
    return deal_id.in_(of_scope)


def moves_between(
    engine: Engine, since: datetime, until: datetime, dealer_ids: Collection[str] | None = None
) -> list[Move]:
    """Every stage change in [since, until), with when the stage it left was entered."""
    moved = DEAL_TRANSITIONS.alias("moved")
    before = DEAL_TRANSITIONS.alias("before")
    query = (
        select(moved.c.at, moved.c.from_stage, moved.c.to_stage, before.c.at)
        .select_from(
            moved.outerjoin(
                before,
                and_(before.c.deal_id == moved.c.deal_id, before.c.seq == moved.c.seq - 1),
            )
        )
        .where(moved.c.at >= since, moved.c.at < until)
        .where(_of_dealers(moved.c.deal_id, dealer_ids))
    )
    with engine.connect() as conn:
        return [
            Move(
                at=at,
                from_stage=Stage(from_stage) if from_stage else None,
                to_stage=Stage(to_stage),
                entered_at=entered_at,
            )
            for at, from_stage, to_stage, entered_at in conn.execute(query)
        ]


def applications_between(
    engine: Engine, since: datetime, until: datetime, dealer_ids: Collection[str] | None = None
) -> list[Application]:
    """Applications acknowledged or first answered in [since, until)."""
    table = LENDER_DECISIONS
    query = (
        select(table.c.lender_id, table.c.submitted_at, table.c.first_decided_at, table.c.decision)
        .where(
            (table.c.submitted_at >= since) & (table.c.submitted_at < until)
            | (table.c.first_decided_at >= since) & (table.c.first_decided_at < until)
        )
        .where(_of_dealers(table.c.deal_id, dealer_ids))
    )
    with engine.connect() as conn:
        return [
            Application(
                lender_id=lender_id,
                submitted_at=submitted_at,
                first_decided_at=first_decided_at,
                decision=Decision(decision) if decision else None,
            )
            for lender_id, submitted_at, first_decided_at, decision in conn.execute(query)
        ]


def closures_between(
    engine: Engine, since: datetime, until: datetime, dealer_ids: Collection[str] | None = None
) -> list[Closure]:
    table = DEAL_CLOSURES
    query = (
        select(table.c.stage, table.c.closed_at, table.c.reason, table.c.reason_codes)
        .where(table.c.closed_at >= since, table.c.closed_at < until)
        .where(_of_dealers(table.c.deal_id, dealer_ids))
    )
    with engine.connect() as conn:
        return [
            Closure(
                stage=Stage(stage),
                closed_at=closed_at,
                reason=reason,
                reason_codes=tuple(code for code in codes.split(",") if code),
            )
            for stage, closed_at, reason, codes in conn.execute(query)
        ]


def pending_by_stage(
    engine: Engine, dealer_ids: Collection[str] | None = None
) -> list[tuple[Stage, PendingAction]]:
    """Every pending action of every deal that waits on someone, with the deal's stage."""
    query = (
        select(DEALS.c.stage, DEALS.c.pending_actions)
        .where(DEALS.c.pending_roles != "")
        .where(_of_dealers(DEALS.c.deal_id, dealer_ids))
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        (Stage(stage), PendingAction.model_validate(item))
        for stage, actions in rows
        for item in json.loads(actions)
    ]
