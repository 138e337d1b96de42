"""bench/charts.py: the SVG charts `make bench` writes, from a fixed results dict."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench.charts import CHARTS, write_charts

SVG = "{http://www.w3.org/2000/svg}"

RESULTS: dict[str, Any] = {
    "started_at": "2026-12-02T15:00:00+00:00",
    "quick": False,
    "machine": {"cpus": 2},
    "benchmarks": {
        "1": {
            "rows": [],
            "series": {
                "throughput": {"deal": 4.41, "floor": 3.86, "floor_mix": 11.7, "dbos": 7.83},
                "scaling": [
                    {"workers": 1, "deals_per_s": 4.41, "cpu_ms_per_deal": 212.0},
                    {"workers": 2, "deals_per_s": 6.12, "cpu_ms_per_deal": 231.0},
                    {"workers": 4, "deals_per_s": 6.55, "cpu_ms_per_deal": 267.0},
                ],
                "history_growth": [
                    {"events": 60, "bytes": 41_000, "replay_s": 0.021},
                    {"events": 2_000, "bytes": 1_350_000, "replay_s": 0.48},
                    {"events": 10_000, "bytes": 6_900_000, "replay_s": 2.37},
                ],
                "latency_ms": {
                    "deal": {"p50": 41.0, "p90": 88.0, "p99": 173.0},
                    "floor": {"p50": 35.0, "p90": 71.0, "p99": 149.0},
                },
            },
        },
        "2": {
            "rows": [],
            "detail": {
                "webhook": {"p50_ms": 12.5, "p90_ms": 19.25, "p99_ms": 31.75},
                "raw": {"p50_ms": 9.5, "p90_ms": 15.0, "p99_ms": 24.5},
            },
        },
        "5": {
            "rows": [],
            "series": {
                "recovery": {
                    "single": [
                        {"phase": "killed", "at_s": 0.0},
                        {"phase": "worker up", "at_s": 1.35},
                        {"phase": "first task", "at_s": 2.2},
                        {"phase": "all progressed", "at_s": 4.65},
                    ],
                    "one_of_two": [
                        {"phase": "killed", "at_s": 0.0},
                        {"phase": "survivor polls", "at_s": 0.4},
                        {"phase": "all progressed", "at_s": 2.85},
                    ],
                }
            },
        },
    },
}


def texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_every_chart_is_written_and_shows_its_values(tmp_path: Path) -> None:
    said = write_charts(RESULTS, tmp_path)

    assert said == [f"wrote {tmp_path / name}.svg" for name in CHARTS]
    throughput = texts(tmp_path / "throughput.svg")
    for value in ("4.41/s", "3.86/s", "11.7/s", "7.83/s", "1.14x reference"):
        assert value in throughput
    assert {"DealFlow", "floor (reference)", "floor (deal's mix)", "DBOS floor"} <= set(throughput)
    assert "deals per second" in throughput
    scaling = texts(tmp_path / "scaling.svg")
    for value in ("6.12/s", "267 ms", "2,370 ms", "6,900 KB", "worker processes"):
        assert value in scaling
    recovery = texts(tmp_path / "recovery.svg")
    for value in ("all progressed 4.65 s", "all progressed 2.85 s", "target 5 s", "target 3 s"):
        assert value in recovery
    assert "seconds since the kill" in recovery
    latency = texts(tmp_path / "latency.svg")
    for value in ("173 ms", "149 ms", "41.0 ms", "31.8 ms", "9.50 ms", "p50", "p90", "p99"):
        assert value in latency


def test_a_chart_without_data_is_skipped_with_a_reason(tmp_path: Path) -> None:
    only_webhooks = {"benchmarks": {"2": RESULTS["benchmarks"]["2"]}}

    said = write_charts(only_webhooks, tmp_path, suffix="-quick")

    assert said[0].startswith("skipped throughput-quick.svg: no series 'throughput'")
    assert said[1].startswith("skipped scaling-quick.svg")
    assert said[2].startswith("skipped recovery-quick.svg")
    assert said[3] == f"wrote {tmp_path / 'latency-quick.svg'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency-quick.svg"]
    assert "webhook via the API" in texts(tmp_path / "latency-quick.svg")


def test_malformed_data_skips_that_chart_only(tmp_path: Path) -> None:
    broken = copy.deepcopy(RESULTS)
    broken["benchmarks"]["5"]["series"]["recovery"]["single"] = [{"at_s": 1.0}]

    said = write_charts(broken, tmp_path)

    assert said[2].startswith("skipped recovery.svg: unexpected data (KeyError")
    assert (tmp_path / "throughput.svg").exists() and not (tmp_path / "recovery.svg").exists()


def test_values_are_escaped_as_xml(tmp_path: Path) -> None:
    odd = copy.deepcopy(RESULTS)
    odd["benchmarks"]["5"]["series"]["recovery"]["single"][1]["phase"] = "<up> & running"

    write_charts(odd, tmp_path)

    assert "<up> & running 1.35 s" in texts(tmp_path / "recovery.svg")
