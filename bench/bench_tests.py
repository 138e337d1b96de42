"""6. Test-suite time: the whole `make test` suite, timed.

Runs `pytest -q -n auto --dist worksteal` once (as `make test` does: one
process per core) and reports its wall time and
outcome; or, with `--test-log FILE`, reads the time from a saved `make test`
output ("test suite wall time: N s"). Not run under --quick: that mode itself
runs inside the suite (tests/e2e/test_bench.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_stack import Ctx, row, say

ROOT = Path(__file__).resolve().parent.parent
SUITE_KEY = "test_suite_s"
SUMMARY = re.compile(r"=* ?(.*\b(?:passed|failed|error|errors)\b.*?) in [\d.]+s")


def from_log(path: Path) -> tuple[float | None, str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.findall(r"test suite wall time: ([\d.]+)s", text)
    s = SUMMARY.findall(text)
    return (float(m[-1]) if m else None), (s[-1] if s else "")


def run_suite(log: Path) -> tuple[float, str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
    t0 = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        rc = subprocess.run(
            [
                str(Path(sys.executable).parent / "pytest"),
                *("-q", "-p", "no:cacheprovider", "-n", "auto", "--dist", "worksteal"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=3600,
        ).returncode
    wall = time.monotonic() - t0
    found = SUMMARY.findall(log.read_text(encoding="utf-8", errors="replace"))
    return wall, (found[-1] if found else f"exit status {rc}"), rc


async def run(ctx: Ctx) -> dict[str, Any]:
    saved = ctx.shared.get("test_log")
    if saved:
        wall, summary = from_log(Path(saved))
        return {
            "rows": [
                row(
                    "test suite wall time",
                    wall,
                    "s",
                    note=f"from {saved}: {summary}",
                    key=SUITE_KEY,
                )
            ],
            "detail": {"source": str(saved), "summary": summary},
        }
    if ctx.quick:
        return {
            "rows": [
                row(
                    "test suite wall time",
                    None,
                    "s",
                    note="not run with --quick (it runs inside the suite)",
                    key=SUITE_KEY,
                )
            ],
            "detail": {"skipped": "quick"},
        }
    log = ctx.results_dir / "pytest.log"
    say(f"[6] running the test suite (pytest -q -n auto), output in {log}")
    wall, summary, rc = await asyncio.to_thread(run_suite, log)
    return {
        # A time, not a target: the outcome is reported beside it (the suite is judged by
        # `make test`, not here).
        "rows": [
            row(
                "test suite wall time",
                wall,
                "s",
                note=f"pytest -q -n auto: {summary}",
                key=SUITE_KEY,
            )
        ],
        "detail": {"summary": summary, "exit_status": rc, "log": str(log)},
    }
