"""The Grafana dashboard's structure and the PromQL reading behind its check
against real scrapes (tests/e2e/test_e2e.py scrapes a worker and an API that
ran the demo's deals and finds every metric the dashboard queries)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dealflow import names
from tests.support import dashboard as dash

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge"}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dash.load()


# --------------------------------------------------------------------------- PromQL reading


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        ("up", {"up"}),
        ("rate(foo_total[5m])", {"foo_total"}),
        (
            "histogram_quantile(0.95, sum by (le, stage) (rate(t_bucket[$__rate_interval])))",
            {"t_bucket"},
        ),
        ("sum(rate(a[1h30m])) by (le) / on (x) group_left (y) b", {"a", "b"}),
        ("a * ignoring(job) group_right b", {"a", "b"}),
        ("sum without (instance) (a) and on() b unless c or d", {"a", "b", "c", "d"}),
        # Strings hold anything, braces and names included.
        ('x{route="/hooks/{lender_id}", a=~"rate(b)|c", d!="e"}', {"x"}),
        ("x{job='$job', uid=\"${datasource}\"}", {"x"}),
        ("a > bool 0.5e3 offset 5m", {"a"}),
        ("a @ start() - a @ end()", {"a"}),
        ("(sum(rate(a[5m])) or vector(0)) * 3600 + Inf - NaN", {"a"}),
        ("rate(a[5m:30s])  # a comment naming b", {"a"}),
        ('label_replace(job:req:rate5m, "dst", "$1", "src", "(.*)")', {"job:req:rate5m"}),
        ("sum by(le)(increase(h_bucket[$__range]))", {"h_bucket"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, metrics: set[str]) -> None:
    assert dash.metric_names(expr) == metrics


def test_a_name_called_like_a_function_that_promql_lacks_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"rat\(\.\.\.\) is not a PromQL function"):
        dash.metric_names("rat(foo[5m])")


def test_scraped_names_are_the_sample_names_of_an_exposition() -> None:
    registry = CollectorRegistry()
    Counter("calls_total", "c", ["outcome"], registry=registry).labels(outcome="ok").inc()
    Histogram("wait_seconds", "h", registry=registry).observe(0.2)
    Gauge("queued", "g", registry=registry).set(3)
    scraped = dash.scraped_names(generate_latest(registry).decode())
    assert {"calls_total", "wait_seconds_bucket", "wait_seconds_sum", "queued"} <= scraped
    # PromQL has no series named after a histogram itself: a query of it shows nothing.
    assert "wait_seconds" not in scraped and "calls" not in scraped


def test_a_renamed_metric_is_missing_from_the_scrape() -> None:
    registry = CollectorRegistry()
    Counter("calls_total", "c", registry=registry).inc()
    Histogram("wait_seconds", "h", registry=registry).observe(0.2)
    board = {
        "panels": [
            {"title": "calls", "targets": [{"expr": "rate(calls_total[5m])"}]},
            {
                "type": "row",
                "panels": [
                    {"title": "wait", "targets": [{"expr": "rate(wait_secs_bucket[5m])"}]},
                    {"title": "all", "targets": [{"expr": "wait_seconds_count + calls_total"}]},
                ],
            },
        ]
    }
    scrape = generate_latest(registry).decode()
    assert dash.missing_from(board, scrape) == {"wait_secs_bucket": {"wait"}}
    assert dash.missing_from(board, "") == {
        "wait_secs_bucket": {"wait"},
        "calls_total": {"calls", "all"},
        "wait_seconds_count": {"all"},
    }


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_reads_the_provisioned_prometheus(board: dict[str, Any]) -> None:
    assert board["uid"] == "dealflow" and board["title"] == "DealFlow"
    # From 36 on, panels name their data source by uid (nothing is migrated on load).
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == dash.PROVISIONED_UID


def test_every_panel_has_a_unique_id_a_data_source_and_queries(board: dict[str, Any]) -> None:
    every = list(dash.panels(board))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert {panel["type"] for panel in every} <= PANEL_TYPES
    shown = [panel for panel in every if panel["type"] != "row"]
    assert len(shown) >= 30
    for panel in shown:
        where = panel["title"]
        assert panel["title"] and panel["description"], where
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], where
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), where
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert dash.metric_names(target["expr"]), (where, target["expr"])


def test_panels_fit_the_grid_without_overlapping(board: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dash.panels(board):
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        span = itertools.product(
            range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        )
        for cell in span:
            assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r}"
            cells[cell] = panel["title"]


def test_the_dashboard_queries_every_metric_of_the_worker_named_by_dealflow(
    board: dict[str, Any],
) -> None:
    queried = dash.queried_metrics(board)
    assert all(name.startswith(("dealflow_", "temporal_")) for name in queried), queried
    histograms = {names.TIME_IN_STAGE_METRIC, names.LENDER_CALLS_METRIC}
    for constant in dir(names):
        if not constant.endswith("_METRIC"):
            continue
        name = getattr(names, constant)
        series = (
            {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if name in histograms else {name}
        )
        assert series & set(queried), f"the dashboard shows no panel of {name} ({constant})"
