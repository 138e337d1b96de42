"""Peak memory of a block of code, from the kernel's resident-set high-water mark.

Used instead of tracemalloc: starting and stopping tracemalloc while the
Temporal runtime's and uvicorn's threads allocate has crashed CPython 3.11 in
this suite. Writing 5 to /proc/self/clear_refs resets VmHWM (Linux >= 4.0), so
the peak covers exactly the block, for the whole process (every thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KiB = 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Peak:
    growth: int = 0  # bytes above the resident size at the start


@contextmanager
def peak_rss() -> Iterator[Peak]:
    result = Peak()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    try:
        yield result
    finally:
        result.growth = max(0, _status_kib("VmHWM") - before) * KiB
