"""Chart geometry for the benchmark figures: panels of bars, lines and timelines.

Python lays every shape out in SVG user units and `bench/templates/figure.svg.j2`
draws it, so the markup lives in the template (the desk's charts,
`dealflow/desk/charts.py`, work the same way). A figure is a column of panels;
each panel has its own title, axes with units, ticks, shapes, value labels and
legend. Every value is printed as text beside its mark, so a chart reads
without colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 760
PANEL_HEIGHT = 330
TITLE_ROOM = 46  # the figure's title and subtitle
MARGIN_LEFT = 78
MARGIN_RIGHT = 24
MARGIN_TOP = 40  # the panel's title
MARGIN_BOTTOM = 78  # tick labels, axis label, legend
CHAR_WIDTH = 6.6  # of the 11px label font, to keep labels apart


@dataclass(frozen=True)
class Tick:
    pos: float
    text: str


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    series: int


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    kind: str  # "series-N" for data, "target", "lane"


@dataclass(frozen=True)
class Polyline:
    points: str
    series: int


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    series: int


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "middle"
    kind: str = "value"  # the text's class: "value", "label", "lane-name", "target-text", "note"


@dataclass
class Panel:
    """A plot area of `width` x `height` at (`left`, `top`) inside the figure."""

    title: str
    left: float
    top: float
    width: float
    height: float
    x_label: str
    y_label: str
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    polylines: list[Polyline] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    legend: list[tuple[int, str]] = field(default_factory=list)

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def legend_y(self) -> float:
        return self.bottom + 62

    @property
    def legend_step(self) -> float:
        """The distance between legend entries: room for the longest name."""
        return max((len(name) for _s, name in self.legend), default=0) * CHAR_WIDTH + 36


@dataclass
class Figure:
    title: str
    subtitle: str
    width: int
    height: int
    panels: list[Panel]


def figure(title: str, subtitle: str, panels: list[Panel]) -> Figure:
    height = max((p.bottom for p in panels), default=TITLE_ROOM) + MARGIN_BOTTOM
    return Figure(title, subtitle, WIDTH, int(math.ceil(height)), panels)


def frame(
    title: str, x_label: str, y_label: str, row: int = 0, col: int = 0, cols: int = 1
) -> Panel:
    """An empty panel in cell (`row`, `col`) of a grid `cols` wide."""
    cell = WIDTH / cols
    return Panel(
        title=title,
        left=col * cell + MARGIN_LEFT,
        top=TITLE_ROOM + row * PANEL_HEIGHT + MARGIN_TOP,
        width=cell - MARGIN_LEFT - MARGIN_RIGHT,
        height=PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
        x_label=x_label,
        y_label=y_label,
    )


# --------------------------------------------------------------------------- numbers


def number(value: float) -> str:
    """A figure as the table prints it: three significant digits, thousands separated."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def round_number(value: float) -> str:
    """A tick or a target, round by construction: no trailing zeros."""
    return f"{value:,g}"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 up to at least `top` (1, 2, 2.5 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def y_scale(panel: Panel, values: Sequence[float]) -> tuple[float, float]:
    """Set the panel's y ticks for `values` (from 0); (top value, pixels per unit)."""
    ticks = nice_ticks(max(values, default=0.0) * 1.08)
    top = ticks[-1]
    per_unit = panel.height / top
    panel.y_ticks = [Tick(round(panel.bottom - t * per_unit, 1), round_number(t)) for t in ticks]
    return top, per_unit


# --------------------------------------------------------------------------- shapes


def bars(
    panel: Panel,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str,
) -> None:
    """Grouped vertical bars: a group per category, a bar per series, the value above it.
    A missing value (None) draws no bar and says "not measured"."""
    values = [v for _name, column in series for v in column if v is not None]
    _top, per_unit = y_scale(panel, values)
    group = panel.width / max(len(categories), 1)
    bar = min(64.0, group * 0.8 / max(len(series), 1))
    for i, category in enumerate(categories):
        x0 = panel.left + i * group + (group - bar * len(series)) / 2
        panel.x_ticks.append(Tick(round(panel.left + (i + 0.5) * group, 1), category))
        for s, (_name, column) in enumerate(series):
            value = column[i]
            x = x0 + s * bar
            if value is None:
                panel.texts.append(Text(x + bar / 2, panel.bottom - 6, "not measured", kind="note"))
                continue
            h = value * per_unit
            panel.rects.append(Rect(round(x + 1, 1), round(panel.bottom - h, 1), bar - 2, h, s))
            panel.texts.append(
                Text(
                    round(x + bar / 2, 1), round(panel.bottom - h - 4, 1), f"{number(value)}{unit}"
                )
            )
    panel.legend = [(s, name) for s, (name, _column) in enumerate(series)]


def lines(
    panel: Panel,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    unit: str,
    x_ticks: Sequence[float] | None = None,
) -> None:
    """Lines through (x, y) points from x = 0, each point labelled with its y value."""
    points = [p for _name, pts in series for p in pts]
    _top, per_unit = y_scale(panel, [y for _x, y in points])
    xs = (
        list(x_ticks)
        if x_ticks is not None
        else nice_ticks(max((x for x, _y in points), default=1.0))
    )
    x_top = max(xs[-1], max((x for x, _y in points), default=1.0))
    per_x = panel.width / x_top
    panel.x_ticks = [Tick(round(panel.left + x * per_x, 1), round_number(x)) for x in xs]
    for s, (_name, pts) in enumerate(series):
        placed = [(panel.left + x * per_x, panel.bottom - y * per_unit, y) for x, y in sorted(pts)]
        panel.polylines.append(Polyline(" ".join(f"{x:.1f},{y:.1f}" for x, y, _v in placed), s))
        for x, y, value in placed:
            panel.dots.append(Dot(round(x, 1), round(y, 1), s))
            text = f"{number(value)}{unit}"
            half = len(text) * CHAR_WIDTH / 2
            # Kept off the y axis and inside the panel's cell.
            text_x = min(max(x, panel.left + half + 3), panel.right + MARGIN_RIGHT - half)
            panel.texts.append(Text(round(text_x, 1), round(y - 8, 1), text))
    panel.legend = [(s, name) for s, (name, _pts) in enumerate(series)]


@dataclass(frozen=True)
class Lane:
    """One run on a timeline: what happened when, and the time it should be done by."""

    name: str
    events: Sequence[tuple[str, float]]
    target: float | None


def timeline(panel: Panel, lanes: Sequence[Lane], unit: str = "s") -> None:
    """A lane per run on one time axis from 0; each event a dot labelled with what and when,
    the span up to the last event a bar, the target a dashed line."""
    ends = [t for lane in lanes for _what, t in lane.events] + [
        lane.target for lane in lanes if lane.target is not None
    ]
    xs = nice_ticks(max(ends, default=1.0) * 1.05, count=8)
    per_x = panel.width / xs[-1]
    panel.x_ticks = [Tick(round(panel.left + x * per_x, 1), round_number(x)) for x in xs]
    lane_h = panel.height / max(len(lanes), 1)
    for i, lane in enumerate(lanes):
        mid = panel.top + (i + 0.5) * lane_h
        panel.texts.append(
            Text(
                panel.left + 4,
                round(panel.top + i * lane_h + 14, 1),
                lane.name,
                "start",
                "lane-name",
            )
        )
        panel.lines.append(Line(panel.left, mid, panel.right, mid, "lane"))
        last = max((t for _what, t in lane.events), default=0.0)
        panel.rects.append(Rect(panel.left, round(mid - 4, 1), round(last * per_x, 1), 8, i))
        if lane.target is not None:
            x = round(panel.left + lane.target * per_x, 1)
            top, bottom = panel.top + i * lane_h + 4, panel.top + (i + 1) * lane_h - 4
            panel.lines.append(Line(x, round(top, 1), x, round(bottom, 1), "target"))
            panel.texts.append(
                Text(
                    x + 4,
                    round(top + 10, 1),
                    f"target {round_number(lane.target)} {unit}",
                    "start",
                    "target-text",
                )
            )
        _event_labels(panel, lane, mid, per_x, i, unit)
    panel.legend = [(i, lane.name) for i, lane in enumerate(lanes)]


def _event_labels(
    panel: Panel, lane: Lane, mid: float, per_x: float, series: int, unit: str
) -> None:
    """Dots on the lane; labels alternate above and below and step further out
    when they would overlap the one before on the same side."""
    taken: dict[int, list[tuple[float, float]]] = {}
    for k, (what, t) in enumerate(sorted(lane.events, key=lambda e: e[1])):
        x = panel.left + t * per_x
        panel.dots.append(Dot(round(x, 1), mid, series))
        text = f"{what} {number(t)} {unit}"
        half = len(text) * CHAR_WIDTH / 2
        side = -1 if k % 2 == 0 else 1
        tier = 0
        while any(a < x + half and x - half < b for a, b in taken.get(side * (tier + 1), [])):
            tier += 1
        taken.setdefault(side * (tier + 1), []).append((x - half, x + half))
        y = mid + side * (14 + 13 * tier) + (4 if side > 0 else 0)
        panel.lines.append(
            Line(round(x, 1), mid, round(x, 1), round(y - (4 if side > 0 else -3), 1), "tick")
        )
        # Kept inside the figure: a label centred on an early or late event would be cut.
        text_x = min(max(x, half + 4), WIDTH - half - 4)
        panel.texts.append(
            Text(round(text_x, 1), round(y + (6 if side > 0 else 0), 1), text, kind="label")
        )
