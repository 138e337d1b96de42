"""The six chaos scenarios: what each one breaks, when, and for how long.

Each scenario gets its own population of deals (a mix of outcomes, see
`chaos_robot.plan_mix`) and an injector coroutine that strikes while the robot
drives them. The injector returns only when its faults are done and every
component it broke is back; the truth check (`chaos_check`) runs after.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from temporalio.client import Client

from bench.chaos_robot import (
    ACME,
    BETA,
    REJECTED_ALL,
    REJECTED_NEXT,
    DealRun,
    Plan,
    Robot,
)
from bench.chaos_stack import LENDER_CLIENT_TIMEOUT, ChaosStack
from dealflow import client as deals
from dealflow import codec, names
from dealflow.models import Stage
from dealflow.storage import db

STAGES = list(Stage)


@dataclass
class Ctx:
    stack: ChaosStack
    robot: Robot
    http: httpx.AsyncClient
    engine: Engine
    quick: bool
    rng: random.Random
    log: Callable[[str], None]
    # --kills: how often the kill scenarios strike (None: their own default).
    kills: int | None = None


@dataclass
class Strikes:
    """What an injector did: a count for the table, details for the report."""

    count: int = 0
    detail: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # scenario-level failures

    def note(self, text: str) -> None:
        self.detail.append(text)


def active(runs: list[DealRun]) -> bool:
    return any(r.final is None and r.error is None for r in runs)


def reached(runs: list[DealRun], stage: Stage) -> int:
    """Deals seen at or past `stage` (terminal counts as past everything)."""
    k = STAGES.index(stage)
    n = 0
    for r in runs:
        s = r.final.stage if r.final else r.last_stage
        if s is not None and (s.terminal or STAGES.index(s) >= k):
            n += 1
    return n


async def until(pred: Callable[[], bool], every: float = 0.2, limit: float | None = None) -> bool:
    """Poll `pred` every `every` s; True once it holds, False after `limit` s."""
    end = None if limit is None else time.monotonic() + limit
    while True:
        if pred():
            return True
        if end is not None and time.monotonic() >= end:
            return False
        await asyncio.sleep(every if end is None else min(every, max(0.0, end - time.monotonic())))


async def sleep_while(runs: list[DealRun], seconds: float) -> None:
    """Sleep `seconds`, or less if every deal has finished."""
    await until(lambda: not active(runs), limit=seconds)


async def finished(runs: list[DealRun]) -> None:
    await until(lambda: not active(runs), every=0.5)


async def sim_faults(ctx: Ctx, rules: list[dict[str, Any]], seed: int) -> None:
    r = await ctx.http.put(f"{ctx.stack.sim_url}/_sim/faults", json={"rules": rules, "seed": seed})
    r.raise_for_status()


async def in_flight(ctx: Ctx, runs: list[DealRun]) -> list[dict[str, Any]]:
    mine = {r.deal_id for r in runs}
    r = await ctx.http.get(f"{ctx.stack.sim_url}/_sim/faults")
    r.raise_for_status()
    return [f for f in r.json()["in_flight"] if f["deal_id"] in mine]


class Scenario:
    key = ""
    title = ""
    extra_plans: tuple[Plan, ...] = ()

    def stagger(self, ctx: Ctx, n: int) -> float:
        """Seconds over which the deals are started."""
        return 0.0

    async def before_start(self, ctx: Ctx, i: int, n: int) -> None:
        """Wait before starting deal `i` of `n`: by default spread over `stagger`."""
        stagger = self.stagger(ctx, n)
        if stagger and n > 1:
            await asyncio.sleep(stagger * i / (n - 1))

    def script_for(self, plan: Plan) -> dict[str, Any] | None:
        return plan.script

    def skip_reason(self, ctx: Ctx) -> str | None:
        return None

    async def setup(self, ctx: Ctx, runs: list[DealRun]) -> None:
        pass

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- 1. worker


class WorkerKill(Scenario):
    key = "worker-kill"
    title = "worker kill -9"

    def kills(self, ctx: Ctx) -> int:
        return ctx.kills or (2 if ctx.quick else 10)

    def stagger(self, ctx: Ctx, n: int) -> float:
        return 0.0 if ctx.quick else 2.5 * self.kills(ctx)

    async def setup(self, ctx: Ctx, runs: list[DealRun]) -> None:
        # Lender calls take a moment, so a kill lands mid-call often, and on
        # purpose every other time (the injector waits for one in flight).
        await sim_faults(ctx, [{"mode": "slow", "delay": 1.5, "ratio": 1.0}], seed=1)

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        mid_call = 0
        for i in range(self.kills(ctx)):
            if not active(runs):
                out.problems.append(f"deals finished after {i} of {self.kills(ctx)} kills")
                break
            await sleep_while(runs, ctx.rng.uniform(1.0, 4.0))
            calls: list[dict[str, Any]] = []
            if i % 2 == 0:  # wait (a while) for a lender call to be in flight
                end = time.monotonic() + 15
                while time.monotonic() < end and active(runs):
                    calls = await in_flight(ctx, runs)
                    if calls:
                        break
                    await asyncio.sleep(0.1)
            else:
                calls = await in_flight(ctx, runs)
            pid = await ctx.stack.akill("worker")
            out.count += 1
            if calls:
                mid_call += 1
            what = ", ".join(sorted({c["endpoint"] for c in calls})) or "no lender call"
            ctx.log(f"    kill -9 worker pid {pid} ({what} in flight)")
            await asyncio.sleep(ctx.rng.uniform(0.2, 2.0))
            await ctx.stack.arestart("worker")
        out.note(f"{out.count} worker kills, {mid_call} during a lender call")


# --------------------------------------------------------------------------- 2. server


class ServerKill(Scenario):
    key = "server-kill"
    title = "Temporal server kill -9"

    def kills(self, ctx: Ctx) -> int:
        return ctx.kills or (2 if ctx.quick else 4)

    def stagger(self, ctx: Ctx, n: int) -> float:
        return 0.0 if ctx.quick else 4.0 * self.kills(ctx)

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        others = {name: ctx.stack.pid(name) for name in ("worker", "api", "lender_sim")}
        mid_update = in_flight_total = 0
        for i in range(self.kills(ctx)):
            if not active(runs):
                out.problems.append(f"deals finished after {i} of {self.kills(ctx)} kills")
                break
            await sleep_while(runs, ctx.rng.uniform(2.0, 5.0))
            updates = ctx.robot.in_flight
            pid = await ctx.stack.akill("temporal")
            out.count += 1
            if updates:
                mid_update += 1
                in_flight_total += updates
            down = ctx.rng.uniform(0.5, 4.0)
            ctx.log(
                f"    kill -9 temporal pid {pid} ({updates} staff updates in flight); "
                f"down {down:.1f}s"
            )
            await asyncio.sleep(down)
            t0 = time.monotonic()
            await ctx.stack.arestart("temporal")
            ctx.log(f"    temporal back in {time.monotonic() - t0:.1f}s")
            # The others must ride it out by themselves.
            for name, before in others.items():
                now = ctx.stack.pid(name)
                if now != before:
                    out.problems.append(
                        f"{name} (pid {before}) did not survive the server restart; restarted"
                    )
                    await ctx.stack.arestart(name)
                    others[name] = ctx.stack.pid(name)
        out.note(
            f"{out.count} server kills on the same SQLite file, {mid_update} of them with "
            f"staff updates in flight ({in_flight_total} updates in all)"
        )


# --------------------------------------------------------------------------- 3. API


class ApiKill(Scenario):
    key = "api-kill"
    title = "API kill -9 in a webhook burst"

    def kills(self, ctx: Ctx) -> int:
        return ctx.kills or (2 if ctx.quick else 4)

    def script_for(self, plan: Plan) -> dict[str, Any] | None:
        # Every decision and disbursement webhook sent twice (same id), after
        # a short delay, so deals answer in bursts the kill can land in.
        lenders: dict[str, list[dict[str, Any]]] = {}
        src = (plan.script or {}).get("lenders", {})
        for lid in (ACME, BETA):
            steps = src.get(lid, [{"decision": "approved"}])
            lenders[lid] = [{**s, "duplicate": True} for s in steps]
        return {
            "lenders": lenders,
            "disbursements": [{"result": "completed", "duplicate": True}],
            "decision_delay": 1.0,
        }

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        outbox = f"{ctx.stack.sim_url}/_sim/outbox"
        want = 2 if ctx.quick else 5
        for i in range(self.kills(ctx)):
            if not active(runs):
                out.problems.append(f"deals finished after {i} of {self.kills(ctx)} kills")
                break
            # Wait for a burst: several webhooks pending at the simulator.
            pending = 0
            end = time.monotonic() + 30
            while time.monotonic() < end and active(runs):
                pending = (await ctx.http.get(outbox)).json()["pending"]
                if pending >= want:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(ctx.rng.uniform(0.5, 1.2))  # into the burst
            pid = await ctx.stack.akill("api")
            out.count += 1
            down = ctx.rng.uniform(2.0, 5.0)
            ctx.log(f"    kill -9 api pid {pid} with {pending} webhooks pending; down {down:.1f}s")
            await asyncio.sleep(down)
            await ctx.stack.arestart("api")
            await sleep_while(runs, ctx.rng.uniform(2.0, 4.0))
        counts = (await ctx.http.get(outbox)).json()
        out.note(f"{out.count} API kills; {counts['retried']} webhooks needed retries")


# --------------------------------------------------------------------------- 4. lender


class LenderFaults(Scenario):
    key = "lender-faults"
    title = "lender 500 / timeout / slow / 4xx"
    extra_plans = (REJECTED_NEXT, REJECTED_ALL)

    async def setup(self, ctx: Ctx, runs: list[DealRun]) -> None:
        rules: list[dict[str, Any]] = []
        for r in runs:
            for lender in r.plan.reject_lenders:
                rules.append(
                    {
                        "mode": "4xx",
                        "status": 422,
                        "endpoints": ["applications"],
                        "lender_id": lender,
                        "deal_id": r.deal_id,
                        "note": "application refused",
                    }
                )
        apps_and_disbursements = ["applications", "disbursement-requests"]
        # Processed, then no reply before the worker's 20 s HTTP timeout.
        rules.append(
            {
                "mode": "timeout",
                "phase": "after",
                "delay": LENDER_CLIENT_TIMEOUT + 3,
                "count": 1 if ctx.quick else 3,
                "endpoints": apps_and_disbursements,
            }
        )
        if ctx.quick:
            # A fixed number of strikes: bounded retries, a bounded run time.
            rules += [
                {"mode": "500", "phase": "after", "count": 3},  # processed, reply lost
                {"mode": "500", "phase": "before", "count": 4},
                {"mode": "500", "phase": "before", "status": 503, "count": 2},
                {"mode": "slow", "delay": 2.0, "count": 3},
            ]
        else:
            # A bad quarter of an hour, compressed: random failures for 90 s.
            window = 90.0
            rules += [
                {"mode": "500", "phase": "after", "ratio": 0.15, "duration": window},
                {"mode": "500", "phase": "before", "ratio": 0.25, "duration": window},
                {"mode": "500", "phase": "before", "status": 503, "ratio": 0.1, "duration": window},
                {"mode": "slow", "delay": 3.0, "ratio": 0.3, "duration": window},
            ]
        await sim_faults(ctx, rules, seed=4)

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        await finished(runs)
        # A client that retries a 4xx would still be calling: give it a chance to.
        await asyncio.sleep(3.0)
        mine = {r.deal_id for r in runs}
        snap = (await ctx.http.get(f"{ctx.stack.sim_url}/_sim/faults")).json()
        hits = [e for e in snap["injected"] if e["deal_id"] in mine]
        by_mode: dict[str, int] = {}
        for e in hits:
            label = e["mode"] if e["mode"] in ("slow", "4xx") else f"{e['mode']}/{e['phase']}"
            by_mode[label] = by_mode.get(label, 0) + 1
        out.count = len(hits)
        out.note("lender faults: " + ", ".join(f"{k} x{v}" for k, v in sorted(by_mode.items())))
        for mode in ("500/before", "500/after", "timeout/after", "slow", "4xx"):
            if not any(k == mode for k in by_mode):
                out.problems.append(f"fault {mode} never struck")


# --------------------------------------------------------------------------- 5. PostgreSQL


class PostgresDown(Scenario):
    key = "postgres-down"
    title = "PostgreSQL unavailable"

    def __init__(self) -> None:
        self.cut_started = asyncio.Event()

    def outage(self, ctx: Ctx) -> float:
        return 8.0 if ctx.quick else 30.0

    async def before_start(self, ctx: Ctx, i: int, n: int) -> None:
        # The first half moves before the cut (webhooks, projections hit the
        # outage); the second half starts inside it (uploads, documents).
        if i < (n + 1) // 2:
            await asyncio.sleep(0.0 if ctx.quick else 10.0 * i / max(1, n // 2))
        else:
            await self.cut_started.wait()
            await asyncio.sleep(1.0 + 0.1 * (i - n // 2))

    def skip_reason(self, ctx: Ctx) -> str | None:
        if not ctx.stack.use_postgres or ctx.stack.pg_proxy is None:
            return "no PostgreSQL at 127.0.0.1:5432 (DEALFLOW_CHAOS_POSTGRES_URL)"
        return None

    def script_for(self, plan: Plan) -> dict[str, Any] | None:
        # Lender answers a little later, so they land inside the outage.
        return {**(plan.script or {}), "decision_delay": 2.0}

    async def setup(self, ctx: Ctx, runs: list[DealRun]) -> None:
        self.cut_started = asyncio.Event()

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        try:
            await self._inject(ctx, runs, out)
        finally:
            self.cut_started.set()  # never leave the second half waiting

    async def _inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        proxy = ctx.stack.pg_proxy
        assert proxy is not None
        # Strike when deals are spread out: some collecting documents, some
        # waiting on a lender (webhooks need the inbox), some further on.
        first = runs[: (len(runs) + 1) // 2]
        await until(
            lambda: reached(first, Stage.UNDERWRITING) >= max(1, len(first) // 2),
            every=0.1,
            limit=30,
        )
        outage = self.outage(ctx)
        uploads_before = sum(r.upload_attempts for r in runs)
        hooks_before = (await ctx.http.get(f"{ctx.stack.sim_url}/_sim/outbox")).json()
        proxy.cut()
        self.cut_started.set()
        out.count += 1
        ctx.log(f"    PostgreSQL cut for {outage:.0f}s")
        moved: dict[str, Stage] = {}
        try:
            await asyncio.sleep(outage)
            uploads = sum(r.upload_attempts for r in runs) - uploads_before
            hooks = (await ctx.http.get(f"{ctx.stack.sim_url}/_sim/outbox")).json()
            # Evidence the outage bit: the read model (read directly, not through
            # the cut proxy) behind the workflows.
            for r in runs:
                if r.last_stage is not None:
                    moved[r.deal_id] = r.last_stage
            lagging = await asyncio.to_thread(self._lagging, ctx, moved)
        finally:
            proxy.restore()
        ctx.log(f"    PostgreSQL back; read model behind on {lagging} deals")
        out.note(
            f"1 PostgreSQL outage of {outage:.0f}s: {uploads} upload attempts and "
            f"{hooks['retried'] - hooks_before['retried']} webhooks retried during it; "
            f"read model behind on {lagging} of {len(moved)} deals when it ended"
        )

    @staticmethod
    def _lagging(ctx: Ctx, seen: dict[str, Stage]) -> int:
        n = 0
        for deal_id, stage in seen.items():
            row = db.get_deal(ctx.engine, deal_id)
            if row is None or row.stage != stage.value:
                n += 1
        return n


# --------------------------------------------------------------------------- 6. S3


class S3Down(Scenario):
    key = "s3-down"
    title = "S3 (moto) down during uploads"

    def outages(self, ctx: Ctx) -> list[tuple[float, float]]:
        """(start after, duration) in seconds from the scenario's start."""
        return [(0.0, 4.0)] if ctx.quick else [(0.0, 6.0), (14.0, 6.0)]

    def stagger(self, ctx: Ctx, n: int) -> float:
        return 0.0 if ctx.quick else 20.0

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        proxy = ctx.stack.s3_proxy
        assert proxy is not None
        t0 = time.monotonic()
        for start, duration in self.outages(ctx):
            await asyncio.sleep(max(0.0, t0 + start - time.monotonic()))
            proxy.cut()
            out.count += 1
            ctx.log(f"    S3 cut for {duration:.0f}s")
            try:
                await asyncio.sleep(duration)
            finally:
                proxy.restore()
        await finished(runs)
        refused = sum(len(r.upload_failures) for r in runs)
        out.note(f"{out.count} S3 outages; {refused} upload attempts refused, then retried")
        if refused == 0:
            out.problems.append("no upload was attempted while S3 was down")


# --------------------------------------------------------------------------- proof of the deadline


class Stranded(Scenario):
    """Strands one deal on purpose, to prove that a deal not closed by the
    deadline is reported, not waited on: a lender event encrypted with a key
    the worker does not hold (a key rotated on one side only) fails the deal's
    workflow task on every attempt. Not part of `all`; the test suite runs it."""

    key = "stranded"
    title = "one deal stranded on purpose (an event under an unknown key)"

    async def inject(self, ctx: Ctx, runs: list[DealRun], out: Strikes) -> None:
        victim = runs[0]
        if not await until(lambda: victim.last_stage is not None, limit=60):
            out.problems.append("the deal to strand never started")
            return
        robot_client = ctx.robot.client
        stranger = Client(
            robot_client.service_client,
            namespace=robot_client.namespace,
            data_converter=codec.data_converter(codec.generate_key_spec("chaos-unknown-key")),
        )
        handle = stranger.get_workflow_handle(deals.workflow_id(victim.deal_id))
        await handle.signal(names.LENDER_EVENT, {"webhook_id": "chaos-stranded"})
        out.count += 1
        out.note(f"{victim.deal_id}: lender event under an unknown key")
        await finished(runs)


SCENARIOS: list[Scenario] = [
    WorkerKill(),
    ServerKill(),
    ApiKill(),
    LenderFaults(),
    PostgresDown(),
    S3Down(),
]

# Selectable by name only.
EXTRA_SCENARIOS: list[Scenario] = [Stranded()]
