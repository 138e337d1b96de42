"""4. Audit replay: deal histories replayed the project's way vs. the SDK Replayer on floor
histories of the same length.

Deal histories are the complete deals of benchmark 1 (or, run alone, deals
driven here), exported in the `temporal workflow show --output json` format
and written N times over into a folder. The project's path is `dealflow-audit
replay FOLDER` (docs/architecture.md §3.6) when that command exists; until then it is the
SDK Replayer exactly as tests/histories/test_replay.py uses it (the row says which).
The baseline replays floor histories padded with no-op activities to the deal
histories' length, with the SDK Replayer and the default sandbox. Both run as
a fresh process over the whole folder (start-up included), in the order deal,
floor, floor, deal over two halves of the files.

    python -m bench.bench_replay replay --workflow deal|floor FOLDER   # one replay process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import floor
from bench.bench_driver import bounded
from bench.bench_stack import BenchStack, Ctx, mean, python, row, say
from dealflow import client as deals
from dealflow.progress import Board, progress_board


def audit_command(src: Path) -> list[str] | None:
    """The project's `audit replay` command (`dealflow-audit replay`), if it is there yet.
    Run as `python -m dealflow.audit` in `src`, so it is the code the stacks ran."""
    if not (src / "dealflow" / "audit" / "__main__.py").exists():
        return None
    cmd = [sys.executable, "-m", "dealflow.audit", "replay"]
    try:
        out = subprocess.run(
            [*cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=src, env=_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cmd if out.returncode == 0 else None


def write_folder(folder: Path, histories: list[Any], n: int) -> int:
    """`n` history files cycling over `histories`; returns the total number of events."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [(h.to_json(), len(h.events)) for h in histories]
    events = 0
    for i in range(n):
        text, count = texts[i % len(texts)]
        (folder / f"deal-{i:05d}.json").write_text(text, encoding="utf-8")
        events += count
    return events


def _env() -> dict[str, str]:
    # The stacks run with the development codec key (no DEALFLOW_*): so must the replay.
    return {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}


def timed(cmd: list[str], src: Path) -> tuple[float, str]:
    env = _env()
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=src, timeout=3600, env=env)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... exited {out.returncode}: {(out.stderr or out.stdout)[-2000:]}"
        )
    return wall, out.stdout


async def floor_histories_like(
    s: BenchStack, plan: floor.FloorPlan, target_len: float, count: int
) -> list[Any]:
    """Floor histories padded with no-op activities to about `target_len` events."""
    assert s.plain_client is not None
    client = s.plain_client  # the floor's client: no payload codec
    pad = 0
    for _ in range(5):
        wid = f"floor-probe-{uuid.uuid4().hex[:8]}"
        await floor.drive(client, "floor", wid, plan.padded(pad))
        length = len((await client.get_workflow_handle(wid).fetch_history()).events)
        if abs(length - target_len) <= 3:
            break
        pad = max(0, pad + round((target_len - length) / 4))
    final = plan.padded(pad)
    tag = uuid.uuid4().hex[:6]
    wids = await bounded(
        count, 10, lambda i: floor.drive(client, "floor", f"floor-{tag}-{i}", final)
    )
    return [await client.get_workflow_handle(w).fetch_history() for w in wids]


async def run(ctx: Ctx) -> dict[str, Any]:
    with progress_board() as board:
        return await run_on(ctx, board)


async def run_on(ctx: Ctx, board: Board) -> dict[str, Any]:
    n = ctx.n(1000, 20)
    deal_hists: list[Any] = list(ctx.shared.get("deal_histories") or [])
    plan: floor.FloorPlan | None = ctx.shared.get("floor_plan")
    async with ctx.stack("b4-replay") as s:
        assert s.client is not None
        s.ensure_extra(
            "floor_worker",
            [python(), "-m", "bench.floor", "worker", "--task-queue", "floor"],
            task_queue="floor",
        )
        if not deal_hists or plan is None:
            k = ctx.n(50, 2)
            say(f"[4] no deal histories from benchmark 1: driving {k} deals")
            driver = s.driver()
            ids = await bounded(
                k, 10, board.add("[4] deals driven", k).counted(lambda i: driver.full_deal())
            )
            deal_hists = [
                await s.client.get_workflow_handle(deals.workflow_id(d)).fetch_history()
                for d in ids
            ]
            plan = floor.plan_from_history(list(deal_hists[0].events))
        deal_len = mean(len(h.events) for h in deal_hists)
        say(f"[4] floor histories padded to ~{deal_len:.0f} events")
        floor_hists = await floor_histories_like(s, plan, deal_len, ctx.n(50, 2))
    floor_len = mean(len(h.events) for h in floor_hists)

    work = ctx.root / "b4-replay-files"
    shutil.rmtree(work, ignore_errors=True)
    # Two halves each, run deal, floor, floor, deal against drift (--quick: one each).
    # The baseline is a rate: half as many floor histories measure it well enough.
    nf = n if ctx.quick else n // 2
    sizes = {
        "deal": [n] if ctx.quick else [n // 2, n - n // 2],
        "floor": [nf] if ctx.quick else [nf // 2, nf - nf // 2],
    }
    order = (
        [("deal", 0), ("floor", 0)]
        if ctx.quick
        else [("deal", 0), ("floor", 0), ("floor", 1), ("deal", 1)]
    )
    folders = {}
    events = {}
    for name, hists in (("deal", deal_hists), ("floor", floor_hists)):
        for part, size in enumerate(sizes[name]):
            folders[(name, part)] = work / f"{name}-{part}"
            events[(name, part)] = write_folder(folders[(name, part)], hists, size)
    audit = audit_command(ctx.src)
    how = (
        "dealflow-audit replay (python -m dealflow.audit)"
        if audit
        else "SDK Replayer as tests/histories/test_replay.py (no `audit replay` yet)"
    )
    audit_error: str | None = None
    say(f"[4] replaying {n} deal histories ({how}) and {nf} floor histories")
    walls = {"deal": 0.0, "floor": 0.0}
    # Each part replays in a process of its own: the bar moves a part at a time.
    bar = board.add("[4] histories replayed", n + nf, "histories")
    for name, part in order:
        folder = str(folders[(name, part)])
        own = [python(), "-m", "bench.bench_replay", "replay", "--workflow", name, folder]
        try:
            wall, _ = await asyncio.to_thread(
                timed, [*audit, folder] if name == "deal" and audit else own, ctx.src
            )
        except RuntimeError as e:
            if not (name == "deal" and audit):
                raise
            # The project's command failed: say so, and measure the SDK path instead.
            audit_error = str(e)[-1500:]
            audit = None
            how = (
                "SDK Replayer as tests/histories/test_replay.py (`audit replay` FAILED, see detail)"
            )
            say(f"[4] `audit replay` failed; using the SDK Replayer: {audit_error[-200:]}")
            wall, _ = await asyncio.to_thread(timed, own, ctx.src)
        walls[name] += wall
        bar.advance(sizes[name][part])
        say(f"[4]   {name} part {part}: {sizes[name][part] / wall:.1f} histories/s")
    shutil.rmtree(work, ignore_errors=True)

    d_hps, f_hps = n / walls["deal"], nf / walls["floor"]
    d_eps = sum(v for (k, _), v in events.items() if k == "deal") / walls["deal"]
    f_eps = sum(v for (k, _), v in events.items() if k == "floor") / walls["floor"]
    rows = [
        row(
            "replay histories/s",
            d_hps,
            "/s",
            baseline=f_hps,
            target=">= 0.9x floor",
            ok=ctx.judge(d_hps >= 0.9 * f_hps),
            note=how,
            key="audit_replay_vs_replayer",
        ),
        row(
            "replay events/s",
            d_eps,
            "/s",
            baseline=f_eps,
            target=">= 0.9x floor",
            ok=ctx.judge(d_eps >= 0.9 * f_eps),
            key="audit_replay_events_vs_replayer",
            note=f"{deal_len:.0f} vs {floor_len:.0f} events per history",
        ),
    ]
    return {
        "rows": rows,
        "detail": {
            "histories": n,
            "floor_histories": nf,
            "distinct_deal_histories": len(deal_hists),
            "deal_events_mean": deal_len,
            "floor_events_mean": floor_len,
            "path": how,
            "deal_wall_s": walls["deal"],
            "audit_replay_error": audit_error,
            "floor_wall_s": walls["floor"],
        },
    }


# --------------------------------------------------------------------------- replay process


async def replay_folder(workflow_name: str, folder: Path) -> dict[str, Any]:
    from temporalio.client import WorkflowHistory
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    if workflow_name == "deal":
        from dealflow.config import Settings
        from workflows import WORKFLOW_RUNNER, DealWorkflow

        converter = pydantic_data_converter
        # Deal payloads are encrypted (docs/architecture.md §3.6): the project's
        # converter decodes them.
        try:
            from dealflow.codec import data_converter_for

            converter = data_converter_for(Settings())
        except ImportError:
            pass
        replayer = Replayer(
            workflows=[DealWorkflow], data_converter=converter, workflow_runner=WORKFLOW_RUNNER
        )
    else:
        replayer = Replayer(
            workflows=[floor.FloorWorkflow],
            data_converter=pydantic_data_converter,
            workflow_runner=SandboxedWorkflowRunner(),
        )
    t0 = time.monotonic()
    count = {"histories": 0, "events": 0}

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for p in sorted(folder.glob("*.json")):  # noqa: ASYNC240 (a replay process)
            h = WorkflowHistory.from_json(f"wf-{p.stem}", json.loads(p.read_text("utf-8")))
            count["histories"] += 1
            count["events"] += len(h.events)
            yield h

    failures: list[str] = []
    async with replayer.workflow_replay_iterator(histories()) as results:
        async for result in results:
            if result.replay_failure is not None:
                failures.append(str(result.replay_failure))
    return {
        **count,
        "seconds": time.monotonic() - t0,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_replay")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay", help="replay every *.json history of a folder")
    r.add_argument("--workflow", choices=("deal", "floor"), required=True)
    r.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    out = asyncio.run(replay_folder(args.workflow, args.folder))
    print(json.dumps(out))
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
