"""latest.json's flat `figures` map: every keyed row of every benchmark by its key.

A row made with `row(..., key="webhook_p99_s")` gives `webhook_p99_s` (its
value), `webhook_p99_s_baseline` and `webhook_p99_s_ratio` (value / baseline,
present only when the row has one). A key ending in `_s` names a time: the
map holds it in seconds whatever unit the table prints it in, so readers of
the file never guess the unit; the ratio is unit-free and kept as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SECONDS_PER_UNIT = {"s": 1.0, "ms": 0.001}


class FigureKeyError(ValueError):
    """Two rows share a key, or a time's key names a row that is not a time."""


def in_seconds(key: str, unit: str, value: float | None) -> float | None:
    if value is None or not key.endswith("_s"):
        return value
    if unit not in SECONDS_PER_UNIT:
        raise FigureKeyError(f"{key!r} ends in '_s' (a time in seconds) but its unit is {unit!r}")
    return value * SECONDS_PER_UNIT[unit]


def figures(benchmarks: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The map for `report["benchmarks"]`, in benchmark then row order."""
    out: dict[str, float | None] = {}
    for num in sorted(benchmarks, key=int):
        for r in benchmarks[num].get("rows", []):
            key = r.get("key") or ""
            if not key:
                continue
            names = (key, f"{key}_baseline", f"{key}_ratio")
            taken = [name for name in names if name in out]
            if taken:
                raise FigureKeyError(f"benchmark {num}: key {key!r} is already used ({taken})")
            out[key] = in_seconds(key, r["unit"], r["value"])
            out[f"{key}_baseline"] = in_seconds(key, r["unit"], r["baseline"])
            if r["ratio"] is not None:
                out[f"{key}_ratio"] = r["ratio"]
    return out
