"""1. Throughput: deals through every stage vs. the floor workflow, same server, same run.

One calibration deal is run first; its history gives the floor's plan (the
same updates, signals and activities, in the same order). Then the two arms
run in an A-B-B-A pattern (floor, deals, deals, floor), each chunk with the
same concurrency, so drift on a noisy machine falls on both. Both arms use the
deal's payload codec. Figures per arm:
deals/s, CPU ms per deal of the server and of the arm's worker (and, for
deals, of the API and the lender simulator), history events per deal.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench import floor
from bench.bench_driver import Driver, bounded
from bench.bench_profile import Profiles
from bench.bench_stack import CpuMeter, Ctx, history_stats, pct, python, row, say
from dealflow import client as deals

DEALS_FULL, DEALS_QUICK = 200, 2
CONCURRENCY_FULL, CONCURRENCY_QUICK = 20, 2
FLOOR_QUEUE = "floor-codec"


async def run(ctx: Ctx) -> dict[str, Any]:
    n = ctx.n(DEALS_FULL, DEALS_QUICK)
    conc = ctx.n(CONCURRENCY_FULL, CONCURRENCY_QUICK)
    async with ctx.stack("b1-throughput") as s:
        assert s.client is not None
        client = s.client
        # The floor encrypts its payloads with the deal's codec: no deployment
        # may store payloads in clear (docs/architecture.md §3.6), and the SDK's cost per encoded
        # payload is the platform's, not the deal's. (Until 2026-11-29 the
        # floor ran without it; the README gives both figures.)
        # Its own name and queue: --quick shares one stack with benchmark 4,
        # whose floor runs without the codec.
        fw = s.ensure_extra(
            "floor_worker_codec",
            [python(), "-m", "bench.floor", "worker", "--task-queue", FLOOR_QUEUE, "--codec"],
            task_queue=FLOOR_QUEUE,
        )
        driver = Driver(
            client,
            s.store,
            s.lenders,
            s.settings.task_queue,
            s.sim_url,
            database_url=s.settings.database_url,
        )

        say("[1] calibration deal (also warms up worker and server)")
        cal = await driver.full_deal()
        hist = await client.get_workflow_handle(deals.workflow_id(cal)).fetch_history()
        plan = floor.plan_from_history(list(hist.events))
        say(
            f"[1] floor plan from the deal: {plan.updates} updates, {plan.signals} signals, "
            f"{plan.activities} activities, {plan.local_activities} local activities"
        )
        await floor.drive(client, FLOOR_QUEUE, f"floor-warmup-{uuid.uuid4().hex[:6]}", plan)

        arms: dict[str, dict[str, Any]] = {
            a: {"ids": [], "wall": 0.0, "cpu": {}, "latencies": []} for a in ("floor", "deal")
        }
        chunks = ["floor", "deal", "deal", "floor"]
        profiled: set[str] = set()
        sizes = [n // 2, n // 2, n - n // 2, n - n // 2]
        for arm, size in zip(chunks, sizes, strict=True):
            if size == 0:
                continue
            await s.wait_idle(
                ["temporal", "worker", "api", "lender_sim"], quiet_for=ctx.n(2, 1), limit=60
            )
            pids = {
                "server": s.pid("temporal"),
                "worker": fw.pid if arm == "floor" else s.pid("worker"),
                "api": s.pid("api"),
                "lender_sim": s.pid("lender_sim"),
            }
            meter = CpuMeter(pids).start()
            prof = None
            if ctx.profile and arm not in profiled:
                # The first chunk of each arm: its worker, sampled by py-spy.
                profiled.add(arm)
                names: dict[str, int | None] = (
                    {"floor_worker": fw.pid}
                    if arm == "floor"
                    else {"worker": s.pid("worker"), "api": s.pid("api")}
                )
                prof = Profiles(names, ctx.results_dir / "profiles", "b1")
            a = arms[arm]
            if arm == "floor":
                tag = uuid.uuid4().hex[:6]
                lat: list[float] = a["latencies"]

                def one(i: int, tag: str = tag, lat: list[float] = lat) -> Any:
                    return floor.drive(client, FLOOR_QUEUE, f"floor-{tag}-{i}", plan, lat)

                ids = await bounded(size, conc, one)
            else:
                before = len(driver.latencies)
                ids = [
                    deals.workflow_id(d)
                    for d in await bounded(size, conc, lambda i: driver.full_deal())
                ]
                a["latencies"] += driver.latencies[before:]
            used = meter.stop()
            if prof is not None:
                prof.stop()
            a["ids"] += ids
            a["wall"] += meter.wall
            for k, v in used.items():
                a["cpu"][k] = a["cpu"].get(k, 0.0) + v
            say(
                f"[1] {arm:5} chunk of {size}: {size / meter.wall:.2f}/s "
                f"(server {used['server']:.1f}s, worker {used['worker']:.1f}s CPU)"
            )

        say("[1] reading histories")
        kept: list[Any] = []
        fstats = await history_stats(client, arms["floor"]["ids"])
        dstats = await history_stats(client, arms["deal"]["ids"], keep=kept)
        ctx.shared["deal_histories"] = kept
        ctx.shared["floor_plan"] = plan

    def per(arm: str, key: str) -> float:
        a = arms[arm]
        return 1000 * a["cpu"].get(key, 0.0) / max(len(a["ids"]), 1)

    f_rate = len(arms["floor"]["ids"]) / arms["floor"]["wall"]
    d_rate = len(arms["deal"]["ids"]) / arms["deal"]["wall"]
    rate_ratio = d_rate / f_rate
    ev_ratio = dstats["events_mean"] / fstats["events_mean"]
    rows = [
        row(
            "deals/s",
            d_rate,
            "/s",
            baseline=f_rate,
            target=">= 0.8x floor",
            ok=ctx.judge(rate_ratio >= 0.8),
        ),
        row(
            "history events per deal",
            dstats["events_mean"],
            "events",
            baseline=fstats["events_mean"],
            target="<= 1.3x floor",
            ok=ctx.judge(ev_ratio <= 1.3),
        ),
        row("server CPU per deal", per("deal", "server"), "ms", baseline=per("floor", "server")),
        row("worker CPU per deal", per("deal", "worker"), "ms", baseline=per("floor", "worker")),
        row(
            "API + lender sim CPU per deal",
            per("deal", "api") + per("deal", "lender_sim"),
            "ms",
            note="webhooks in, lender calls answered; the floor has neither",
        ),
        row("history bytes per deal", dstats["bytes_mean"], "B", baseline=fstats["bytes_mean"]),
        row(
            "update latency p99",
            1000 * pct(arms["deal"]["latencies"], 99),
            "ms",
            baseline=1000 * pct(arms["floor"]["latencies"], 99),
        ),
        row(
            "activity retries in normal run",
            dstats["activity_retries"],
            "",
            target="0",
            ok=dstats["activity_retries"] == 0,
        ),
    ]
    return {
        "rows": rows,
        "detail": {
            "deals": len(arms["deal"]["ids"]),
            "concurrency": conc,
            "floor_plan": {
                "updates": plan.updates,
                "signals": plan.signals,
                "activities": plan.activities,
                "local_activities": plan.local_activities,
            },
            "floor": {
                "rate": f_rate,
                "wall_s": arms["floor"]["wall"],
                "cpu_s": arms["floor"]["cpu"],
                "history": fstats,
                "update_p50_ms": 1000 * pct(arms["floor"]["latencies"], 50),
                "update_p99_ms": 1000 * pct(arms["floor"]["latencies"], 99),
            },
            "deal": {
                "rate": d_rate,
                "wall_s": arms["deal"]["wall"],
                "cpu_s": arms["deal"]["cpu"],
                "history": dstats,
                "update_p50_ms": 1000 * pct(arms["deal"]["latencies"], 50),
                "update_p99_ms": 1000 * pct(arms["deal"]["latencies"], 99),
                "status_queries_per_deal": driver.queries / max(len(arms["deal"]["ids"]) + 1, 1),
            },
        },
    }


if __name__ == "__main__":  # a single benchmark by hand: python -m bench.bench_throughput
    import asyncio
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as tmp:
        t0 = time.monotonic()
        out = asyncio.run(run(Ctx(Path(tmp), Path("bench/results"), quick=True)))
        print(json.dumps(out, indent=1, default=str))
        print(f"{time.monotonic() - t0:.1f}s")
