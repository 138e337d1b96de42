"""`make bench`: DealFlow's benchmarks, each figure against a baseline measured in the same run.

    python -m bench.run [--only 1,3] [--quick] [--keep] [--test-log FILE] [--strict]

1 throughput        deals through every stage vs. the floor workflow
2 webhook ingest    signed webhooks through the API vs. raw client.signal
3 parked deals      10,000 deals in multi-week timers: memory, idle CPU, actions after restart
4 audit replay      deal histories replayed vs. the SDK Replayer on floor histories
5 recovery          worker kill -9 with lender calls in flight: seconds until all progress
6 test suite        wall time of the whole suite
7 desk pages        server time p95 of desk pages vs. the JSON routes (10,000 deals)

Every benchmark starts its own stack (dev server with SQLite file, worker, API,
lender simulator) in a scratch data dir on free ports, never on the default
ports. Prints a table and writes bench/results/latest.json (--quick:
latest-quick.json) with a flat `figures` map of the keyed rows, and SVG
charts beside it (bench/charts.py; --quick without --out: NAME-quick.svg).
--quick runs tiny sizes to prove the harness end to end
(tests/e2e/test_bench.py); its figures are not judged against the targets.
Exit status: 1 if a benchmark failed to run; with --strict, 2 if a target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import (
    bench_desk,
    bench_parked,
    bench_recovery,
    bench_replay,
    bench_tests,
    bench_throughput,
    bench_webhooks,
)
from bench.bench_stack import Ctx, row
from bench.charts import write_charts
from bench.figures import FigureKeyError, figures

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".data",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.egg-info",
    "results",
    "docker",
)


def snapshot(dst: Path) -> Path:
    """A copy of the source tree for the stacks to run. The worker re-imports
    workflows/deal.py from disk for every new workflow run (the SDK sandbox), so
    without a frozen copy an edit made during a long benchmark would mix versions."""
    shutil.copytree(ROOT, dst, ignore=SNAPSHOT_IGNORE, symlinks=True)
    return dst


BENCHES: dict[int, tuple[str, Any]] = {
    1: ("throughput", bench_throughput),
    2: ("webhook ingest", bench_webhooks),
    3: ("parked deals", bench_parked),
    4: ("audit replay", bench_replay),
    5: ("recovery after kill -9", bench_recovery),
    6: ("test suite", bench_tests),
    7: ("desk pages", bench_desk),
}
# 1 before 4 (4 replays 1's deals); the long ones last.
ORDER = [1, 2, 4, 5, 7, 3, 6]


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        text = f"{v:,}"
    elif abs(v) >= 100:
        text = f"{v:,.0f}"
    elif abs(v) >= 10:
        text = f"{v:.1f}"
    else:
        text = f"{v:.2f}"
    return f"{text} {unit}".strip() if unit and unit != "/s" else text + (unit or "")


def table(results: dict[str, Any], quick: bool) -> Table:
    t = Table(
        title="DealFlow benchmarks" + (" (--quick: harness check, not judged)" if quick else ""),
        show_lines=False,
    )
    for col in ("#", "benchmark", "figure", "DealFlow", "baseline", "ratio", "target", "met"):
        t.add_column(col, justify="right" if col in ("DealFlow", "baseline", "ratio") else "left")
    for num in ORDER:
        res = results.get(str(num))
        if res is None:
            continue
        for i, r in enumerate(res["rows"]):
            met = r["met"]
            mark = "-" if met is None else ("[green]yes[/]" if met else "[red]NO[/]")
            t.add_row(
                str(num) if i == 0 else "",
                res["name"] if i == 0 else "",
                r["figure"],
                fmt(r["value"], r["unit"]),
                fmt(r["baseline"], r["unit"]),
                "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                r["target"],
                mark,
            )
    return t


async def main_async(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    only = [int(x) for x in args.only.split(",") if x.strip()] if args.only else ORDER
    unknown = [n for n in only if n not in BENCHES]
    if unknown:
        console.print(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHES)}")
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="dealflow-bench-", dir=args.scratch))
    RESULTS.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(root=scratch, results_dir=RESULTS, quick=args.quick, profile=args.profile)
    if not args.live:
        ctx.src = snapshot(scratch / "src")
    if args.test_log:
        ctx.shared["test_log"] = args.test_log
    out_path = (
        Path(args.out)
        if args.out
        else RESULTS / ("latest-quick.json" if args.quick else "latest.json")
    )
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "code": str(ctx.src),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "benchmarks": {},
        "figures": {},
    }
    errors = 0
    started = time.monotonic()
    try:
        for num in [n for n in ORDER if n in only]:
            name, module = BENCHES[num]
            console.print(f"[bold]== {num}. {name}[/]")
            t0 = time.monotonic()
            try:
                res = await module.run(ctx)
            except Exception as e:
                errors += 1
                traceback.print_exc()
                res = {
                    "rows": [row("error", None, note=f"{type(e).__name__}: {e}"[:300])],
                    "error": f"{type(e).__name__}: {e}",
                }
            res["name"] = name
            res["seconds"] = round(time.monotonic() - t0, 1)
            report["benchmarks"][str(num)] = res
            try:
                report["figures"] = figures(report["benchmarks"])
            except FigureKeyError as e:
                # A row's key is wrong: said and counted, but the run and what it measured go on.
                errors += 1
                report["figures_error"] = str(e)
                console.print(f"[red]figures map: {e}[/]")
            console.print(f"   {num}. {name}: {res['seconds']:.0f}s")
            # Written after every benchmark: a long run interrupted keeps what it measured.
            out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    finally:
        await ctx.aclose()
        if args.keep:
            console.print(f"scratch data kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    console.print(table(report["benchmarks"], args.quick))
    # A --quick run without --out keeps its charts apart from the full run's (the README's).
    suffix = "-quick" if args.quick and not args.out else ""
    for line in write_charts(report, out_path.parent, suffix):
        console.print(f"charts: {line}", highlight=False, soft_wrap=True)
    missed = [
        f"{num}: {r['figure']}"
        for num, res in report["benchmarks"].items()
        for r in res["rows"]
        if r["met"] is False
    ]
    console.print(
        f"{len(report['benchmarks'])} benchmark(s) in {report['seconds']:.0f}s; "
        f"results in {out_path}"
    )
    if missed:
        console.print(
            "targets missed: "
            + "; ".join(missed)
            + " (causes and fixes: README, 'Reliability and performance')"
        )
    if errors:
        return 1
    return 2 if missed and args.strict else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--only", help="comma-separated benchmark numbers, e.g. 1,3")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: prove the harness works")
    ap.add_argument("--keep", action="store_true", help="keep the scratch data dirs")
    ap.add_argument("--scratch", default=None, help="parent dir of the scratch data (tmp)")
    ap.add_argument("--out", default=None, help="results file (default bench/results/latest.json)")
    ap.add_argument(
        "--test-log",
        default=None,
        help="benchmark 6: read the time from this saved `make test` output",
    )
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    ap.add_argument(
        "--live",
        action="store_true",
        help="run the stacks on the working tree, not on a snapshot of it",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the workers and the API during benchmarks 1 and 2 (bench/results/profiles/)",
    )
    args = ap.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
