"""7. The deal desk's pages vs. the JSON API for the same question: server time, p95.

- Deals list with 10,000 deals in the read model: `GET /desk/deals` filtered by
  stage and lender (the HTML page, customer names included, as sales sees it)
  vs. `GET /api/deals` with the same filters and page size. Target: the page's
  p95 at most 1.5 x the JSON list's.
- The deal page: `GET /desk/deals/{id}` (stages, money, customer, documents,
  lenders, the action forms; the status asked of the running deal by a Temporal
  query, the customer read from the run's first history event) vs. `GET
  /api/deals/{id}` (the same query), for three real deals started on the
  stack and driven by its worker to CONTRACT, DOWN_PAYMENT and FOLLOW_UP,
  taken in turn. Target: the page's p95 at most 2 x the JSON status's.

Server time is the app's own time per request: the API app (`create_app`, the
code `python -m dealflow.api` serves) runs in this process behind a timing
wrapper and is called through httpx's ASGI transport, so routing, queries,
rendering and serialising count, the network and the client do not. The read
model is a fresh SQLite database (WAL, as the stack's) filled with synthetic
deals in one transaction; the deal page and the status read no row of it, they
ask the stack's deals through its Temporal client. After a warm-up the two
requests alternate, so drift hits both alike.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import insert
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.bench_stack import BenchStack, Ctx, pct, row, say
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.api.security import mint_token
from dealflow.desk.session import COOKIE
from dealflow.models import STAGE_ORDER, Action, PendingAction, Role, Stage
from dealflow.progress import Bar, progress_board
from dealflow.rules import ACTION_STAGES, owner_role
from dealflow.storage import db

DEALS_FULL = 10_000
SAMPLES_FULL = 400
WARM_UP = 30
LENDERS = ("acme-auto-finance", "beta-motor-credit", "cathay-car-loans")
NAMES = ("Wang Fang", "Li Wei", "Zhang Min", "Liu Yang", "Chen Jing", "Zhao Lei", "Huang Li")
LIST_FILTER = {"stage": Stage.UNDERWRITING.value, "lender": LENDERS[0]}


@dataclass(frozen=True)
class PagePair:
    """Desk pages and the JSON routes that answer the same questions, pairwise;
    the samples take the pairs in turn."""

    figure: str
    key: str  # latest.json's name of the p95 row; the p50 row's is the same with p50
    desk_paths: tuple[str, ...]
    api_paths: tuple[str, ...]
    max_ratio: float
    note: str


def page_pairs(n_deals: int, live_deals: dict[str, str]) -> list[PagePair]:
    """The pairs measured; `live_deals` maps a real deal's id to its stage."""
    query = "&".join(f"{key}={value}" for key, value in LIST_FILTER.items())
    ids = tuple(live_deals)
    return [
        PagePair(
            f"deals list p95, {n_deals:,} deals",
            "desk_list_p95_s",
            (f"/desk/deals?{query}",),
            (f"/api/deals?{query}&limit=50",),
            1.5,
            f"desk /desk/deals?{query} vs /api/deals?{query}&limit=50",
        ),
        PagePair(
            f"deal page p95, {len(ids)} deals",
            "desk_page_p95_s",
            tuple(f"/desk/deals/{deal_id}" for deal_id in ids),
            tuple(f"/api/deals/{deal_id}" for deal_id in ids),
            2.0,
            "desk /desk/deals/{id} vs /api/deals/{id}, deals at " + ", ".join(live_deals.values()),
        ),
    ]


async def start_live_deals(stack: BenchStack) -> dict[str, str]:
    """Three deals on the stack, driven by its worker and lender simulator: one
    just started, one approved (documents, a submission, money to pay), one
    funded and delivered (every step's facts); id -> stage."""
    assert stack.client is not None
    driver = stack.driver()
    new, approved, funded = [await driver.start() for _ in range(3)]
    await asyncio.gather(driver.to_underwriting(approved), driver.to_underwriting(funded))
    await asyncio.gather(driver.approved(approved), driver.to_follow_up(funded))
    await driver.wait(new, lambda st: st.stage is Stage.CONTRACT, "start")
    stages = {deal_id: (await driver.status(deal_id)).stage for deal_id in (new, approved, funded)}
    await driver.aclose()
    return {deal_id: stage.value for deal_id, stage in stages.items()}


def _next_step(stage: Stage) -> PendingAction | None:
    """A staff step the deal could wait for in `stage` (None: it waits on a lender, or is over)."""
    for action, stages in ACTION_STAGES.items():
        if stage in stages and action not in (Action.CANCEL, Action.RECORD_DOCUMENT):
            return PendingAction(action=action.value, role=owner_role(action), what=action.value)
    return None


class Stopwatch:
    """The app's time for the last request (requests are sent one at a time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.last = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.last = time.perf_counter() - started


def synthetic_deals(n: int, now: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """`n` read-model rows spread over every stage, lender and 20 dealers."""
    rows = []
    for i in range(n):
        stage = rng.choice(STAGE_ORDER)
        updated = now - timedelta(minutes=rng.randrange(60 * 24 * 60))
        due = None if stage.terminal else updated + timedelta(days=rng.choice((1, 3, 7, 14)))
        step = _next_step(stage)
        pending = [] if step is None else [step.model_copy(update={"due": due})]
        price = Decimal(rng.randrange(80_000, 400_000)).quantize(Decimal("0.01"))
        rows.append(
            {
                "deal_id": f"{updated:%Y%m%d}-{i:08x}",
                "workflow_id": f"deal-{updated:%Y%m%d}-{i:08x}",
                "version": 1,
                "dealer_id": f"dealer-{i % 20:03d}",
                "stage": stage.value,
                "stage_entered_at": updated,
                "lender_id": rng.choice(LENDERS),
                "vehicle_price": price,
                "amount_financed": (price * Decimal("0.7")).quantize(Decimal("0.01")),
                "approved_amount": None,
                "created_at": updated - timedelta(days=3),
                "updated_at": updated,
                "next_due_at": due,
                "pending_roles": ",".join(action.role.value for action in pending),
                "pending_actions": "["
                + ",".join(action.model_dump_json() for action in pending)
                + "]",
                "customer_name": f"{rng.choice(NAMES)} {i}",
            }
        )
    return rows


def fill_read_model(url: str, n: int) -> None:
    db.migrate(url)
    engine = db.make_engine(url)
    rows = synthetic_deals(n, datetime.now(UTC), random.Random(7))
    with engine.begin() as conn:
        conn.execute(insert(db.DEALS), rows)


async def measure(
    get: Callable[[str], Awaitable[float]], pair: PagePair, samples: int, bar: Bar
) -> tuple[list[float], list[float]]:
    pairs = list(zip(pair.desk_paths, pair.api_paths, strict=True))
    for i in range(WARM_UP):
        desk_path, api_path = pairs[i % len(pairs)]
        await get(desk_path)
        await get(api_path)
    desk, api = [], []
    for i in range(samples):
        desk_path, api_path = pairs[i % len(pairs)]
        # Alternate which goes first, so neither always follows the other.
        if (i // len(pairs)) % 2:
            desk.append(await get(desk_path))
            api.append(await get(api_path))
        else:
            api.append(await get(api_path))
            desk.append(await get(desk_path))
        bar.advance()
    return desk, api


def in_process_app(stack: BenchStack, database_url: str) -> tuple[Stopwatch, Services]:
    assert stack.client is not None
    settings = stack.settings.model_copy(update={"database_url": database_url})
    services = Services(
        settings=settings,
        client=stack.client,
        engine=db.make_engine(database_url),
        lenders=stack.lenders,
        store=stack.store,
    )
    return Stopwatch(create_app(services)), services


def pair_rows(
    ctx: Ctx, pair: PagePair, desk: list[float], api: list[float]
) -> list[dict[str, Any]]:
    """The p95 row (judged) and the p50 row of one pair, in milliseconds."""
    desk_p95, api_p95 = pct(desk, 95) * 1000, pct(api, 95) * 1000
    return [
        row(
            pair.figure,
            round(desk_p95, 2),
            "ms",
            baseline=round(api_p95, 2),
            target=f"<= {pair.max_ratio:g}x JSON",
            ok=ctx.judge(desk_p95 <= pair.max_ratio * api_p95),
            note=pair.note,
            key=pair.key,
        ),
        row(
            pair.figure.replace("p95", "p50"),
            round(pct(desk, 50) * 1000, 2),
            "ms",
            baseline=round(pct(api, 50) * 1000, 2),
            key=pair.key.replace("p95", "p50"),
        ),
    ]


async def run(ctx: Ctx) -> dict[str, Any]:
    n_deals = ctx.n(DEALS_FULL, 300)
    samples = ctx.n(SAMPLES_FULL, 20)
    url = f"sqlite:///{ctx.root / 'b7-desk' / 'read-model.db'}"
    async with ctx.stack("b7-desk") as stack:
        say(f"[7] filling a read model with {n_deals:,} synthetic deals")
        fill_read_model(url, n_deals)
        say("[7] driving three deals on the stack for the deal page")
        live_deals = await start_live_deals(stack)
        app, services = in_process_app(stack, url)
        now = datetime.now(UTC)
        cookie, _ = db.open_desk_session(
            services.engine,
            staff_id="bench.sales",
            roles=[Role.SALES.value],
            now=now,
            expires_at=now + timedelta(hours=1),
        )
        token = mint_token(services.settings.jwt_secret, "bench.sales", [Role.SALES])
        headers = {"Authorization": f"Bearer {token}", "Cookie": f"{COOKIE}={cookie}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://desk.bench") as http:

            async def get(path: str) -> float:
                response = await http.get(path, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
                return app.last

            rows = []
            with progress_board() as board:
                for pair in page_pairs(n_deals, live_deals):
                    say(f"[7] {pair.figure}: {samples} requests each, alternating")
                    bar = board.add(f"[7] {pair.figure}", samples, "pairs")
                    desk, api = await measure(get, pair, samples, bar)
                    rows += pair_rows(ctx, pair, desk, api)
    db.dispose_engine(url)
    return {"rows": rows, "deals": n_deals, "samples": samples, "live_deals": live_deals}
