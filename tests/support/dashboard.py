"""The Grafana dashboard (docker/grafana/dashboards/dealflow.json) read as the
tests need it: its panels, the metric names its PromQL queries, and the sample
names a Prometheus scrape holds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from dealflow.config import ROOT

DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "dealflow.json"
# The data source compose provisions (docker/grafana/provisioning), by uid.
PROVISIONED_UID = "prometheus"

# PromQL's functions and aggregation operators: a name followed by "(" must be one.
_FUNCTION_NAMES = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg avg_over_time
    bottomk ceil changes clamp clamp_max clamp_min cos cosh count count_over_time
    count_values day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing end exp floor group histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum
    holt_winters hour idelta increase info irate label_join label_replace
    last_over_time limit_ratio limitk ln log10 log2 mad_over_time max max_over_time min
    min_over_time minute month pi predict_linear present_over_time quantile
    quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt start stddev stddev_over_time stdvar
    stdvar_over_time sum sum_over_time tan tanh time timestamp topk vector year
"""
FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
# Words that are never metric names: binary operators, modifiers, special floats.
_KEYWORD_NAMES = "and or unless atan2 bool offset by without on ignoring group_left group_right"
KEYWORDS = frozenset([*_KEYWORD_NAMES.split(), "inf", "nan"])
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENTS = re.compile(r"#[^\n]*")
# Grafana's variables and macros: ${datasource}, $__rate_interval, [[var]].
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
# Label lists of grouping and vector matching: `by (le, stage)`, `on (x)`.
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# A name not glued to a number before it (`5m`, `1e3`, `0.95` are not names).
_NAMES = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{|\s)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. A name called like a
    function that PromQL does not have is an error, not a metric."""
    text = _COMMENTS.sub(" ", _STRINGS.sub(" ", expr))
    text = _VARIABLES.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    found = set()
    for match in _NAMES.finditer(text):
        name = match.group()
        called = text[match.end() :].lstrip().startswith("(")
        if called:
            if name not in FUNCTIONS:
                raise ValueError(f"{name}(...) is not a PromQL function, in: {expr}")
        elif name.lower() not in KEYWORDS:
            found.add(name)
    return found


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    for variable in dashboard.get("templating", {}).get("list", []):
        # label_values() and friends are Grafana's, not PromQL: not read here.
        if variable.get("type") == "query":
            raise ValueError(f"query variable {variable.get('name')!r}: not supported")
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel.get("title", ""), target["expr"]


def queried_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """metric name -> the titles of the panels that query it."""
    used: dict[str, set[str]] = {}
    for title, expr in queries(dashboard):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(title)
    return used


def scraped_names(exposition: str) -> set[str]:
    """The sample names of a Prometheus text exposition (a histogram's are its
    `_bucket`, `_sum` and `_count` series: what PromQL selects by name)."""
    return {
        match.group(1)
        for line in exposition.splitlines()
        if not line.startswith("#") and (match := _SAMPLE.match(line))
    }


def missing_from(dashboard: dict[str, Any], *expositions: str) -> dict[str, set[str]]:
    """The queried metrics no exposition has a sample of -> the panels querying them."""
    scraped = set().union(*(scraped_names(text) for text in expositions))
    return {
        name: titles for name, titles in queried_metrics(dashboard).items() if name not in scraped
    }
