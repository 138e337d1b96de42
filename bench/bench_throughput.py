"""1. Throughput: deals through every stage vs. the floor workflows and the DBOS floor.

One calibration deal is run first; its history gives the floor's plan (the
same updates, signals and activities, in the same order). Three baselines run
beside the deals, interleaved A-B-C-D-D-C-B-A with the same concurrency so drift
on a noisy machine falls on all of them:

- the reference floor: the plan with every activity (regular or local) as a
  regular activity, with the deal's payload codec. Its shape stays put when
  the deal moves work to local activities, so the targets are judged on it;
- the mix floor: the deal's own mix, local activities as local activities;
- the DBOS floor: the reference shape on DBOS and PostgreSQL (bench/floor_dbos.py).

Figures per arm: deals/s, CPU ms per deal of the server and of the arm's worker
(and, for deals, of the API and the lender simulator), history events per deal,
update latency. Then, on the same stack, the scaling curve (1, 2, 4 deal-worker
processes) and one deal's history growth toward the continue-as-new limit.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench import floor
from bench.bench_driver import Driver, bounded
from bench.bench_growth import history_growth
from bench.bench_profile import Profiles
from bench.bench_scaling import scaling_curve
from bench.bench_stack import BenchStack, CpuMeter, Ctx, history_stats, pct, python, row, say
from bench.dbos_arm import DbosArm, cpu_used
from dealflow import client as deals
from dealflow.models import DealPolicy
from dealflow.progress import Bar, progress_board

DEALS_FULL, DEALS_QUICK = 200, 2
CONCURRENCY_FULL, CONCURRENCY_QUICK = 20, 2
FLOOR_QUEUE = "floor-codec"
ARMS = ("floor", "floor_mix", "dbos", "deal")  # the A-B-C-D order of the chunks
SCALING_WORKERS_FULL, SCALING_WORKERS_QUICK = [1, 2, 4], [1, 2]
SCALING_DEALS_FULL, SCALING_DEALS_QUICK = 60, 2
GROWTH_FRACTIONS_FULL = [0.05, 0.2, 0.4, 0.6, 0.8, 0.95]
GROWTH_FRACTIONS_QUICK = [0.5, 0.9]
GROWTH_LIMIT_QUICK = 150


@dataclass
class Arm:
    ids: list[str] = field(default_factory=list)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    profiled: bool = False

    @property
    def rate(self) -> float | None:
        return len(self.ids) / self.wall if self.ids and self.wall else None

    def per_deal_ms(self, key: str) -> float:
        return 1000 * self.cpu.get(key, 0.0) / max(len(self.ids), 1)

    def latency_ms(self) -> dict[str, float]:
        return {f"p{q}": 1000 * pct(self.latencies, q) for q in (50, 90, 99)}


@dataclass
class Plans:
    deal: floor.FloorPlan  # as read from the calibration deal
    reference: floor.FloorPlan
    mix: floor.FloorPlan


async def run(ctx: Ctx) -> dict[str, Any]:
    n = ctx.n(DEALS_FULL, DEALS_QUICK)
    conc = ctx.n(CONCURRENCY_FULL, CONCURRENCY_QUICK)
    async with ctx.stack("b1-throughput") as s:
        assert s.client is not None
        # The floors encrypt their payloads with the deal's codec: no deployment
        # may store payloads in clear (docs/architecture.md §3.6), and the SDK's cost per
        # encoded payload is the platform's, not the deal's. Their own name and
        # queue: --quick shares one stack with benchmark 4, whose floor has no codec.
        fw = s.ensure_extra(
            "floor_worker_codec",
            [python(), "-m", "bench.floor", "worker", "--task-queue", FLOOR_QUEUE, "--codec"],
            task_queue=FLOOR_QUEUE,
        )
        driver = s.driver()
        plans = await calibrate(s, driver)
        arms, dbos_note = await run_arms(ctx, s, driver, fw.pid, plans, n, conc)
        say("[1] reading histories")
        kept: list[Any] = []
        fstats = await history_stats(s.client, arms["floor"].ids)
        mstats = await history_stats(s.client, arms["floor_mix"].ids)
        dstats = await history_stats(s.client, arms["deal"].ids, keep=kept)
        ctx.shared["deal_histories"] = kept
        ctx.shared["floor_plan"] = plans.reference
        scaling = await scaling_curve(
            s,
            driver,
            SCALING_WORKERS_QUICK if ctx.quick else SCALING_WORKERS_FULL,
            ctx.n(SCALING_DEALS_FULL, SCALING_DEALS_QUICK),
            conc,
        )
        limit = ctx.n(DealPolicy().max_history_events, GROWTH_LIMIT_QUICK)
        growth = await history_growth(
            s.client, driver, limit, GROWTH_FRACTIONS_QUICK if ctx.quick else GROWTH_FRACTIONS_FULL
        )
    stats = {"floor": fstats, "floor_mix": mstats, "deal": dstats}
    return {
        "rows": rows(ctx, arms, stats, dbos_note, scaling, growth),
        "series": series(arms, scaling, growth),
        "detail": detail(arms, stats, plans, conc, driver, limit, scaling, growth),
    }


async def calibrate(s: BenchStack, driver: Driver) -> Plans:
    assert s.client is not None
    say("[1] calibration deal (also warms up worker and server)")
    cal = await driver.full_deal()
    hist = await s.client.get_workflow_handle(deals.workflow_id(cal)).fetch_history()
    plan = floor.plan_from_history(list(hist.events))
    plans = Plans(deal=plan, reference=plan.all_regular(), mix=plan)
    say(f"[1] the deal: {plan.shape()}")
    say(f"[1] reference floor: {plans.reference.shape()}")
    say(f"[1] mix floor: {plans.mix.shape()}")
    for p in (plans.reference, plans.mix):
        await floor.drive(s.client, FLOOR_QUEUE, f"floor-warmup-{uuid.uuid4().hex[:6]}", p)
    return plans


async def run_arms(
    ctx: Ctx, s: BenchStack, driver: Driver, floor_pid: int, plans: Plans, n: int, conc: int
) -> tuple[dict[str, Arm], str]:
    """Every arm in halves, A-B-C-D then D-C-B-A; the DBOS arm's note if it did not run."""
    arms = {a: Arm() for a in ARMS}
    async with DbosArm.open(s, conc) as dbos:
        if not dbos.ready:
            say(f"[1] DBOS floor: not measured ({dbos.note})")
        order = [a for a in ARMS if a != "dbos" or dbos.ready]
        halves = [n // 2, n - n // 2]
        chunks = [(a, halves[0]) for a in order] + [(a, halves[1]) for a in reversed(order)]
        with progress_board() as board:
            bars = {a: board.add(f"[1] {a} arm", n) for a in order}
            for arm, size in chunks:
                if size:
                    await run_chunk(
                        ctx, s, driver, floor_pid, dbos, plans, arm, size, conc, arms, bars[arm]
                    )
    return arms, dbos.note


async def run_chunk(
    ctx: Ctx,
    s: BenchStack,
    driver: Driver,
    floor_pid: int,
    dbos: DbosArm,
    plans: Plans,
    arm: str,
    size: int,
    conc: int,
    arms: dict[str, Arm],
    bar: Bar,
) -> None:
    assert s.client is not None
    client = s.client
    await s.wait_idle(["temporal", "worker", "api", "lender_sim"], quiet_for=ctx.n(2, 1), limit=60)
    worker = {"floor": floor_pid, "floor_mix": floor_pid, "dbos": dbos.pid}.get(arm)
    pids = {
        "server": s.pid("temporal"),
        "worker": worker if arm != "deal" else s.pid("worker"),
        "api": s.pid("api"),
        "lender_sim": s.pid("lender_sim"),
    }
    pg_before = dbos.backend_cpu() if arm == "dbos" else {}
    a = arms[arm]
    prof = None
    if ctx.profile and arm in ("floor", "deal") and not a.profiled:
        # The first chunk of the arm: its worker (and the deal's API), sampled by py-spy.
        a.profiled = True
        names: dict[str, int | None] = (
            {"floor_worker": floor_pid}
            if arm == "floor"
            else {
                "worker": s.pid("worker"),
                "api": s.pid("api"),
            }
        )
        prof = Profiles(names, ctx.results_dir / "profiles", "b1")
    meter = CpuMeter(pids).start()
    tag = uuid.uuid4().hex[:6]
    if arm == "deal":
        before = len(driver.latencies)
        done = await bounded(size, conc, bar.counted(lambda i: driver.full_deal()))
        ids = [deals.workflow_id(d) for d in done]
        a.latencies += driver.latencies[before:]
    elif arm == "dbos":
        ids = await bounded(
            size,
            conc,
            bar.counted(lambda i: dbos.drive(f"dbos-{tag}-{i}", plans.reference, a.latencies)),
        )
    else:
        plan = plans.reference if arm == "floor" else plans.mix

        def one(i: int) -> Any:
            return floor.drive(client, FLOOR_QUEUE, f"{arm}-{tag}-{i}", plan, a.latencies)

        ids = await bounded(size, conc, bar.counted(one))
    used = meter.stop()
    if prof is not None:
        prof.stop()
    if arm == "dbos":
        # Its server is PostgreSQL: the backends serving the scratch database.
        used["server"] = cpu_used(pg_before, dbos.backend_cpu())
    a.ids += ids
    a.wall += meter.wall
    for k, v in used.items():
        a.cpu[k] = a.cpu.get(k, 0.0) + v
    say(
        f"[1] {arm:9} chunk of {size}: {size / meter.wall:.2f}/s "
        f"(server {used['server']:.1f}s, worker {used['worker']:.1f}s CPU)"
    )


def rows(
    ctx: Ctx,
    arms: dict[str, Arm],
    stats: dict[str, dict[str, Any]],
    dbos_note: str,
    scaling: list[dict[str, Any]],
    growth: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    deal, ref, mix, dbos = arms["deal"], arms["floor"], arms["floor_mix"], arms["dbos"]
    d_rate = deal.rate or 0.0
    events = {k: v["events_mean"] for k, v in stats.items()}
    out = [
        row(
            "deals/s",
            d_rate,
            "/s",
            baseline=ref.rate,
            target=">= 1.0x floor",
            ok=ctx.judge(d_rate >= (ref.rate or 0.0)),
            note="floor: the deal's shape, every activity regular, with codec",
            key="deals_per_s_vs_floor",
        ),
        row(
            "deals/s vs mix floor",
            d_rate,
            "/s",
            baseline=mix.rate,
            note="floor with the deal's mix of regular and local activities",
            key="deals_per_s_vs_mix_floor",
        ),
        row(
            "deals/s vs DBOS floor",
            d_rate if dbos.rate else None,
            "/s",
            baseline=dbos.rate,
            target=">= 1.0x DBOS",
            ok=ctx.judge(d_rate >= dbos.rate) if dbos.rate else None,
            note=dbos_note or "the reference shape on DBOS + PostgreSQL",
            key="deals_per_s_vs_dbos",
        ),
        row(
            "history events per deal",
            events["deal"],
            "events",
            baseline=events["floor"],
            target="<= 0.8x floor",
            ok=ctx.judge(events["deal"] <= 0.8 * events["floor"]),
            key="history_events_vs_floor",
        ),
        row(
            "history events per deal vs mix floor",
            events["deal"],
            "events",
            baseline=events["floor_mix"],
        ),
        row(
            "server CPU per deal",
            deal.per_deal_ms("server"),
            "ms",
            baseline=ref.per_deal_ms("server"),
            key="server_cpu_per_deal",
        ),
        row(
            "worker CPU per deal",
            deal.per_deal_ms("worker"),
            "ms",
            baseline=ref.per_deal_ms("worker"),
            key="worker_cpu_per_deal",
        ),
        row(
            "API + lender sim CPU per deal",
            deal.per_deal_ms("api") + deal.per_deal_ms("lender_sim"),
            "ms",
            note="webhooks in, lender calls answered; the floors have neither",
        ),
        row(
            "history bytes per deal",
            stats["deal"]["bytes_mean"],
            "B",
            baseline=stats["floor"]["bytes_mean"],
        ),
        row(
            "update latency p99",
            pct(deal.latencies, 99),
            "s",
            baseline=pct(ref.latencies, 99),
            key="update_latency_p99_s",
        ),
        row(
            "activity retries in normal run",
            stats["deal"]["activity_retries"],
            "",
            target="0",
            ok=stats["deal"]["activity_retries"] == 0,
        ),
    ]
    return out + scaling_rows(scaling) + growth_rows(growth)


def scaling_rows(scaling: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not scaling:
        return []
    one = scaling[0]
    return [
        row(
            f"deals/s, {p['workers']} worker processes",
            p["deals_per_s"],
            "/s",
            baseline=one["deals_per_s"],
            note=f"{p['cpu_ms_per_deal']:.0f} ms CPU/deal (server + workers); baseline 1 worker",
        )
        for p in scaling[1:]
    ]


def growth_rows(growth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(growth) < 2:
        return []
    first, last = growth[0], growth[-1]
    return [
        row(
            f"replay ms per 1k events at {last['events']} events",
            1e6 * last["replay_s"] / last["events"],
            "ms",
            baseline=1e6 * first["replay_s"] / first["events"],
            note=f"baseline at {first['events']} events; one deal's run, SDK Replayer",
        )
    ]


def series(
    arms: dict[str, Arm], scaling: list[dict[str, Any]], growth: list[dict[str, Any]]
) -> dict[str, Any]:
    """Chart data (bench/results charts): deals/s per arm, scaling, growth, latencies."""
    return {
        "throughput": {a: arms[a].rate for a in ("deal", "floor", "floor_mix", "dbos")},
        "scaling": scaling,
        "history_growth": growth,
        "latency_ms": {
            a: arms[a].latency_ms() if arms[a].latencies else None
            for a in ("deal", "floor", "floor_mix", "dbos")
        },
    }


def detail(
    arms: dict[str, Arm],
    stats: dict[str, dict[str, Any]],
    plans: Plans,
    conc: int,
    driver: Driver,
    limit: int,
    scaling: list[dict[str, Any]],
    growth: list[dict[str, Any]],
) -> dict[str, Any]:
    def arm(name: str) -> dict[str, Any]:
        a = arms[name]
        return {
            "rate": a.rate,
            "workflows": len(a.ids),
            "wall_s": a.wall,
            "cpu_s": a.cpu,
            "history": stats.get(name),
            "update_ms": a.latency_ms(),
        }

    return {
        "deals": len(arms["deal"].ids),
        "concurrency": conc,
        "plans": {
            k: {
                "updates": p.updates,
                "signals": p.signals,
                "activities": p.activities,
                "local_activities": p.local_activities,
            }
            for k, p in (("deal", plans.deal), ("reference", plans.reference), ("mix", plans.mix))
        },
        **{a: arm(a) for a in ARMS},
        "status_queries_per_deal": driver.queries / max(len(arms["deal"].ids) + 1, 1),
        "scaling": scaling,
        "history_growth": {"limit": limit, "points": growth},
    }


if __name__ == "__main__":  # a single benchmark by hand: python -m bench.bench_throughput
    import asyncio
    import json
    import tempfile
    from pathlib import Path

    async def _alone() -> dict[str, Any]:
        ctx = Ctx(Path(tmp), Path("bench/results"), quick=True)
        try:
            return await run(ctx)
        finally:
            await ctx.aclose()

    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as tmp:
        t0 = time.monotonic()
        out = asyncio.run(_alone())
        print(json.dumps(out, indent=1, default=str))
        print(f"{time.monotonic() - t0:.1f}s")
