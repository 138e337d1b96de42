"""Sampling profiles of the stack's processes while a benchmark runs (`bench.run --profile`).

py-spy (a dev dependency) attaches to a running process without restarting it
and samples its Python stacks; `--nonblocking` keeps it from pausing the
process; `--gil` keeps only samples of the thread holding the GIL, so the
shares are shares of Python CPU time (waits on SQLite, sockets or locks
release the GIL and are not counted). For each profiled process this
writes, under bench/results/profiles/:

- `<tag>-<name>.txt`: the top functions by own time and by inclusive time,
  and the share of samples in a few groups that matter here (pydantic,
  the sandbox, the payload codec, SQLite, logging, our workflow code ...);
- `<tag>-<name>.collapsed`: the raw stacks, for a flame graph
  (e.g. `speedscope`, or `flamegraph.pl`).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Inclusive share of samples whose stack passes through a matching frame.
GROUPS: dict[str, tuple[str, ...]] = {
    "workflows/deal.py (our workflow code)": ("workflows/deal.py",),
    "dealflow/rules.py (validation, pending actions)": ("dealflow/rules.py",),
    "pydantic (models, validation, serialisation)": ("pydantic/", "pydantic_core"),
    "payload codec (AES-GCM)": ("dealflow/codec.py",),
    "temporalio sandbox (importer, restrictions)": ("workflow_sandbox/",),
    "temporalio converter": ("temporalio/converter.py", "temporalio/contrib/pydantic"),
    "SQLite / SQLAlchemy": ("sqlalchemy/", "sqlite3", "sqlmodel/"),
    "logging": ("logging/__init__.py", "dealflow/logs.py"),
    "httpx / HTTP": ("httpx/", "httpcore/", "h11/", "uvicorn/", "starlette/"),
    "standardwebhooks (signature check)": ("standardwebhooks/",),
}


def available() -> bool:
    return PY_SPY.exists()


class Profile:
    def __init__(self, pid: int, out_dir: Path, tag: str, name: str, rate: int = 97) -> None:
        self.pid = pid
        self.name = name
        out_dir.mkdir(parents=True, exist_ok=True)
        self.raw = out_dir / f"{tag}-{name}.collapsed"
        self.txt = out_dir / f"{tag}-{name}.txt"
        self.proc = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(self.raw),
                "--nonblocking",
                "--gil",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> str:
        """Stop sampling, write the summary; returns the summary text."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()
        if not self.raw.exists():
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            text = f"py-spy wrote nothing for {self.name} (pid {self.pid}): {err[-500:]}"
        else:
            text = summarize(self.raw, f"{self.name} (pid {self.pid})")
        self.txt.write_text(text + "\n", encoding="utf-8")
        return text


def _short(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarize(raw: Path, title: str, top: int = 25) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [
            f
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        own[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
        joined = stack
        for g, needles in GROUPS.items():
            if any(n in joined for n in needles):
                groups[g] += count
    if not total:
        return f"{title}: no samples"
    lines = [
        f"{title}: {total} samples of the thread holding the GIL (Python CPU)",
        "",
        "share of samples through ... (inclusive; groups overlap)",
    ]
    lines += [f"  {100 * c / total:5.1f}%  {g}" for g, c in groups.most_common()]
    lines += ["", f"top {top} by own time"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", f"top {top} by inclusive time"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


class Profiles:
    """Profile several processes at once: `with Profiles(...)` or start()/stop()."""

    def __init__(self, pids: dict[str, int | None], out_dir: Path, tag: str) -> None:
        self.items = (
            [Profile(pid, out_dir, tag, name) for name, pid in pids.items() if pid is not None]
            if available()
            else []
        )

    def stop(self) -> dict[str, str]:
        return {p.name: p.stop() for p in self.items}
