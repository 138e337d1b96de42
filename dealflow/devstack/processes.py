"""Starting, watching and stopping one component's process."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime

from dealflow.devstack.components import Component
from dealflow.devstack.config import StackConfig
from dealflow.devstack.health import Health
from dealflow.devstack.procfs import argv_contains, pid_alive, process_cmdline
from dealflow.devstack.runfiles import read_pid, write_pid

STOP_GRACE = 15.0  # > worker graceful_shutdown_seconds (10 s) so in-flight tasks can finish
POLL_INTERVAL = 0.25


def _argv(pid: int, wait: float = 1.0) -> list[str]:
    """The process's argv; a process caught in the middle of exec (Linux
    shows no arguments until the new program's are set up, just after the
    parent has seen the exec succeed) is asked again for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while not (argv := process_cmdline(pid)) and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return argv


def running_pid(cfg: StackConfig, comp: Component) -> int | None:
    """The pid of the component's live process, or None; removes a stale pid file."""
    path = cfg.pid_file(comp.name)
    if not path.exists():
        return None
    pid = read_pid(path)
    if pid is not None and pid_alive(pid) and argv_contains(_argv(pid), comp.signature):
        return pid
    # Dead, garbage, or the pid was reused by an unrelated process: never signal it.
    path.unlink(missing_ok=True)
    return None


def start_process(
    cfg: StackConfig, comp: Component, argv: Sequence[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start detached; returns the process and the log offset where its output begins."""
    argv = list(argv or comp.argv)
    log_path = cfg.log_file(comp.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        offset = log.tell()
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        log.write(f"\n===== {stamp} dealflow.devstack: {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=cfg.root,
            env=dict(cfg.env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: survives the shell/make that ran `up`, Ctrl-C in that
            # terminal does not reach it, and `down` can signal the whole group.
            start_new_session=True,
            close_fds=True,
        )
    write_pid(cfg.pid_file(comp.name), proc.pid)
    return proc, offset


def wait_healthy(
    comp: Component, pid: int | None, proc: subprocess.Popen[bytes] | None, timeout: float
) -> tuple[Health, int | None]:
    """Poll health until ok or timeout; returns (last health, exit code if it died)."""
    deadline = time.monotonic() + timeout
    health = Health(False, "not checked")
    while True:
        if proc is not None and proc.poll() is not None:
            return Health(False, f"exited with status {proc.returncode}"), proc.returncode
        if proc is None and pid is not None and not pid_alive(pid):
            return Health(False, "process exited"), None
        health = comp.health(pid)
        if health.ok or time.monotonic() >= deadline:
            return health, None
        time.sleep(POLL_INTERVAL)


def stop_pid(pid: int, grace: float = STOP_GRACE) -> str:
    """SIGTERM the process group, wait `grace` s, then SIGKILL. Returns how it ended."""
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return "already gone"

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    started = time.monotonic()
    send(signal.SIGTERM)
    while time.monotonic() - started < grace:
        if not pid_alive(pid):
            # Leftover group members (e.g. a server's own children) go too.
            if group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            return f"SIGTERM, {time.monotonic() - started:.1f}s"
        time.sleep(0.1)
    send(signal.SIGKILL)
    while pid_alive(pid) and time.monotonic() - started < grace + 5:
        time.sleep(0.1)
    return f"SIGKILL after {grace:.0f}s"
