"""Health checks: is a component up and doing its job."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from dealflow.devstack.config import StackConfig
from dealflow.devstack.ports import tcp_accepts
from dealflow.devstack.procfs import pid_alive
from dealflow.devstack.temporal_cli import TemporalCliError, first_line, temporal_cli


@dataclass(frozen=True)
class Health:
    """One probe's answer: healthy or not, and what it saw."""

    ok: bool
    detail: str


HealthCheck = Callable[[int | None], Health]


def http_health(url: str, timeout: float = 2.0) -> Health:
    # No proxies: an operator's HTTP(S)_PROXY must not intercept loopback checks.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return Health(resp.status == 200, f"{url} -> {resp.status}")
    except urllib.error.HTTPError as e:
        return Health(False, f"{url} -> {e.code}")
    except (OSError, ValueError) as e:
        return Health(False, f"{url} -> {first_line(e)}")


def temporal_health(cfg: StackConfig) -> Health:
    """gRPC health SERVING and the namespace exists (a worker fails without it),
    asked through the connection factory every process uses
    (`python -m dealflow.temporal_connection`), in a process of its own."""
    host, port = cfg.temporal_address.rsplit(":", 1)
    if cfg.temporal_managed and not tcp_accepts(int(port), host):
        return Health(False, f"{cfg.temporal_address} does not accept connections")
    env = dict(cfg.env)
    if cfg.temporal_managed:
        # Our loopback dev server: an operator's TEMPORAL_* profile (TLS, API key
        # for a cloud namespace) must not reach the probe. For an external server
        # it is exactly what the probe needs.
        env = {k: v for k, v in env.items() if not k.startswith("TEMPORAL_")}
    env |= {"DEALFLOW_TEMPORAL_ADDRESS": cfg.temporal_address, "DEALFLOW_NAMESPACE": cfg.namespace}
    try:
        res = subprocess.run(
            [cfg.python, "-m", "dealflow.temporal_connection"],
            cwd=cfg.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return Health(False, first_line(e))
    if res.returncode != 0 or not res.stdout.startswith("SERVING"):
        lines = (res.stderr or res.stdout).strip().splitlines()
        return Health(False, lines[-1][:200] if lines else f"exit status {res.returncode}")
    return Health(True, f"serving {cfg.temporal_address}, namespace {cfg.namespace!r}")


def _ready_file_pid(cfg: StackConfig) -> int | None:
    try:
        text = cfg.worker_ready_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# What the worker's metrics say while it polls (dealflow/worker_metrics.py).
POLLING_SAMPLE = 'dealflow_worker_polling{service_name="temporal-core-sdk"} 1'


def worker_polls_by_its_metrics(port: int, timeout: float = 2.0) -> bool:
    """Whether the worker's metrics endpoint reports it polls. The port is the
    process's own (a second worker could not bind it), so with its pid alive
    the answer is that process's."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            return POLLING_SAMPLE in resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return False


def worker_health(cfg: StackConfig, pid: int | None) -> Health:
    """Its metrics reporting it polls; else a workflow poller `<pid>@...`, else
    `worker.ready` with the pid (package docstring)."""
    if pid is None or not pid_alive(pid):
        return Health(False, "process not running")
    if cfg.worker_metrics_port and worker_polls_by_its_metrics(cfg.worker_metrics_port):
        return Health(
            True,
            f"polling task queue {cfg.task_queue!r} (its metrics, port {cfg.worker_metrics_port})",
        )
    describe = ["task-queue", "describe", "--task-queue", cfg.task_queue, "-o", "json"]
    try:
        try:
            # Legacy mode: the enhanced describe caches poller info for ~5 s on the
            # server, which would add 5 s to every `up`; legacy answers at once.
            out = temporal_cli(
                cfg, *describe, "--legacy-mode", "--task-queue-type-legacy", "workflow", timeout=5
            )
        except TemporalCliError:  # a future CLI/server without the legacy API
            out = temporal_cli(cfg, *describe, "--task-queue-type", "workflow", timeout=5)
        pollers = json.loads(out).get("pollers") or []
        # Pollers stay listed for minutes after a worker dies, so "any poller" would
        # let a dead worker vouch for a new one: the identity must carry this pid.
        if any(str(p.get("identity", "")).split("@", 1)[0] == str(pid) for p in pollers):
            return Health(True, f"polling task queue {cfg.task_queue!r}")
        why = f"no workflow poller from pid {pid} on task queue {cfg.task_queue!r}"
    except (TemporalCliError, ValueError) as e:
        why = f"task queue {cfg.task_queue!r}: {e}"
    # Fallback for a worker with a custom identity: its own word, pid-checked.
    if _ready_file_pid(cfg) == pid:
        return Health(True, f"{cfg.worker_ready_file.name} written by pid {pid} ({why})")
    return Health(False, why)
