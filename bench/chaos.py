"""`make chaos`: deals through the embedded stack while a fault injector strikes.

    python -m bench.chaos [--deals 60] [--scenarios all|name,...] [--quick] [--keep]

Starts its own stack (Temporal dev server on a SQLite file, lender simulator,
API, worker: separate real processes on free ports, own tmp data dir; the read
model in a dedicated PostgreSQL database behind a cuttable proxy, documents in
a moto S3 behind another), then for each scenario drives a population of deals
(a mix: approved, declined then approved by the next lender, cancelled after
the down payment, plus scenario-specific ones) while the scenario's faults
strike:

  worker-kill     the worker killed with kill -9 >= 10 times, half of them
                  while a lender call is in flight
  server-kill     the Temporal dev server killed with kill -9 and restarted on
                  the same SQLite file >= 3 times
  api-kill        the API killed during webhook bursts (the simulator retries)
  lender-faults   the lender answering 500 (before and after processing),
                  timing out, answering slowly, and refusing with a 4xx (the
                  deal must escalate and move on, never retry the refusal)
  postgres-down   PostgreSQL unreachable for 30 s while deals move
  s3-down         S3 down during uploads (clear error, nothing recorded,
                  the retry succeeds)

Each scenario ends with a check against the truth (`bench/chaos_check.py`) and
one table row; the exit status is 1 if any deal was lost, any side effect
duplicated, any read-model row mismatched, or any other promise broken.
`--quick` (used by `make test`): 6 deals per scenario and fewer faults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench.chaos_check import Verdict, check_deal
from bench.chaos_robot import DealRun, Robot, plan_mix
from bench.chaos_scenarios import EXTRA_SCENARIOS, SCENARIOS, Ctx, Scenario, Strikes
from bench.chaos_stack import ChaosStack
from dealflow import client as deals
from dealflow import stuck
from dealflow.progress import Board, progress_board
from dealflow.storage import db
from dealflow.storage.documents import store_from_settings
from workflows.deal import DEAL_STAGE

console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)

QUICK_DEALS = 6
# How long past the deadline an injector or a driver may take to stop.
GRACE_SECONDS = 120.0


@dataclass
class Row:
    scenario: Scenario
    strikes: Strikes = field(default_factory=Strikes)
    verdict: Verdict = field(default_factory=Verdict)
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def other(self) -> int:
        return self.verdict.count("unexpected") + len(self.strikes.problems)

    @property
    def failed(self) -> bool:
        if self.skipped:
            return False
        v = self.verdict
        return bool(
            v.count("lost")
            or v.count("duplicate")
            or v.count("mismatch")
            or self.other
            or v.as_expected != v.deals
        )


def log(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")


async def run_scenario(ctx: Ctx, sc: Scenario, n: int, limit: float, board: Board) -> Row:
    row = Row(sc)
    why = sc.skip_reason(ctx)
    if why:
        row.skipped = why
        log(f"[yellow]{sc.key}: skipped: {why}[/]")
        return row
    t0 = time.monotonic()
    runs = [DealRun(deals.new_deal_id(), plan) for plan in plan_mix(n, sc.extra_plans)]
    log(f"[bold]{sc.key}[/]: {sc.title}; {n} deals")
    finished = board.add(f"{sc.key}: deals finished", len(runs))
    for r in runs:
        script = sc.script_for(r.plan)
        if script is not None:
            resp = await ctx.http.put(f"{ctx.stack.sim_url}/_sim/scripts/{r.deal_id}", json=script)
            resp.raise_for_status()
    await sc.setup(ctx, runs)
    ctx.robot.deadline = time.monotonic() + limit

    async def drive(i: int, run: DealRun) -> None:
        await sc.before_start(ctx, i, n)
        await ctx.robot.drive(run)
        state = run.final.stage.value if run.final else f"ERROR {run.error}"
        log(f"    {run.deal_id} {run.plan.name}: {state}")
        finished.advance()

    drivers = asyncio.gather(*(drive(i, r) for i, r in enumerate(runs)))
    strikes = Strikes()
    try:
        await asyncio.wait_for(sc.inject(ctx, runs, strikes), limit + GRACE_SECONDS)
    except Exception as e:
        strikes.problems.append(f"injector failed: {type(e).__name__}: {e}")
        log(f"[red]{sc.key}: injector failed: {e!r}[/]")
    try:
        # The robot gives up at the deadline; this only guards against a driver
        # that would not, so a scenario can never hang the run.
        await asyncio.wait_for(
            drivers, max(1.0, ctx.robot.deadline - time.monotonic()) + GRACE_SECONDS
        )
    except TimeoutError:
        for r in runs:
            if r.final is None and r.error is None:
                r.error = "the driver did not stop at the deadline"
    await mark_stranded(ctx, runs)
    row.strikes = strikes
    await settle(ctx, runs)
    row.verdict = await check(ctx, runs)
    with contextlib.suppress(httpx.HTTPError):
        await ctx.http.delete(f"{ctx.stack.sim_url}/_sim/faults")
    row.seconds = time.monotonic() - t0
    return row


async def mark_stranded(ctx: Ctx, runs: list[DealRun]) -> None:
    """Name each deal not closed by the deadline: its stage and last history event."""
    for r in runs:
        if r.final is not None:
            continue
        try:
            health = await stuck.deal_health(ctx.robot.client, r.deal_id)
            desc = await ctx.robot.client.get_workflow_handle(
                deals.workflow_id(r.deal_id)
            ).describe()
            stage = desc.typed_search_attributes.get(DEAL_STAGE) or r.last_stage
            r.stranded = (
                f"stage {stage}, last event {health.last_event or '?'}"
                + (f", workflow task attempt {health.attempts}" if health.attempts else "")
                + (
                    " (stuck: " + (health.message or health.cause or "") + ")"
                    if health.stuck
                    else ""
                )
            )
        except Exception as e:  # noqa: BLE001 - a report line, never a crash of the run
            r.stranded = f"last seen in {r.last_stage}; Temporal could not be asked: {e}"
        log(f"[red]    stranded {r.deal_id} ({r.plan.name}): {r.stranded}[/]")


async def settle(ctx: Ctx, runs: list[DealRun], limit: float = 90.0) -> None:
    """Wait until the simulator has nothing left to deliver for these deals."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        pending = 0
        for r in runs:
            snap = (
                await ctx.http.get(
                    f"{ctx.stack.sim_url}/_sim/ledger", params={"deal_id": r.deal_id}
                )
            ).json()
            pending += sum(1 for h in snap["webhooks"] if h["status"] == "pending")
        if not pending:
            return
        await asyncio.sleep(1.0)


async def inbox_settled(ctx: Ctx, wait_seconds: float = 30.0) -> None:
    """Wait for the API's redelivery pass: a webhook stored just before the API
    was killed stays "received" until the restarted API delivers it (it only
    touches rows a few seconds old, so a live request is never raced)."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        cutoff = datetime.now(UTC) + timedelta(seconds=60)
        waiting = await asyncio.to_thread(db.pending_webhooks, ctx.engine, cutoff, 1)
        if not waiting:
            return
        await asyncio.sleep(1.0)


async def check(ctx: Ctx, runs: list[DealRun]) -> Verdict:
    v = Verdict(deals=len(runs))
    await inbox_settled(ctx)
    for r in runs:
        ledger = (
            await ctx.http.get(f"{ctx.stack.sim_url}/_sim/ledger", params={"deal_id": r.deal_id})
        ).json()
        traffic = (
            await ctx.http.get(f"{ctx.stack.sim_url}/_sim/faults", params={"deal_id": r.deal_id})
        ).json()["traffic"]
        await asyncio.to_thread(check_deal, v, r, ledger, ctx.engine, traffic)
    return v


def print_table(rows: list[Row], title: str) -> None:
    table = Table(title=title, show_lines=False)
    for col in (
        "scenario",
        "faults injected",
        "deals",
        "completed as expected",
        "lost",
        "duplicated side effects",
        "read-model mismatches",
        "other failures",
        "time",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for row in rows:
        if row.skipped:
            table.add_row(
                row.scenario.key, "-", "-", "-", "-", "-", "-", "-", f"skipped: {row.skipped}"
            )
            continue
        v = row.verdict

        def num(x: int, bad: bool = True) -> str:
            return f"[red]{x}[/]" if x and bad else str(x)

        table.add_row(
            row.scenario.key,
            str(row.strikes.count),
            str(v.deals),
            f"[{'green' if v.as_expected == v.deals else 'red'}]{v.as_expected}[/]",
            num(v.count("lost")),
            num(v.count("duplicate")),
            num(v.count("mismatch")),
            num(row.other),
            f"{row.seconds:.0f}s",
        )
    console.print(table)
    for row in rows:
        if row.skipped:
            continue
        for d in row.strikes.detail:
            console.print(f"  {row.scenario.key}: {d}")
    for row in rows:
        for p in row.strikes.problems:
            console.print(f"  [red]{row.scenario.key}: {p}[/]")
        for f in row.verdict.findings:
            console.print(f"  [red]{row.scenario.key}: {f.deal_id} {f.category}: {f.text}[/]")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--deals", type=int, default=None, help="deals per scenario (default 60; 6 with --quick)"
    )
    p.add_argument(
        "--scenarios",
        default="all",
        help="all, or a comma-separated list of: "
        + ", ".join(s.key for s in SCENARIOS + EXTRA_SCENARIOS),
    )
    p.add_argument("--quick", action="store_true", help="reduced size for `make test`")
    p.add_argument(
        "--kills",
        type=int,
        default=None,
        help="kills per kill scenario (default: worker-kill 10, server-kill 4, api-kill 4)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds a scenario's deals may take (default 240 quick, 900 full)",
    )
    p.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    p.add_argument(
        "--no-postgres", action="store_true", help="read model on SQLite; skips postgres-down"
    )
    args = p.parse_args(argv)
    if args.scenarios == "all":
        args.selected = list(SCENARIOS)
    else:
        names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        known = {s.key: s for s in SCENARIOS + EXTRA_SCENARIOS}
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
        args.selected = [known[n] for n in names]
    if args.deals is None:
        args.deals = QUICK_DEALS if args.quick else 60
    if args.deals < 1:
        p.error("--deals must be at least 1")
    if args.timeout is None:
        args.timeout = 240.0 if args.quick else 900.0
    return args


async def amain(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = Path(tempfile.mkdtemp(prefix="dealflow-chaos-"))
    stack = ChaosStack(work, use_postgres=not args.no_postgres, log=log)
    rows: list[Row] = []
    started = time.monotonic()
    ok = False
    try:
        log(f"chaos: seed {seed}, data dir {work}")
        await asyncio.to_thread(stack.prepare)
        await asyncio.to_thread(stack.up)
        settings = stack.settings()
        quiet_sdk_logs()
        client = await deals.connect(settings)
        store = store_from_settings(settings)
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            upload_api = await documents_endpoint(http, stack.api_url)
            robot = Robot(
                client,
                store,
                dict(stack.lenders()),
                settings.task_queue,
                api_url=stack.api_url if upload_api else None,
                jwt_secret=settings.jwt_secret,
                log=log,
            )
            log(
                "uploads: "
                + (
                    "POST /api/deals/{id}/documents"
                    if upload_api
                    else "dealflow.uploads.upload_document (the API has no documents endpoint yet)"
                )
            )
            ctx = Ctx(
                stack=stack,
                robot=robot,
                http=http,
                engine=db.make_engine(stack.direct_database_url),
                quick=args.quick,
                rng=random.Random(seed),
                log=log,
                kills=args.kills,
            )
            with progress_board() as board:
                for sc in args.selected:
                    rows.append(await run_scenario(ctx, sc, args.deals, args.timeout, board))
            await robot.aclose()
        total = time.monotonic() - started
        title = (
            f"DealFlow chaos ({'quick' if args.quick else 'full'}, seed {seed}, "
            f"{total:.0f}s, read model on "
            f"{'PostgreSQL' if stack.use_postgres else 'SQLite'})"
        )
        print_table(rows, title)
        ok = not any(r.failed for r in rows)
        console.print(
            f"[{'green' if ok else 'red'}]chaos: {'PASS' if ok else 'FAIL'}[/] "
            f"in {total:.0f}s; {robot.actions} staff actions, "
            f"{robot.retries} transport retries by the back office, "
            f"{robot.unconfirmed} uploads answered 'not confirmed yet'"
        )
    finally:
        await asyncio.to_thread(stack.down)
        if ok and not args.keep:
            stack.remove_files()
        else:
            console.print(f"logs and data kept in {work}")
    return 0 if ok else 1


def quiet_sdk_logs() -> None:
    """The driver's client retries through every outage on purpose: keep the SDK
    core's retry warnings off the console (errors still show)."""
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    Runtime.set_default(
        Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")
                )
            )
        ),
        error_if_already_set=False,
    )


async def documents_endpoint(http: httpx.AsyncClient, api_url: str) -> bool:
    try:
        spec = (await http.get(f"{api_url}/openapi.json")).json()
    except (httpx.HTTPError, ValueError):
        return False
    return "post" in spec.get("paths", {}).get("/api/deals/{deal_id}/documents", {})


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(amain(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
