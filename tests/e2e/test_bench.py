"""`make bench` harness, end to end at tiny sizes (`python -m bench.run --quick`).

Every benchmark runs against real processes (dev server with SQLite file, worker,
API, lender simulator, the floor worker), on free ports in a tmp data dir. The
figures are not judged at this size; the test proves each benchmark produces
its figures, and that the correctness checks inside them hold (no webhook lost,
doubly applied or forged; no spurious retries with the recovery settings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_bench_quick_runs_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--out",
            str(out),
            "--scratch",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True
    benches = report["benchmarks"]
    assert sorted(benches) == ["1", "2", "3", "4", "5", "6", "7"]
    for num, res in benches.items():
        assert "error" not in res, f"benchmark {num}: {res.get('error')}"

    def fig(num: str, name: str) -> dict[str, object]:
        return next(r for r in benches[num]["rows"] if r["figure"] == name)

    # Each figure measured, with its baseline from the same run.
    for num, name in [
        ("1", "deals/s"),
        ("1", "history events per deal"),
        ("1", "server CPU per deal"),
        ("1", "worker CPU per deal"),
        ("2", "webhooks/s"),
        ("2", "webhook p99"),
        ("3", "action p99 after restart"),
        ("4", "replay histories/s"),
        ("4", "replay events/s"),
        ("7", "deals list p95, 300 deals"),
        ("7", "deal page p95, 3 deals"),
    ]:
        r = fig(num, name)
        assert isinstance(r["value"], int | float) and r["value"] > 0, (num, r)
        assert isinstance(r["baseline"], int | float) and r["baseline"] > 0, (num, r)
    # Benchmark 1's chart data, and its DBOS peer: a value, or why there is none.
    series = benches["1"]["series"]
    assert set(series["throughput"]) == {"deal", "floor", "floor_mix", "dbos"}
    assert [p["workers"] for p in series["scaling"]] == [1, 2]
    growth = series["history_growth"]
    assert len(growth) == 2 and growth[1]["events"] > growth[0]["events"] > 0
    dbos = fig("1", "deals/s vs DBOS floor")
    assert dbos["value"] is not None or "unreachable" in str(dbos["note"]), dbos
    rss = fig("3", "worker RSS, parked deals")["value"]
    assert isinstance(rss, int | float) and rss > 0
    # Both recovery layouts measured, the two-worker takeover included, with a timeline.
    for name in (
        "recovery, one worker killed and restarted",
        "recovery, one of two workers killed",
    ):
        assert fig("5", name)["value"] is not None, fig("5", name)
    timelines = benches["5"]["series"]["recovery"]
    for layout in ("single", "one_of_two"):
        phases = {p["phase"]: p["at_s"] for p in timelines[layout]}
        assert 0 < phases["lender calls completed"] <= phases["all progressed"], phases
    assert benches["5"]["detail"]["one_of_two"]["lender_calls_on_killed_worker"] >= 1
    # Correctness inside the benchmarks holds even at this size.
    assert fig("2", "lost / doubly applied / forged applied")["met"] is True
    assert fig("1", "activity retries in normal run")["met"] is True
    assert fig("5", "spurious retries after recovery, normal run")["met"] is True
    # The table is printed.
    assert "DealFlow benchmarks" in proc.stdout
    assert_figures_map(report)
    # The charts beside the results file, each drawn or skipped with a reason.
    for name in ("throughput", "scaling", "recovery", "latency"):
        svg = tmp_path / f"{name}.svg"
        assert svg.exists() or f"charts: skipped {name}.svg" in proc.stdout, name
        if svg.exists():
            assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert (tmp_path / "latency.svg").exists()  # benchmark 2's webhook latencies


def assert_figures_map(report: dict[str, Any]) -> None:
    """latest.json's flat `figures`: each keyed row's value, baseline and ratio by key,
    every ratio under a key ending in `_ratio`, times (keys ending in `_s`) in seconds."""
    figures = report["figures"]
    rows = [r for res in report["benchmarks"].values() for r in res["rows"] if r["key"]]
    for r in rows:
        assert r["key"] in figures and f"{r['key']}_baseline" in figures, r
        if r["ratio"] is not None:
            assert figures[f"{r['key']}_ratio"] == r["ratio"], r
    assert not any(r["key"].endswith(("_ratio", "_baseline")) for r in rows)
    for key in (
        "webhooks_per_s_vs_signal",
        "webhook_p99_s",
        "worker_rss_parked_mb",
        "parked_action_p99_s",
        "audit_replay_vs_replayer",
        "desk_list_p95_s",
        "desk_page_p95_s",
    ):
        assert isinstance(figures[key], int | float) and figures[key] > 0, key
        assert isinstance(figures[f"{key}_ratio"], float), key
    assert "test_suite_s" in figures  # not measured under --quick
    p99 = next(r for r in report["benchmarks"]["2"]["rows"] if r["key"] == "webhook_p99_s")
    assert p99["unit"] == "ms"
    assert figures["webhook_p99_s"] == pytest.approx(p99["value"] / 1000)
