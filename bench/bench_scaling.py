"""Benchmark 1's scaling curve: deals/s and CPU per deal with 1, 2, 4 deal-worker processes.

Every point drives the same number of deals at the same concurrency; the
additional workers are more processes of the deal worker (worker.py) polling
the stack's task queue, each with its own metrics port, as a production layout
of several workers would run. CPU per deal is the server's plus every worker's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from bench.bench_driver import Driver, bounded
from bench.bench_stack import BenchStack, CpuMeter, Proc, free_port, say
from dealflow.devstack.health import worker_health


async def start_deal_worker(s: BenchStack, index: int) -> Proc:
    """One more deal worker on the stack's task queue; returns once it polls."""
    port = free_port()
    argv = list(s.component("worker").argv)
    env = {"DEALFLOW_WORKER_METRICS_PORT": str(port)}
    p = s.start_extra(
        f"deal_worker_{index}", argv, task_queue=s.settings.task_queue, env=env, wait=False
    )
    # Its own metrics port vouches for it: the stack's worker would answer on the default.
    cfg = dataclasses.replace(s.cfg, worker_metrics_port=port, env={**s.cfg.env, **env})
    deadline = time.monotonic() + 60
    while not (health := await asyncio.to_thread(worker_health, cfg, p.pid)).ok:
        if p.popen.poll() is not None or time.monotonic() > deadline:
            s.stop_extra(p)
            raise RuntimeError(f"deal worker {index} did not start: {health.detail}")
        await asyncio.sleep(0.2)
    return p


async def measure(s: BenchStack, driver: Driver, extra: list[Proc], n: int, conc: int) -> Any:
    await s.wait_idle(["temporal", "worker", "api", "lender_sim"], quiet_for=1, limit=60)
    pids: dict[str, int | None] = {"server": s.pid("temporal"), "worker": s.pid("worker")}
    pids.update({p.name: p.pid for p in extra})
    meter = CpuMeter(pids).start()
    await bounded(n, conc, lambda i: driver.full_deal())
    used = meter.stop()
    cpu = sum(v for k, v in used.items() if k != "bench")
    return n / meter.wall, 1000 * cpu / n


async def scaling_curve(
    s: BenchStack, driver: Driver, workers: list[int], n: int, conc: int
) -> list[dict[str, Any]]:
    """deals/s and server+workers CPU ms per deal for each number of worker processes."""
    extra: list[Proc] = []
    points: list[dict[str, Any]] = []
    try:
        for count in workers:
            while 1 + len(extra) < count:
                extra.append(await start_deal_worker(s, len(extra) + 1))
            rate, cpu_ms = await measure(s, driver, extra, n, conc)
            points.append({"workers": count, "deals_per_s": rate, "cpu_ms_per_deal": cpu_ms})
            say(
                f"[1] scaling: {count} worker(s), {n} deals: {rate:.2f}/s, {cpu_ms:.0f} ms CPU/deal"
            )
    finally:
        for p in extra:
            s.stop_extra(p)
        # An extra worker removes the ready file on its way out; the stack's worker still runs.
        main = s.pid("worker")
        if extra and main is not None:
            s.cfg.worker_ready_file.write_text(str(main))
    return points
