"""The reports: the pure computations against hand-checked numbers, then the
JSON routes and the desk page against what the read model holds, over HTTP
with real deals (approved, declined by every lender, cancelled)."""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dealflow import reports
from dealflow.config import DEV_JWT_SECRET
from dealflow.desk.charts import bar_chart, duration
from dealflow.models import Decision, PendingAction, Role, Stage
from dealflow.reports import Application, Closure, Move
from dealflow.storage import db
from tests.support.api_stack import ApiStack, HttpDesk, api_stack
from tests.support.desk_browser import signed_in

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NOVEMBER = reports.Period(start=date(2026, 11, 1), end=date(2026, 11, 30))


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# --------------------------------------------------------------------------- pure


def test_percentiles_interpolate_between_closest_ranks() -> None:
    # Ranks (n-1)p/100: median of 4 values at 1.5 -> 2.5; p90 at 2.7 -> 3 + .7 * 1.
    assert reports.percentile([4, 1, 3, 2], 50) == 2.5
    assert reports.percentile([4, 1, 3, 2], 90) == pytest.approx(3.7)
    # Five values: median is the middle one; p90 at rank 3.6 -> 40 + .6 * 10.
    assert reports.percentile([15, 20, 35, 40, 50], 50) == 35
    assert reports.percentile([15, 20, 35, 40, 50], 90) == pytest.approx(46)
    assert reports.percentile([7], 90) == 7
    assert reports.percentile([1, 2], 0) == 1 and reports.percentile([1, 2], 100) == 2
    with pytest.raises(ValueError, match="no values"):
        reports.percentile([], 50)
    with pytest.raises(ValueError, match="not between 0 and 100"):
        reports.percentile([1], 101)


def test_the_same_method_as_the_standard_librarys_inclusive_quantiles() -> None:
    values = [3.0, 9.5, 1.25, 40.0, 7.0, 7.0, 12.0, 0.5, 21.0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    assert reports.percentile(values, 90) == pytest.approx(deciles[8])
    assert reports.percentile(values, 50) == pytest.approx(statistics.median(values))


def _deal_moves(start: datetime, path: list[tuple[Stage, float]]) -> list[Move]:
    """A deal's moves: it starts in CONTRACT at `start`, then enters each stage
    of `path` the given hours after its start."""
    moves = [Move(at=start, from_stage=None, to_stage=Stage.CONTRACT)]
    for stage, after in path:
        previous = moves[-1]
        moves.append(
            Move(
                at=start + hours(after),
                from_stage=previous.to_stage,
                to_stage=stage,
                entered_at=previous.at,
            )
        )
    return moves


def test_funnel_counts_the_moves_in_the_period() -> None:
    moves = [
        *_deal_moves(T0, [(Stage.DOCUMENTS, 1), (Stage.APPLICATION, 3)]),
        *_deal_moves(T0, [(Stage.DOCUMENTS, 2), (Stage.CANCELLED, 5)]),
        *_deal_moves(T0, [(Stage.CANCELLED, 4)]),
        # Started before the period (not counted), left CONTRACT in it (counted).
        *_deal_moves(datetime(2026, 10, 31, 22, tzinfo=UTC), [(Stage.DOCUMENTS, 3)]),
    ]
    report = reports.funnel(moves, NOVEMBER)
    counts = {row.stage: (row.entered, row.left) for row in report.stages}
    assert counts[Stage.CONTRACT] == (3, 4)
    assert counts[Stage.DOCUMENTS] == (3, 2)
    assert counts[Stage.APPLICATION] == (1, 0)
    assert counts[Stage.CANCELLED] == (2, 0)
    assert counts[Stage.UNDERWRITING] == (0, 0)
    assert [row.stage for row in report.stages] == list(Stage)


def test_time_in_stage_takes_the_stays_that_ended_in_the_period() -> None:
    moves = [
        *_deal_moves(T0, [(Stage.DOCUMENTS, 1), (Stage.APPLICATION, 3)]),
        *_deal_moves(T0, [(Stage.DOCUMENTS, 2), (Stage.APPLICATION, 8)]),
        *_deal_moves(T0, [(Stage.DOCUMENTS, 4), (Stage.APPLICATION, 14)]),
        *_deal_moves(T0, [(Stage.DOCUMENTS, 6)]),
        # Left CONTRACT after the period ended: not counted.
        *_deal_moves(datetime(2026, 11, 30, 23, tzinfo=UTC), [(Stage.DOCUMENTS, 2)]),
    ]
    report = reports.time_in_stage(moves, NOVEMBER)
    rows = {row.stage: row for row in report.stages}
    # CONTRACT stays: 1, 2, 4, 6 h -> median 3 h; p90 at rank 2.7: 4 + .7 * 2 = 5.4 h.
    assert rows[Stage.CONTRACT].stays == 4
    assert rows[Stage.CONTRACT].median_seconds == 3 * 3600
    assert rows[Stage.CONTRACT].p90_seconds == pytest.approx(5.4 * 3600)
    # DOCUMENTS stays: 2, 6, 10 h -> median 6 h; p90 at rank 1.8: 6 + .8 * 4 = 9.2 h.
    assert rows[Stage.DOCUMENTS].stays == 3
    assert rows[Stage.DOCUMENTS].median_seconds == 6 * 3600
    assert rows[Stage.DOCUMENTS].p90_seconds == pytest.approx(9.2 * 3600)
    assert rows[Stage.APPLICATION].stays == 0 and rows[Stage.APPLICATION].median_seconds is None
    assert Stage.COMPLETED not in rows, "nobody stays in a terminal stage"


def test_lenders_approval_rate_and_turnaround() -> None:
    def app(lender: str, waited: float | None, decision: Decision | None) -> Application:
        decided = None if waited is None else T0 + hours(waited)
        return Application(lender, T0, decided, decision)

    applications = [
        app("acme", 2, Decision.APPROVED),
        app("acme", 4, Decision.CONDITIONAL),
        app("acme", 10, Decision.DECLINED),
        app("acme", None, None),  # still waiting
        app("beta", 1, Decision.COUNTER_OFFER),
        # Answered after the period: submitted in it, not decided in it.
        Application("beta", T0, datetime(2026, 12, 1, 1, tzinfo=UTC), Decision.APPROVED),
    ]
    report = reports.lender_figures(applications, NOVEMBER)
    acme, beta = report.lenders
    assert (acme.lender_id, acme.submitted, acme.decided) == ("acme", 4, 3)
    assert (acme.approved, acme.conditional, acme.declined) == (1, 1, 1)
    assert acme.approval_rate == 0.6667
    # Waits 2, 4, 10 h -> median 4 h; p90 at rank 1.8: 4 + .8 * 6 = 8.8 h.
    assert acme.median_turnaround_seconds == 4 * 3600
    assert acme.p90_turnaround_seconds == pytest.approx(8.8 * 3600)
    assert (beta.submitted, beta.decided, beta.counter_offer, beta.approval_rate) == (2, 1, 1, 0.0)


def test_close_reasons_count_declines_per_code_and_others_per_reason() -> None:
    closures = [
        Closure(Stage.CANCELLED, T0, "customer withdrew"),
        Closure(Stage.CANCELLED, T0, "  customer   withdrew "),
        Closure(Stage.CANCELLED, T0, "down payment not received within 14 days"),
        Closure(Stage.DECLINED, T0, "every lender declined", ("DTI_HIGH", "SCORE_LOW")),
        Closure(Stage.DECLINED, T0, "every lender declined", ("DTI_HIGH", "DTI_HIGH")),
        Closure(Stage.EXPIRED, T0, "no progress in DOCUMENTS within 30 days"),
        Closure(Stage.COMPLETED, T0, "follow-up calls done"),
        Closure(Stage.CANCELLED, datetime(2026, 12, 1, tzinfo=UTC), "after the period"),
    ]
    report = reports.close_reasons(closures, NOVEMBER)
    assert report.closed == {"CANCELLED": 3, "DECLINED": 2, "EXPIRED": 1}
    assert [(r.outcome, r.reason, r.deals) for r in report.reasons] == [
        (Stage.CANCELLED, "customer withdrew", 2),
        (Stage.CANCELLED, "down payment not received within 14 days", 1),
        (Stage.DECLINED, "DTI_HIGH", 2),
        (Stage.DECLINED, "SCORE_LOW", 1),
        (Stage.EXPIRED, "no progress in DOCUMENTS within 30 days", 1),
    ]


def test_overdue_counts_actions_past_due_by_stage_and_role() -> None:
    def action(role: Role, due: datetime | None) -> PendingAction:
        return PendingAction(action="x", role=role, what="do it", due=due)

    now = T0 + hours(10)
    pending = [
        (Stage.DOCUMENTS, action(Role.SALES, T0)),
        (Stage.DOCUMENTS, action(Role.SALES, T0 + hours(1))),
        (Stage.DOCUMENTS, action(Role.CREDIT, T0 + hours(11))),  # not yet due
        (Stage.CONTRACT, action(Role.SALES, T0)),
        (Stage.DELIVERY, action(Role.FINANCE, None)),  # no deadline
    ]
    report = reports.overdue(pending, now)
    assert report.total == 3
    assert [(r.stage, r.role, r.overdue) for r in report.rows] == [
        (Stage.CONTRACT, "sales", 1),
        (Stage.DOCUMENTS, "sales", 2),
    ]


def test_periods_are_checked_and_bounded() -> None:
    today = date(2026, 11, 30)
    default = reports.period_of(None, None, today)
    assert (default.start, default.end) == (date(2026, 11, 1), today)
    assert default.since == datetime(2026, 11, 1, tzinfo=UTC)
    assert default.until == datetime(2026, 12, 1, tzinfo=UTC)
    from_only = reports.period_of(date(2026, 1, 1), None, today)
    assert from_only.end == date(2026, 1, 30)
    year = reports.period_of(date(2024, 1, 1), date(2024, 12, 31), today)  # 366 days
    assert year.model_dump(mode="json", by_alias=True) == {"from": "2024-01-01", "to": "2024-12-31"}
    with pytest.raises(reports.PeriodError, match="is after to"):
        reports.period_of(date(2026, 2, 1), date(2026, 1, 1), today)
    with pytest.raises(reports.PeriodError, match="367 days; at most 366"):
        reports.period_of(date(2025, 1, 1), date(2026, 1, 2), today)


def test_charts_scale_to_the_largest_value_and_read_durations() -> None:
    chart = bar_chart("c", ["a", "b"], [("n", [10, 5]), ("m", [None, 0])])
    (a_n, a_m), (b_n, b_m) = (row.bars for row in chart.rows)
    assert a_n.width == 2 * b_n.width > 0 and b_m.width == a_m.width == 0
    assert (a_n.text, a_m.text, b_m.text) == ("10", "—", "0")
    assert bar_chart("e", [], [("n", [])]).empty
    assert [duration(s) for s in (0.25, 59, 61, 3600, 3720, 90000, 86400)] == [
        "0.2 s",
        "59 s",
        "1 min 1 s",
        "1 h",
        "1 h 2 min",
        "1 d 1 h",
        "1 d",
    ]


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(
        dev_env.client, database_url, tmp_session, secret=DEV_JWT_SECRET
    ) as running:
        yield running


DECLINE_ALL = {
    "lenders": {
        "acme-auto-finance": [
            {"decision": "declined", "reasons": [{"code": "DTI_HIGH", "text": "debts too high"}]}
        ],
        "beta-motor-credit": [
            {"decision": "declined", "reasons": [{"code": "SCORE_LOW", "text": "score too low"}]}
        ],
    }
}
CANCEL_REASON = "customer bought a car elsewhere"


async def drive_deals(stack: ApiStack) -> list[HttpDesk]:
    """One deal approved (waits in DOWN_PAYMENT), one declined by both lenders,
    one cancelled in CONTRACT."""
    approved = HttpDesk(stack)
    await approved.start()
    await approved.to_down_payment()

    declined = HttpDesk(stack)
    await declined.start()
    await declined.ok("sign-sales-contract", Role.SALES)
    await declined.upload_all()
    await stack.script(declined.deal_id, DECLINE_ALL)
    await declined.ok("submit-application", Role.CREDIT)
    await declined.wait_stage("DECLINED")

    cancelled = HttpDesk(stack)
    await cancelled.start()
    await cancelled.ok("cancel", Role.SALES, reason=CANCEL_REASON)
    return [approved, declined, cancelled]


async def assert_every_stage_change_is_held(stack: ApiStack, desks: list[HttpDesk]) -> None:
    """Projections send only the stage changes the read model lacks; together
    they leave each deal's every change in it, in order."""
    for desk in desks:
        changes = [(t["from_stage"], t["to_stage"]) for t in (await desk.status())["transitions"]]
        held = db.DEAL_TRANSITIONS
        with stack.engine.connect() as conn:
            rows = conn.execute(
                select(held.c.seq, held.c.from_stage, held.c.to_stage)
                .where(held.c.deal_id == desk.deal_id)
                .order_by(held.c.seq)
            ).all()
        assert [(seq, (fr, to)) for seq, fr, to in rows] == list(enumerate(changes))


def read_model_figures(stack: ApiStack, period: reports.Period) -> dict[str, Any]:
    """The figures straight from the read model's tables, without dealflow.reports."""
    moved, before = db.DEAL_TRANSITIONS.alias("m"), db.DEAL_TRANSITIONS.alias("b")
    in_period = (moved.c.at >= period.since) & (moved.c.at < period.until)
    with stack.engine.connect() as conn:
        transitions = conn.execute(
            select(moved.c.from_stage, moved.c.to_stage, moved.c.at, before.c.at)
            .select_from(
                moved.outerjoin(
                    before,
                    (before.c.deal_id == moved.c.deal_id) & (before.c.seq == moved.c.seq - 1),
                )
            )
            .where(in_period)
        ).all()
        decided = conn.execute(
            select(db.LENDER_DECISIONS.c.lender_id, db.LENDER_DECISIONS.c.decision).where(
                db.LENDER_DECISIONS.c.first_decided_at >= period.since,
                db.LENDER_DECISIONS.c.first_decided_at < period.until,
            )
        ).all()
        closures = conn.execute(
            select(db.DEAL_CLOSURES.c.stage, db.DEAL_CLOSURES.c.reason_codes).where(
                db.DEAL_CLOSURES.c.closed_at >= period.since,
                db.DEAL_CLOSURES.c.closed_at < period.until,
            )
        ).all()
    stays: dict[str, list[float]] = {}
    for from_stage, _to, at, entered in transitions:
        if from_stage is not None:
            stays.setdefault(from_stage, []).append((at - entered).total_seconds())
    return {
        "entered": Counter(to for _from, to, _at, _entered in transitions),
        "left": Counter(fr for fr, _to, _at, _entered in transitions if fr is not None),
        "stays": stays,
        "decided": Counter(lender for lender, _decision in decided),
        "approved": Counter(
            lender for lender, decision in decided if decision in ("approved", "conditional")
        ),
        "closed": Counter(stage for stage, _codes in closures),
        "codes": Counter(
            code
            for stage, codes in closures
            if stage == "DECLINED"
            for code in codes.split(",")
            if code
        ),
    }


class Tables(HTMLParser):
    """Each table of a page by its data-testid: rows of cells (a <data> cell gives its value)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("data-testid"):
            self._table = self.tables.setdefault(str(found["data-testid"]), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "data" and self._cell is not None:
            self._cell.append(f"={found['value']}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table is not None and self._cell is not None:
            data = [part for part in self._cell if part.startswith("=")]
            self._table[-1].append(data[0][1:] if data else "".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not (self._cell and self._cell[-1].startswith("=")):
            self._cell.append(data)


async def settled_reports(http: httpx.AsyncClient, params: dict[str, str]) -> dict[str, Any]:
    """The JSON reports once the deals' projections have landed (two equal reads in a row)."""
    names = ("funnel", "time-in-stage", "overdue", "lenders", "close-reasons")
    last: dict[str, Any] = {}
    for _ in range(100):
        found = {}
        for name in names:
            response = await http.get(f"/api/reports/{name}", params=params)
            assert response.status_code == 200, response.text
            found[name] = response.json()
        found["overdue"].pop("as_of")
        closed = found["close-reasons"]["closed"]
        if found == last and closed["DECLINED"] >= 1 and closed["CANCELLED"] >= 1:
            return found
        last = found
        await asyncio.sleep(0.2)
    raise AssertionError(f"the reports did not settle: {last}")


@pytest.mark.e2e
async def test_the_reports_show_what_the_read_model_holds(stack: ApiStack) -> None:
    desks = await drive_deals(stack)
    today = datetime.now(UTC).date()
    params = {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}
    period = reports.period_of(today - timedelta(days=1), today, today)
    found = await settled_reports(stack.http(Role.AUDITOR), params)
    held = read_model_figures(stack, period)
    await assert_every_stage_change_is_held(stack, desks)

    funnel = {row["stage"]: (row["entered"], row["left"]) for row in found["funnel"]["stages"]}
    assert funnel == {s.value: (held["entered"][s.value], held["left"][s.value]) for s in Stage}
    assert funnel["DECLINED"][0] >= 1 and funnel["CANCELLED"][0] >= 1
    for row in found["time-in-stage"]["stages"]:
        values = held["stays"].get(row["stage"], [])
        assert row["stays"] == len(values)
        if values:
            assert row["median_seconds"] == pytest.approx(statistics.median(values), abs=1e-3)
    lenders = {row["lender_id"]: row for row in found["lenders"]["lenders"]}
    for lender, decided in held["decided"].items():
        assert lenders[lender]["decided"] == decided
        assert lenders[lender]["approval_rate"] == round(held["approved"][lender] / decided, 4)
    assert lenders["beta-motor-credit"]["declined"] >= 1
    reasons = found["close-reasons"]
    assert reasons["closed"] == {s: held["closed"][s] for s in ("CANCELLED", "DECLINED", "EXPIRED")}
    declined = {r["reason"]: r["deals"] for r in reasons["reasons"] if r["outcome"] == "DECLINED"}
    assert declined == dict(held["codes"]) and {"DTI_HIGH", "SCORE_LOW"} <= set(declined)
    cancelled = {r["reason"]: r["deals"] for r in reasons["reasons"] if r["outcome"] == "CANCELLED"}
    assert cancelled[CANCEL_REASON] >= 1

    # The desk page shows the same numbers in its tables.
    sales = await signed_in(stack, "li.sales", "sales")
    page = await sales.get("/desk/reports", params=params)
    assert page.status_code == 200, page.text
    assert page.text.count("<svg") == 6 and page.text.count("<title id=") == 6
    tables = Tables(page.text).tables
    assert [row[1:] for row in tables["funnel-table"][1:]] == [
        [str(row["entered"]), str(row["left"])] for row in found["funnel"]["stages"]
    ]
    assert [row[1:] for row in tables["times-table"][1:]] == [
        [
            str(row["stays"]),
            "—" if row["median_seconds"] is None else str(row["median_seconds"]),
            "—" if row["p90_seconds"] is None else str(row["p90_seconds"]),
        ]
        for row in found["time-in-stage"]["stages"]
    ]
    assert [row[0] for row in tables["lenders-table"][1:]] == list(lenders)
    for row in tables["lenders-table"][1:]:
        figures = lenders[row[0]]
        assert row[1:7] == [
            str(figures[key])
            for key in (
                "submitted",
                "decided",
                "approved",
                "conditional",
                "counter_offer",
                "declined",
            )
        ]
        assert row[7] == (
            "—" if figures["approval_rate"] is None else str(figures["approval_rate"])
        )
    assert [row[1:] for row in tables["reasons-table"][1:]] == [
        [r["reason"], str(r["deals"])] for r in reasons["reasons"]
    ]
    assert tables["overdue-table"][-1][-1] == str(found["overdue"]["total"])


@pytest.mark.e2e
async def test_reports_are_refused_to_other_roles_and_bad_periods(stack: ApiStack) -> None:
    refused = await stack.http(Role.DELIVERY).get("/api/reports/funnel")
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("role 'delivery' may not read reports")
    assert (await stack.http().get("/api/reports/lenders")).status_code == 401

    finance = stack.http(Role.FINANCE)
    backwards = await finance.get(
        "/api/reports/funnel", params={"from": "2026-02-01", "to": "2026-01-01"}
    )
    assert backwards.status_code == 422
    assert backwards.json()["detail"] == "from 2026-02-01 is after to 2026-01-01"
    too_long = await finance.get(
        "/api/reports/close-reasons", params={"from": "2025-01-01", "to": "2026-01-02"}
    )
    assert too_long.status_code == 422 and "at most 366 days" in too_long.json()["detail"]
    not_a_date = await finance.get("/api/reports/time-in-stage", params={"from": "yesterday"})
    assert not_a_date.status_code == 422 and "from" in not_a_date.json()["detail"]

    spec = (await finance.get("/openapi.json")).json()
    funnel = spec["paths"]["/api/reports/funnel"]["get"]
    assert {"200", "401", "403", "422"} <= set(funnel["responses"])
    assert "auditor, credit, finance, sales" in funnel["summary"]

    delivery = await signed_in(stack, "zhao.delivery", "delivery")
    page = await delivery.get("/desk/reports")
    assert page.status_code == 403 and "Your role may not read the reports." in page.text
    assert "<svg" not in page.text
    credit = await signed_in(stack, "wang.credit", "credit")
    bad = await credit.get("/desk/reports", params={"from": "2026-13-01", "to": "2026-01-01"})
    assert bad.status_code == 422
    assert "&#39;2026-13-01&#39; is not a date; write it as YYYY-MM-DD" in bad.text
    assert 'value="2026-13-01"' in bad.text and "<svg" not in bad.text
    long = await credit.get("/desk/reports", params={"from": "2020-01-01", "to": "2026-01-01"})
    assert long.status_code == 422 and "at most 366 days can be reported at once" in long.text
