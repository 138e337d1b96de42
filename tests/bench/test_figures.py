"""bench/figures.py: latest.json's flat `figures` map built from the benchmarks' rows."""

from __future__ import annotations

import pytest

from bench.bench_stack import row
from bench.figures import FigureKeyError, figures


def test_keyed_rows_give_value_baseline_and_ratio_with_times_in_seconds() -> None:
    benchmarks = {
        "2": {
            "rows": [
                row("webhooks/s", 180.0, "/s", baseline=200.0, key="webhooks_per_s_vs_signal"),
                row("webhook p99", 31.5, "ms", baseline=24.5, key="webhook_p99_s"),
                row("unkeyed", 1.0, "", baseline=2.0),
            ]
        },
        "6": {"rows": [row("test suite wall time", 637.0, "s", key="test_suite_s")]},
        "10": {"rows": [row("no baseline", None, "ms", key="later_s")]},
    }

    got = figures(benchmarks)

    assert got == {
        "webhooks_per_s_vs_signal": 180.0,
        "webhooks_per_s_vs_signal_baseline": 200.0,
        "webhooks_per_s_vs_signal_ratio": 0.9,
        "webhook_p99_s": pytest.approx(0.0315),
        "webhook_p99_s_baseline": pytest.approx(0.0245),
        "webhook_p99_s_ratio": pytest.approx(31.5 / 24.5),
        "test_suite_s": 637.0,
        "test_suite_s_baseline": None,
        "later_s": None,
        "later_s_baseline": None,
    }
    assert list(got)[:3] == [
        "webhooks_per_s_vs_signal",
        "webhooks_per_s_vs_signal_baseline",
        "webhooks_per_s_vs_signal_ratio",
    ]


def test_a_key_used_twice_is_refused() -> None:
    benchmarks = {
        "1": {"rows": [row("a", 1.0, "/s", key="rate")]},
        "2": {"rows": [row("b", 2.0, "/s", key="rate")]},
    }

    with pytest.raises(FigureKeyError, match="'rate' is already used"):
        figures(benchmarks)


def test_a_seconds_key_on_a_figure_that_is_no_time_is_refused() -> None:
    benchmarks = {"1": {"rows": [row("deals/s", 4.0, "/s", key="deals_per_s")]}}

    with pytest.raises(FigureKeyError, match="unit is '/s'"):
        figures(benchmarks)


def test_a_failed_benchmark_without_keys_adds_nothing() -> None:
    assert figures({"3": {"rows": [row("error", None, note="boom")], "error": "boom"}}) == {}
