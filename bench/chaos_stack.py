"""The embedded stack the chaos driver strikes: real processes, own ports, own data dir.

`ChaosStack` starts, through `dealflow.devstack`, the Temporal dev server (SQLite
file), the lender simulator, the API and the worker, each a separate process
on a free port (never the default ones, so it runs beside a developer's
`make up`). Around them, under the driver's control:

* PostgreSQL: a dedicated database `dealflow_chaos_<hex>` on the local server,
  reached by the stack through a `TcpProxy` the driver can cut; dropped at
  the end. Without a reachable server the stack falls back to SQLite and the
  PostgreSQL scenario is skipped.
* S3: a moto server (`moto_server`, started here), reached through another
  `TcpProxy`, so "S3 down" loses nothing moto holds in memory.

`kill(name)` is `kill -9` of a component's process group; `restart(name)`
starts it again with `dealflow.devstack.lifecycle.up` on the same data dir and files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_proxy import TcpProxy, free_port
from dealflow.config import ROOT, Settings, load_lenders
from dealflow.devstack import lifecycle, processes, procfs
from dealflow.devstack.components import Component, components
from dealflow.devstack.config import StackConfig

PG_ADMIN_URL = os.environ.get(
    "DEALFLOW_CHAOS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
S3_BUCKET = "dealflow-chaos"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "chaos",
    "AWS_SECRET_ACCESS_KEY": "chaos-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# A lender call's HTTP timeout in the worker (worker.py) is 20 s; a fault that
# holds a request longer than that is a real timeout for the client.
LENDER_CLIENT_TIMEOUT = 20.0


def postgres_available(url: str = PG_ADMIN_URL) -> str | None:
    """None when a server answers at `url`, else why not."""
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:  # any failure means: no PostgreSQL scenario
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _pg_url(base: str, *, port: int | None = None, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    if port is not None:
        url = url.set(port=port)
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


@dataclass
class ChaosStack:
    work_dir: Path
    use_postgres: bool = True
    log: Callable[[str], None] = print
    data_dir: Path = field(init=False)
    ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cfg: StackConfig | None = None
    pg_proxy: TcpProxy | None = None
    s3_proxy: TcpProxy | None = None
    pg_database: str | None = None
    moto: subprocess.Popen[bytes] | None = None
    database_url: str = ""  # as the stack sees it (through the proxy)
    direct_database_url: str = ""  # for the driver's checks (no proxy)
    kills: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.work_dir / "data"

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Ports, lenders file, PostgreSQL database, moto, proxies and the env."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The driver's own S3 client (uploads, checks) talks to moto only.
        os.environ.update(AWS_ENV)
        for name in ("temporal", "ui", "api", "sim", "moto", "metrics"):
            self.ports[name] = free_port()
        lenders_file = self.work_dir / "lenders.toml"
        src = (ROOT / "examples" / "lenders.toml").read_text()
        lenders_file.write_text(
            src.replace("http://127.0.0.1:8100", f"http://127.0.0.1:{self.ports['sim']}")
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        env.update(AWS_ENV)
        env.update(
            {
                "DEALFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
                "DEALFLOW_TEMPORAL_UI_PORT": str(self.ports["ui"]),
                "DEALFLOW_API_PORT": str(self.ports["api"]),
                "DEALFLOW_LENDER_SIM_PORT": str(self.ports["sim"]),
                # Its own metrics port: a stack of `make up` may hold the default.
                "DEALFLOW_WORKER_METRICS_PORT": str(self.ports["metrics"]),
                "DEALFLOW_LENDERS_FILE": str(lenders_file),
                "DEALFLOW_LENDER_SIM_DB": str(self.data_dir / "lender_sim.db"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Codec keys, JWT secret: the driver's own process uses the same values.
        for k in ("DEALFLOW_CODEC_KEYS", "DEALFLOW_JWT_SECRET"):
            if k in os.environ:
                env[k] = os.environ[k]

        if self.use_postgres:
            why = postgres_available()
            if why is not None:
                self.log(f"PostgreSQL not available ({why}); read model on SQLite")
                self.use_postgres = False
        if self.use_postgres:
            import psycopg

            self.pg_database = f"dealflow_chaos_{secrets.token_hex(4)}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_database}"')
            from sqlalchemy.engine import make_url

            pg_port = make_url(_pg_url(PG_ADMIN_URL)).port or 5432
            self.pg_proxy = TcpProxy(pg_port, name="postgres-proxy").start()
            self.database_url = _pg_url(
                PG_ADMIN_URL, port=self.pg_proxy.port, database=self.pg_database
            )
            self.direct_database_url = _pg_url(PG_ADMIN_URL, database=self.pg_database)
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'dealflow.db'}"
            self.direct_database_url = self.database_url
        env["DEALFLOW_DATABASE_URL"] = self.database_url

        self._start_moto()
        assert self.s3_proxy is not None
        env["DEALFLOW_DOCUMENT_STORE"] = f"s3://{S3_BUCKET}/documents"
        env["DEALFLOW_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{self.s3_proxy.port}"
        self.env = env
        self.cfg = StackConfig.from_env(self.data_dir, env, root=ROOT)

    def _start_moto(self) -> None:
        moto_bin = Path(sys.executable).parent / "moto_server"
        argv = [str(moto_bin)] if moto_bin.exists() else [sys.executable, "-m", "moto.server"]
        argv += ["-H", "127.0.0.1", "-p", str(self.ports["moto"])]
        log = (self.data_dir / "moto.log").open("ab")
        self.moto = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **AWS_ENV},
        )
        url = f"http://127.0.0.1:{self.ports['moto']}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if self.moto.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start ({argv})") from None
                time.sleep(0.2)
        from dealflow.storage.documents import make_s3_client

        make_s3_client(url).create_bucket(Bucket=S3_BUCKET)
        self.s3_proxy = TcpProxy(self.ports["moto"], name="s3-proxy").start()

    def up(self) -> None:
        assert self.cfg is not None
        lifecycle.up(self.cfg, out=lambda line: self.log(f"  stack: {line}"))

    def down(self) -> None:
        if self.cfg is not None:
            with contextlib.suppress(Exception):
                lifecycle.down(self.cfg, out=lambda line: None)
        if self.moto is not None and self.moto.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.moto.pid, signal.SIGTERM)
            try:
                self.moto.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.moto.pid, signal.SIGKILL)
                self.moto.wait(timeout=5)
        for proxy in (self.pg_proxy, self.s3_proxy):
            if proxy is not None:
                proxy.stop()
        if self.pg_database is not None:
            with contextlib.suppress(Exception):
                from dealflow.storage import db

                db.dispose_engine(self.direct_database_url)
                import psycopg

                with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            self.pg_database = None

    def remove_files(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------------ the driver's view

    def settings(self) -> Settings:
        """Settings for the driver's own clients: the stack's values, never the shell's."""
        keys = {
            "temporal_address": self.env["DEALFLOW_TEMPORAL_ADDRESS"],
            "api_port": int(self.env["DEALFLOW_API_PORT"]),
            "lender_sim_port": int(self.env["DEALFLOW_LENDER_SIM_PORT"]),
            "lenders_file": Path(self.env["DEALFLOW_LENDERS_FILE"]),
            "database_url": self.direct_database_url,
            "document_store": self.env["DEALFLOW_DOCUMENT_STORE"],
            "s3_endpoint_url": self.env["DEALFLOW_S3_ENDPOINT_URL"],
        }
        return Settings(**keys)  # type: ignore[arg-type]

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sim']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def lenders(self) -> Mapping[str, Any]:
        return load_lenders(Path(self.env["DEALFLOW_LENDERS_FILE"]))

    # ------------------------------------------------------------------ faults

    def _component(self, name: str) -> Component:
        assert self.cfg is not None
        return next(c for c in components(self.cfg) if c.name == name)

    def pid(self, name: str) -> int | None:
        assert self.cfg is not None
        return processes.running_pid(self.cfg, self._component(name))

    def kill(self, name: str) -> int:
        """`kill -9` the component's process group; returns the pid it had."""
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} is not running; nothing to kill")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procfs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kills[name] = self.kills.get(name, 0) + 1
        return pid

    def restart(self, name: str) -> None:
        """Start a killed component again (same data dir, same files, same port)."""
        assert self.cfg is not None
        lifecycle.up(
            self.cfg,
            [self._component(name)],
            migrate=False,
            out=lambda line: self.log(f"  stack: {line}"),
        )

    async def akill(self, name: str) -> int:
        return await asyncio.to_thread(self.kill, name)

    async def arestart(self, name: str) -> None:
        await asyncio.to_thread(self.restart, name)
