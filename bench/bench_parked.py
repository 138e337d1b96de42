"""3. Parked deals: many deals asleep in multi-week timers.

N deals are started concurrently through the client (each records its start,
upserts its search attributes, projects the read model) and left waiting in
CONTRACT on a 21-day deadline timer. Once server and worker are quiet:

- the worker's RSS (default cache, `max_cached_workflows` = 1000),
- the worker's (and server's) CPU over an idle minute,
- the latency of a staff action (`sign-sales-contract`, an Update with
  validator) on deals still in the worker's cache: the baseline;
- the worker is restarted (SIGTERM, as `make down`/a deploy does, then a new
  process), and the same action on random parked deals that the new worker
  has never seen (each is rebuilt from its history): p99 vs. the baseline.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from datetime import timedelta
from typing import Any

from bench import floor
from bench.bench_driver import Driver, bounded
from bench.bench_stack import Ctx, cpu_seconds, pct, python, row, rss_mb, say
from dealflow.models import DealPolicy
from dealflow.progress import Bar, Board, progress_board

PARKED_POLICY = DealPolicy(contract_deadline=timedelta(days=21))


async def timed_actions(driver: Driver, deal_ids: list[str], bar: Bar) -> list[float]:
    """One staff action per deal, one after another (staff act one at a time)."""
    out: list[float] = []
    for d in deal_ids:
        t0 = time.monotonic()
        await driver.act(d, "sign-sales-contract")
        out.append(time.monotonic() - t0)
        bar.advance()
    return out


def read_model_count(database_url: str) -> int:
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path, timeout=30) as con:
        return int(con.execute("select count(*) from deals").fetchone()[0])


async def run(ctx: Ctx) -> dict[str, Any]:
    with progress_board() as board:
        return await run_on(ctx, board)


async def run_on(ctx: Ctx, board: Board) -> dict[str, Any]:
    n = ctx.n(10_000, 40)
    samples = ctx.n(200, 5)
    idle_s = ctx.n(60, 2)
    async with ctx.stack("b3-parked") as s:
        assert s.client is not None
        driver = s.driver()
        say(f"[3] starting {n} deals (concurrency 64)")
        t0 = time.monotonic()
        started: list[str] = []

        async def start(i: int) -> str:
            d = await driver.start(PARKED_POLICY)
            started.append(d)
            if len(started) % 1000 == 0:
                say(
                    f"[3]   {len(started)} started ({len(started) / (time.monotonic() - t0):.0f}/s)"
                )
            return d

        await bounded(n, 64, board.add("[3] deals started", n).counted(start))
        start_wall = time.monotonic() - t0
        # Parked = every deal projected into the read model, then server and worker quiet.
        t1 = time.monotonic()
        projected = 0
        bar = board.add("[3] deals in the read model", n)
        while projected < n and time.monotonic() - t1 < 1200:
            await asyncio.sleep(1)
            projected = await asyncio.to_thread(read_model_count, s.settings.database_url)
            bar.update_to(projected)
        all_parked_s = time.monotonic() - t0
        await s.wait_idle(["temporal", "worker"], below=0.05, quiet_for=ctx.n(3, 1), limit=300)
        settle = time.monotonic() - t1
        say(
            f"[3] {n} deals started in {start_wall:.0f}s, settled after {settle:.0f}s more; "
            f"{projected} in the read model"
        )

        wpid, spid = s.pid("worker"), s.pid("temporal")
        rss = rss_mb(wpid)
        server_rss = rss_mb(spid)
        c0w, c0s, ti = cpu_seconds(wpid), cpu_seconds(spid), time.monotonic()
        say(f"[3] worker RSS {rss:.0f} MB; measuring idle CPU for {idle_s}s")
        await asyncio.sleep(idle_s)
        dt = time.monotonic() - ti
        idle_worker = 100 * (cpu_seconds(wpid) - c0w) / dt
        idle_server = 100 * (cpu_seconds(spid) - c0s) / dt

        rng = random.Random(3)
        # The most recently started deals are certainly among the 1000 cached.
        recent = started[-min(len(started) // 3, 500) :]
        cached_ids = rng.sample(recent, min(samples, len(recent)))
        cached = await timed_actions(
            driver, cached_ids, board.add("[3] actions, cached deals", len(cached_ids), "actions")
        )

        t_restart = time.monotonic()
        how = s.stop_worker()
        s.start_worker()
        restart_s = time.monotonic() - t_restart
        await asyncio.sleep(1)
        rss_empty = rss_mb(s.pid("worker"))  # the same worker process, nothing cached
        say(f"[3] worker restarted in {restart_s:.1f}s ({how}); actions on random parked deals")
        pool = [d for d in started[: len(started) - len(recent)]]
        cold_ids = rng.sample(pool, min(samples, len(pool)))
        cold = await timed_actions(
            driver, cold_ids, board.add("[3] actions after restart", len(cold_ids), "actions")
        )
        rss_after = rss_mb(s.pid("worker"))

        # Baseline: the floor worker (same SDK, sandbox and cache size) with its cache
        # as full as the deal worker's: min(n, cache + 20 %) floor workflows parked.
        k = min(n, int(s.settings.max_cached_workflows * 1.2))
        fw = s.ensure_extra(
            "floor_worker",
            [python(), "-m", "bench.floor", "worker", "--task-queue", "floor"],
            task_queue="floor",
        )
        await asyncio.sleep(1)
        floor_empty = rss_mb(fw.pid)
        say(f"[3] baseline: parking {k} floor workflows")
        park = floor.FloorPlan(0, [floor.FloorStep("signal")])
        tag = uuid.uuid4().hex[:6]
        assert s.plain_client is not None
        plain = s.plain_client

        async def park_one(i: int) -> None:
            await plain.start_workflow(
                floor.FloorWorkflow.run, park, id=f"park-{tag}-{i}", task_queue="floor"
            )

        await bounded(k, 64, board.add("[3] floor workflows parked", k).counted(park_one))
        await s.wait_idle(["temporal"], below=0.05, quiet_for=ctx.n(3, 1), limit=300)
        floor_rss = rss_mb(fw.pid)
        n_cached = min(n, s.settings.max_cached_workflows)
        per_deal = 1000 * (rss - rss_empty) / n_cached
        per_floor = 1000 * (floor_rss - floor_empty) / min(k, s.settings.max_cached_workflows)

    c99, k99 = 1000 * pct(cold, 99), 1000 * pct(cached, 99)
    slow = sorted(cold, reverse=True)[:5]
    rows = [
        row(
            "worker RSS, parked deals",
            rss,
            "MB",
            baseline=floor_rss,
            target="<= 300 MB",
            ok=ctx.judge(rss <= 300),
            key="worker_rss_parked_mb",
            note=f"{n} deals, {n_cached} cached: {rss_empty:.0f} MB empty + {per_deal:.0f} KB per "
            f"cached deal; floor {floor_empty:.0f} MB + {per_floor:.0f} KB",
        ),
        row(
            "worker idle CPU",
            idle_worker,
            "% core",
            baseline=idle_server,
            target="< 2%",
            ok=ctx.judge(idle_worker < 2),
            key="worker_idle_cpu_pct",
            note=f"baseline column: the server, {idle_s}s",
        ),
        row(
            "action p99 after restart",
            c99,
            "ms",
            baseline=k99,
            target="<= 3x cached",
            ok=ctx.judge(c99 <= 3 * k99),
            key="parked_action_p99_s",
            note=f"slowest {', '.join(f'{1000 * x:.0f}' for x in slow)} ms",
        ),
        row(
            "action p50 after restart",
            1000 * pct(cold, 50),
            "ms",
            baseline=1000 * pct(cached, 50),
            key="parked_action_p50_s",
        ),
        row(
            "deals parked/s",
            n / all_parked_s,
            "/s",
            note=f"started, first task and read model done; {n} deals, concurrency 64",
            key="deals_parked_rate",
        ),
    ]
    return {
        "rows": rows,
        "detail": {
            "deals": n,
            "start_wall_s": start_wall,
            "all_parked_s": all_parked_s,
            "settle_s": settle,
            "read_model_rows": projected,
            "worker_rss_mb": rss,
            "server_rss_mb": server_rss,
            "worker_rss_after_restart_mb": rss_after,
            "worker_rss_empty_cache_mb": rss_empty,
            "rss_per_cached_deal_kb": per_deal,
            "floor_worker_rss_mb": {
                "empty": floor_empty,
                "parked": floor_rss,
                "parked_n": k,
                "per_cached_kb": per_floor,
            },
            "idle_seconds": idle_s,
            "idle_cpu_pct": {"worker": idle_worker, "server": idle_server},
            "restart_s": restart_s,
            "restart": how,
            "samples": samples,
            "cached_ms": {"p50": 1000 * pct(cached, 50), "p99": k99, "max": 1000 * max(cached)},
            "after_restart_ms": {
                "p50": 1000 * pct(cold, 50),
                "p99": c99,
                "max": 1000 * max(cold),
                "over_1s": sum(1 for x in cold if x > 1),
            },
        },
    }


if __name__ == "__main__":
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as tmp:
        out = asyncio.run(run(Ctx(Path(tmp), Path("bench/results"), quick=True)))
        print(json.dumps(out, indent=1, default=str))
