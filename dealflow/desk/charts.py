"""Horizontal bar charts as geometry for the SVG templates (`desk/_chart.html`).

The server lays the bars out and the template draws them: no JavaScript, no
CDN, and the numbers beside every bar as text, so the chart reads without
colour. Widths are in SVG user units; the SVG scales to its container.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dealflow.i18n import gettext as _

WIDTH = 640
LABEL_WIDTH = 220
VALUE_ROOM = 100
BAR_HEIGHT = 14
ROW_GAP = 10
TOP = 8
LEGEND_HEIGHT = 22
MAX_LABEL = 30


@dataclass(frozen=True)
class Bar:
    series: int
    x: float
    y: float
    width: float
    height: float
    text: str
    text_x: float
    text_y: float


@dataclass(frozen=True)
class Row:
    label: str
    label_y: float
    bars: list[Bar]


@dataclass(frozen=True)
class Chart:
    chart_id: str
    width: int
    height: int
    label_width: int
    series: list[str]
    rows: list[Row]

    @property
    def empty(self) -> bool:
        return not self.rows

    @property
    def legend_y(self) -> float:
        return self.height - LEGEND_HEIGHT + 14


def bar_chart(
    chart_id: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    text: Callable[[float], str] = lambda value: f"{value:g}",
) -> Chart:
    """One row per label, one bar per series in each row, all on one scale.
    A missing value (None) draws no bar and says "—"."""
    values = [value for _name, column in series for value in column if value is not None]
    top = max(values, default=0.0) or 1.0
    span = WIDTH - LABEL_WIDTH - VALUE_ROOM
    row_height = BAR_HEIGHT * len(series) + ROW_GAP
    rows = []
    for i, label in enumerate(labels):
        y0 = TOP + i * row_height
        bars = []
        for s, (_name, column) in enumerate(series):
            value = column[i]
            width = 0.0 if value is None else max(span * value / top, 0.0)
            y = y0 + s * BAR_HEIGHT
            bars.append(
                Bar(
                    series=s,
                    x=LABEL_WIDTH,
                    y=y,
                    width=round(width, 1),
                    height=BAR_HEIGHT - 2,
                    text="—" if value is None else text(value),
                    text_x=round(LABEL_WIDTH + width + 4, 1),
                    text_y=y + BAR_HEIGHT - 4,
                )
            )
        middle = y0 + (BAR_HEIGHT * len(series)) / 2 + 4
        rows.append(Row(label=_shortened(label), label_y=middle, bars=bars))
    height = TOP + len(labels) * row_height + LEGEND_HEIGHT
    return Chart(
        chart_id=chart_id,
        width=WIDTH,
        height=max(height, 60),
        label_width=LABEL_WIDTH,
        series=[name for name, _values in series],
        rows=rows,
    )


def _shortened(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def duration(seconds: float | None) -> str:
    """A duration as people read it: 2 d 3 h, 4 h 5 min, 12 min, 35 s."""
    if seconds is None:
        return "—"
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = {"days": days, "hours": hours, "minutes": minutes, "seconds": secs}
    # One literal msgid per shape, so the catalogue's extractor finds each.
    if days and hours:
        return _("%(days)d d %(hours)d h") % parts
    if days:
        return _("%(days)d d") % parts
    if hours and minutes:
        return _("%(hours)d h %(minutes)d min") % parts
    if hours:
        return _("%(hours)d h") % parts
    if minutes and secs:
        return _("%(minutes)d min %(seconds)d s") % parts
    if minutes:
        return _("%(minutes)d min") % parts
    if 0 < seconds < 1:
        return _("%(seconds).1f s") % {"seconds": seconds}
    return _("%(seconds)d s") % parts
