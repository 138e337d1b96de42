"""Files the stack keeps under its data dir: pid files, log files, the lock."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dealflow.devstack.config import StackConfig

LOG_TAIL_LINES = 40


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written pid


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return "(no log)"
    text = data.decode(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) if text else "(no output)"


@contextlib.contextmanager
def stack_lock(cfg: StackConfig) -> Iterator[None]:
    """Serialise up/down of one data dir (e.g. `make demo` racing `make up`)."""
    import fcntl

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.data_dir / ".stack.lock").open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another dealflow.devstack command on this data dir ...", flush=True)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
