"""What the OS says about a process: alive or not, its command line (/proc, else `ps`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def _proc_available() -> bool:
    return Path("/proc/self/cmdline").exists()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    # Reap it if it is our own exited child (tests), so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # Zombie: exited but not reaped by its parent -- not running.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_cmdline(pid: int) -> list[str]:
    """argv of a process, [] if unknown or gone."""
    if _proc_available():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    try:  # macOS & co.: no /proc; `ps` splits on spaces, which our argv never contain
        out = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return out.split()


def argv_contains(argv: Sequence[str], run: Sequence[str]) -> bool:
    """True when `run` occurs in `argv` as contiguous arguments."""
    width = len(run)
    return width == 0 or any(
        list(argv[start : start + width]) == list(run) for start in range(len(argv) - width + 1)
    )
