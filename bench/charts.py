"""The SVG charts `make bench` writes next to latest.json.

    throughput.svg  deals/s: DealFlow vs the reference floor, the floor with the
                    deal's mix, and DBOS (benchmark 1)
    scaling.svg     deals/s and CPU per deal with 1, 2, 4 worker processes; a
                    deal's history size and replay time as it grows (benchmark 1)
    recovery.svg    after a worker's kill -9: when each phase came, against the
                    5 s / 3 s targets (benchmark 5)
    latency.svg     p50 / p90 / p99 per arm (benchmark 1), and of webhooks vs raw
                    signals (benchmark 2)

A chart whose data is not in the results is skipped with a line saying so.
`python -m bench.charts RESULTS.json [OUT_DIR]` draws them from a saved file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from bench.chart_layout import Figure, Lane, Text, bars, figure, frame, lines, timeline

TEMPLATES = Path(__file__).resolve().parent / "templates"
ARMS = {
    "deal": "DealFlow",
    "floor": "floor (reference)",
    "floor_mix": "floor (deal's mix)",
    "dbos": "DBOS floor",
}
PERCENTILES = ("p50", "p90", "p99")
RECOVERY_LANES = {
    "single": ("one worker killed and restarted", 5.0),
    "one_of_two": ("one of two workers killed", 3.0),
}


class MissingData(LookupError):
    """The results hold nothing to draw this chart from."""


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["svg", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(fig: Figure) -> str:
    return environment().get_template("figure.svg.j2").render(fig=fig)


def series(report: Mapping[str, Any], num: str, name: str) -> Any:
    found = report.get("benchmarks", {}).get(num, {}).get("series", {}).get(name)
    if not found:
        raise MissingData(f"no series {name!r} from benchmark {num} in the results")
    return found


def subtitle(report: Mapping[str, Any]) -> str:
    machine = report.get("machine", {})
    when = str(report.get("started_at", "")).replace("T", " ").replace("+00:00", " UTC")
    quick = " — --quick: harness check, figures not judged" if report.get("quick") else ""
    return f"make bench, {when}, {machine.get('cpus', '?')} CPUs{quick}"


# --------------------------------------------------------------------------- charts


def throughput_chart(report: Mapping[str, Any]) -> Figure:
    rates: Mapping[str, float | None] = series(report, "1", "throughput")
    arms = [arm for arm in ARMS if arm in rates]
    panel = frame("Deals per second, same deal shape", "arm", "deals per second")
    bars(panel, [ARMS[a] for a in arms], [("deals/s", [rates[a] for a in arms])], "/s")
    reference = rates.get("floor")
    if reference:
        for tick, arm in zip(panel.x_ticks, arms, strict=True):
            rate = rates[arm]
            if rate is not None and arm != "floor":
                panel.texts.append(
                    Text(
                        tick.pos,
                        panel.bottom + 30,
                        f"{rate / reference:.2f}x reference",
                        kind="note",
                    )
                )
    panel.x_label = ""
    return figure("Throughput: DealFlow vs the floors and DBOS", subtitle(report), [panel])


def scaling_chart(report: Mapping[str, Any]) -> Figure:
    panels = []
    try:
        points = series(report, "1", "scaling")
    except MissingData:
        points = None
    if points:
        workers = [float(p["workers"]) for p in points]
        for col, (title, field, unit, label) in enumerate(
            [
                ("Deals per second", "deals_per_s", "/s", "deals per second"),
                ("CPU per deal", "cpu_ms_per_deal", " ms", "CPU ms per deal (all processes)"),
            ]
        ):
            panel = frame(title, "worker processes", label, 0, col, cols=2)
            pts = [(float(p["workers"]), float(p[field])) for p in points]
            lines(panel, [(title, pts)], unit, x_ticks=[0.0, *sorted(set(workers))])
            panels.append(panel)
    try:
        growth = series(report, "1", "history_growth")
    except MissingData:
        growth = None
    if growth:
        row = 1 if panels else 0
        for col, (title, field, scale, unit, label) in enumerate(
            [
                ("Replay time of one deal", "replay_s", 1000.0, " ms", "replay time, ms"),
                ("History size of one deal", "bytes", 0.001, " KB", "history size, KB"),
            ]
        ):
            panel = frame(title, "history events", label, row, col, cols=2)
            pts = [(float(g["events"]), scale * float(g[field])) for g in growth]
            lines(panel, [(title, pts)], unit)
            panels.append(panel)
    if not panels:
        raise MissingData("no series 'scaling' or 'history_growth' from benchmark 1 in the results")
    return figure("Scaling: cost as work grows", subtitle(report), panels)


def recovery_chart(report: Mapping[str, Any]) -> Figure:
    runs: Mapping[str, list[Mapping[str, Any]]] = series(report, "5", "recovery")
    lanes = [
        Lane(name, [(str(p["phase"]), float(p["at_s"])) for p in runs[key]], target)
        for key, (name, target) in RECOVERY_LANES.items()
        if runs.get(key)
    ]
    if not lanes:
        raise MissingData("benchmark 5's recovery series has no run")
    panel = frame(
        "After kill -9 of a worker with lender calls in flight", "seconds since the kill", ""
    )
    timeline(panel, lanes)
    return figure("Recovery timeline", subtitle(report), [panel])


def latency_chart(report: Mapping[str, Any]) -> Figure:
    panels = []
    try:
        per_arm: Mapping[str, Mapping[str, float]] = series(report, "1", "latency_ms")
    except MissingData:
        per_arm = {}
    arms = [arm for arm in ARMS if arm in per_arm]
    if arms:
        panel = frame("Update latency per deal arm (benchmark 1)", "arm", "milliseconds")
        bars(
            panel,
            [ARMS[a] for a in arms],
            [(p, [per_arm[a].get(p) for a in arms]) for p in PERCENTILES],
            " ms",
        )
        panel.x_label = ""
        panels.append(panel)
    detail = report.get("benchmarks", {}).get("2", {}).get("detail", {})
    hooks = {k: detail[k] for k in ("webhook", "raw") if isinstance(detail.get(k), Mapping)}
    if hooks:
        panel = frame(
            "Lender decision in: signed webhook via the API vs raw signal (benchmark 2)",
            "",
            "milliseconds",
            row=len(panels),
        )
        names = {"webhook": "webhook via the API", "raw": "raw client.signal"}
        bars(
            panel,
            [names[k] for k in hooks],
            [(p, [hooks[k].get(f"{p}_ms") for k in hooks]) for p in PERCENTILES],
            " ms",
        )
        panels.append(panel)
    if not panels:
        raise MissingData("no latency series from benchmark 1 nor webhook detail from benchmark 2")
    return figure("Latency percentiles", subtitle(report), panels)


CHARTS: dict[str, Callable[[Mapping[str, Any]], Figure]] = {
    "throughput": throughput_chart,
    "scaling": scaling_chart,
    "recovery": recovery_chart,
    "latency": latency_chart,
}


def write_charts(report: Mapping[str, Any], out_dir: Path, suffix: str = "") -> list[str]:
    """Write every chart the results have data for into `out_dir` as NAME{suffix}.svg;
    one line per chart saying what was written or why it was skipped."""
    said = []
    for name, build in CHARTS.items():
        path = out_dir / f"{name}{suffix}.svg"
        try:
            svg = render(build(report))
        except MissingData as e:
            said.append(f"skipped {path.name}: {e}")
            continue
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            # A malformed series must not cost the run its other charts and its table.
            said.append(f"skipped {path.name}: unexpected data ({type(e).__name__}: {e})")
            continue
        path.write_text(svg, encoding="utf-8")
        said.append(f"wrote {path}")
    return said


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    ap.add_argument("results", type=Path, help="a results file, e.g. bench/results/latest.json")
    ap.add_argument("out_dir", type=Path, nargs="?", help="where to write (default: beside it)")
    args = ap.parse_args(argv)
    report = json.loads(args.results.read_text(encoding="utf-8"))
    for line in write_charts(report, args.out_dir or args.results.parent):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
