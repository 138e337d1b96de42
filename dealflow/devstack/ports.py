"""TCP ports: does something listen, and which process (Linux /proc/net/tcp)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from dealflow.devstack.procfs import process_cmdline


def tcp_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:port (or a bind would fail)."""
    if tcp_accepts(port, host, timeout=0.3):
        return True
    # SO_REUSEADDR: a TIME_WAIT leftover of our own last run must not count as "in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            return e.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def port_owner(port: int) -> str | None:
    """Best effort "pid N (cmd)" of the process listening on a TCP port (Linux only)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    cmd = " ".join(process_cmdline(int(proc.name)))[:120]
                    return f"pid {proc.name} ({cmd})"
            except OSError:
                continue
    return None
