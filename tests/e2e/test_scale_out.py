"""Scale-out, shown: two hosts, each running an API process and a worker
process, on one Temporal dev server and one database (a SQLite file, or a
PostgreSQL schema of its own when DEALFLOW_TEST_POSTGRES_URL is set), the
APIs behind a round-robin balancer (tests/support/balancer.py). Staff, the
lender simulator's webhooks and its document fetches all go through the
balancer, as they would through a production load balancer.

The processes are started as `make up` starts them (dealflow.devstack), each
host with its own data dir (pid files, logs, the worker's ready file), API
port and worker metrics port. The run is deterministic: eight deals are
driven over HTTP up to their credit application, served by both APIs and
both workers; then host A's API and worker are killed with SIGKILL while the
lender's decisions are still on their way, and staff drive every deal to
COMPLETED through the surviving API. Then each deal is checked against the
lender's ledger and the database by the chaos suite's check
(bench/chaos_check.py): no application, disbursement, webhook or compensation
lost or done twice, the read model equal to the workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from bench.chaos_check import Verdict, check_deal
from bench.chaos_robot import APPROVED, DealRun
from dealflow.config import load_lenders
from dealflow.devstack import lifecycle, processes, procfs
from dealflow.devstack.components import Component, components
from dealflow.devstack.config import StackConfig
from dealflow.devstack.runfiles import log_tail
from dealflow.models import DealStatus, Role
from dealflow.storage import db
from tests.support.api_stack import SECRET, HttpApi, HttpDesk, policy_file
from tests.support.balancer import Balancer
from tests.support.servers import free_port, serve
from tests.support.stack import ROOT, postgres_schema, postgres_url

DEALS = 8
# The lender decides this long after an application: the decisions of the
# deals applied for last are still on their way when host A is killed.
DECISION_DELAY = 1.0
# The test's own eyes poll a deal this often (each look is a Temporal query).
POLL_SECONDS = 0.2
# What each host runs.
PROCESSES = ("api", "worker")
# Workflow tasks a worker has completed, from the Temporal SDK's metrics.
WORKFLOW_TASKS = re.compile(
    r"^temporal_workflow_task_execution_latency(?:_seconds)?_count\{[^}]*\} (\S+)$", re.M
)


# --------------------------------------------------------------------------- the balancer


def whoami(name: str) -> FastAPI:
    app = FastAPI(title=name)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"name": name}

    return app


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_the_balancer_takes_turns_and_skips_a_backend_that_died() -> None:
    async def names(url: str, n: int) -> list[str]:
        # A connection per request, as the scale-out test's staff make them.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False) as http:
            answers = await asyncio.gather(*(http.get("/healthz") for _ in range(n)))
        return [r.json()["name"] for r in answers]

    with serve(whoami("b")) as b_url, contextlib.ExitStack() as a_alive:
        ports = [port_of(a_alive.enter_context(serve(whoami("a")))), port_of(b_url)]
        balancer = Balancer(ports)
        balancer.start()
        try:
            assert sorted(await names(balancer.url, 4)) == ["a", "a", "b", "b"]
            a_alive.close()  # its port refuses now, as a killed process's does
            # Concurrent connections, each finding the dead backend first or second.
            assert await names(balancer.url, 20) == ["b"] * 20
            assert balancer.served[ports[0]] == 2
        finally:
            balancer.stop()


# --------------------------------------------------------------------------- the hosts


@dataclass
class Host:
    """One host's DealFlow processes, started and recognised as `make up` does."""

    name: str
    cfg: StackConfig

    def component(self, name: str) -> Component:
        return next(c for c in components(self.cfg) if c.name == name)

    def start(self, comp: Component) -> None:
        """Start one process as `make up` does and wait until it is healthy; the
        processes of a host start side by side (`make up` starts them in turn)."""
        for folder in (self.cfg.pid_dir, self.cfg.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        proc, offset = processes.start_process(self.cfg, comp)
        health, _ = processes.wait_healthy(comp, proc.pid, proc, comp.timeout)
        log = self.cfg.log_file(comp.name)
        assert health.ok, f"{self.name} {comp.name}: {health.detail}\n{log_tail(log, offset)}"

    def kill(self, name: str) -> int:
        """`kill -9` of the component's process group, once it is gone; its pid."""
        pid = processes.running_pid(self.cfg, self.component(name))
        assert pid is not None, f"{self.name}: {name} is not running"
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procfs.pid_alive(pid):
            assert time.monotonic() < deadline, f"{self.name}: {name} outlived SIGKILL"
            time.sleep(0.02)
        return pid

    def stop(self) -> None:
        lifecycle.down(self.cfg, out=lambda line: None)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.worker_metrics_port}/metrics"


def shared_env(tmp: Path, temporal: str, database_url: str, balancer_url: str) -> dict[str, str]:
    """What every host shares: Temporal, the task queue, the database, the
    document store, the secrets, the lenders; the API's public address is the
    balancer's, so lender webhooks and signed document links go through it."""
    sim_port = free_port()
    lenders_file = tmp / "lenders.toml"
    lenders_file.write_text(
        (ROOT / "examples" / "lenders.toml")
        .read_text(encoding="utf-8")
        .replace("http://127.0.0.1:8100", f"http://127.0.0.1:{sim_port}"),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "TEMPORAL_"))}
    return env | {
        "DEALFLOW_CODEC_KEYS": os.environ["DEALFLOW_CODEC_KEYS"],
        "DEALFLOW_TEMPORAL_ADDRESS": temporal,
        "DEALFLOW_TASK_QUEUE": f"scale-{uuid.uuid4().hex[:8]}",
        "DEALFLOW_DATABASE_URL": database_url,
        "DEALFLOW_DOCUMENT_STORE": f"file://{tmp / 'documents'}",
        "DEALFLOW_JWT_SECRET": SECRET,
        "DEALFLOW_API_BASE_URL": balancer_url,
        "DEALFLOW_LENDERS_FILE": str(lenders_file),
        "DEALFLOW_LENDER_SIM_PORT": str(sim_port),
        "DEALFLOW_LENDER_SIM_DB": str(tmp / "lender_sim.db"),
        "DEALFLOW_POLICY_FILE": str(policy_file(tmp, follow_up_first=1, follow_up_second=2)),
    }


def host(name: str, tmp: Path, env: dict[str, str], api_port: int | None = None) -> Host:
    own = {"DEALFLOW_API_PORT": str(api_port or free_port())}
    own["DEALFLOW_WORKER_METRICS_PORT"] = str(free_port())
    return Host(name, StackConfig.from_env(tmp / name, env | own, root=ROOT))


@pytest.fixture
def shared_database(tmp_path: Path) -> Iterator[str]:
    """The one database of every host, migrated: a PostgreSQL schema of this
    test's own when DEALFLOW_TEST_POSTGRES_URL is set, else a SQLite file."""
    with contextlib.ExitStack() as stack:
        base = postgres_url()
        url = (
            stack.enter_context(postgres_schema(base))
            if base
            else f"sqlite:///{tmp_path / 'dealflow.db'}"
        )
        db.migrate(url)
        yield url
        db.dispose_engine(url)


@dataclass
class Cluster:
    balancer: Balancer
    lender: Host
    a: Host
    b: Host
    api_ports: dict[str, int]


@pytest.fixture
async def cluster(
    dev_env: WorkflowEnvironment, shared_database: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    api_ports = {"a": free_port(), "b": free_port()}
    balancer = Balancer(list(api_ports.values()))
    balancer.start()
    temporal = dev_env.client.service_client.config.target_host
    env = shared_env(tmp_path, temporal, shared_database, balancer.url)
    lender = host("lender", tmp_path, env)
    a, b = (host(name, tmp_path, env, port) for name, port in api_ports.items())
    sim = lender.component("lender_sim")
    sim = dataclasses.replace(sim, argv=(*sim.argv, "--decision-delay", str(DECISION_DELAY)))
    try:
        await asyncio.gather(
            asyncio.to_thread(lender.start, sim),
            *(asyncio.to_thread(h.start, h.component(c)) for h in (a, b) for c in PROCESSES),
        )
        yield Cluster(balancer, lender, a, b, api_ports)
    finally:
        await asyncio.gather(*(asyncio.to_thread(h.stop) for h in (a, b, lender)))
        balancer.stop()


# --------------------------------------------------------------------------- staff


class Desk(HttpDesk):
    """A deal's staff, over HTTP through the balancer: each deal its own people
    (the API limits the uploads one person has in progress)."""

    poll_seconds = POLL_SECONDS

    def __init__(self, office: HttpApi, seat: int) -> None:
        super().__init__(office)
        self.office = office
        self.seat = seat

    def as_(self, role: Role | str) -> httpx.AsyncClient:
        role = Role(role)
        return self.office.http(token=self.office.token(role, f"{role.value}-{self.seat:02d}"))

    async def apply(self) -> None:
        """From a new deal to its credit application, sent to the lender."""
        await self.start()
        await self.wait_stage("CONTRACT")
        await self.ok("sign-sales-contract", Role.SALES)
        await self.upload_all()
        await self.ok("submit-application", Role.CREDIT)

    async def in_worklist(self, stage: str, within: float = 30) -> dict[str, Any]:
        """The deal's row once the staff's worklist shows it at `stage`. The
        worklist is the read model, which answers whichever worker holds the
        deal; a status query waits for the worker the deal last ran on until
        the server gives up on that worker (seconds, after a kill)."""
        http = self.as_(Role.AUDITOR)
        deadline = time.monotonic() + within
        while True:
            r = await http.get("/api/deals", params={"stage": stage, "limit": 200})
            assert r.status_code == 200, r.text
            for row in r.json()["deals"]:
                if row["deal_id"] == self.deal_id:
                    return dict(row)
            assert time.monotonic() < deadline, f"deal {self.deal_id} never listed at {stage}"
            await asyncio.sleep(self.poll_seconds)

    async def complete(self, legal_names: dict[str, str]) -> DealStatus:
        """From the lender's approval to COMPLETED: the down payment, the
        funding, registration, delivery and both follow-up calls."""
        approved = await self.in_worklist("DOWN_PAYMENT")
        lender = legal_names[approved["lender_id"]]
        await self.fund(lender)
        for action in ("record-certificate", "record-purchase-tax", "record-plate"):
            await self.ok(action, Role.REGISTRATION)
        await self.ok("record-mortgage", Role.REGISTRATION, lienholder=lender)
        await self.ok("record-stock-out", Role.DELIVERY)
        await self.ok("record-settlement", Role.FINANCE)
        await self.ok("deliver", Role.DELIVERY)
        await self.wait_until(
            lambda s: any(n["kind"] == "follow_up_due" for n in s["notices"]),
            "the day-3 call to fall due",
        )
        await self.ok("record-follow-up", Role.SALES, call="day3")
        final = await self.ok("record-follow-up", Role.SALES, call="day30")
        return DealStatus.model_validate(final)


# --------------------------------------------------------------------------- checks


def workflow_tasks(scrape: str) -> float:
    return sum(float(n) for n in WORKFLOW_TASKS.findall(scrape))


async def scrape(http: httpx.AsyncClient, h: Host) -> str:
    r = await http.get(h.metrics_url)
    r.raise_for_status()
    return r.text


async def ledger(http: httpx.AsyncClient, sim_url: str, deal_id: str) -> dict[str, Any]:
    r = await http.get(f"{sim_url}/_sim/ledger", params={"deal_id": deal_id})
    r.raise_for_status()
    return dict(r.json())


async def read_model_caught_up(database_url: str, final: DealStatus, within: float = 10) -> None:
    """The read model is written by activities after the workflow moves: wait for its last write."""
    engine = db.make_engine(database_url)
    deadline = time.monotonic() + within
    while (row := db.get_deal(engine, final.deal_id)) is None or row.version < final.version:
        if time.monotonic() > deadline:
            return  # check_deal reports the difference
        await asyncio.sleep(0.1)


def decided_after(hooks: list[dict[str, Any]], moment: datetime) -> bool:
    """Whether the lender's decision webhook reached the API after `moment`."""
    return any(
        h["type"] == "application.decided"
        and h["status"] == "delivered"
        and datetime.fromisoformat(h["last_attempt_at"]) > moment
        for h in hooks
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What the deals went through, seen from outside."""

    finals: list[DealStatus]
    killed_at: datetime
    # Connections the balancer gave each API, and workflow tasks each worker
    # ran, before the kill; workflow tasks of the surviving worker at the end.
    served_before: dict[int, int]
    tasks_before: dict[str, float]
    tasks_after: float
    seconds: dict[str, float]


async def drive(cluster: Cluster, office: HttpApi, http: httpx.AsyncClient) -> Run:
    """Eight deals to their credit applications on both hosts, the kill of
    host A's API and worker, and every deal on to COMPLETED through host B."""
    legal_names = {
        lid: cfg.legal_name
        for lid, cfg in load_lenders(Path(cluster.a.cfg.env["DEALFLOW_LENDERS_FILE"])).items()
    }
    desks = [Desk(office, seat) for seat in range(1, DEALS + 1)]
    started = time.monotonic()
    await asyncio.gather(*(d.apply() for d in desks))
    applied = time.monotonic()
    hosts = (cluster.a, cluster.b)
    scrapes = await asyncio.gather(*(scrape(http, h) for h in hosts))
    tasks_before = {h.name: workflow_tasks(text) for h, text in zip(hosts, scrapes, strict=True)}
    served_before = dict(cluster.balancer.served)
    killed_at = datetime.now(UTC)
    cluster.a.kill("api")
    cluster.a.kill("worker")
    killed = time.monotonic()
    finals = await asyncio.gather(*(d.complete(legal_names) for d in desks))
    completed = time.monotonic()
    return Run(
        finals=list(finals),
        killed_at=killed_at,
        served_before=served_before,
        tasks_before=tasks_before,
        tasks_after=workflow_tasks(await scrape(http, cluster.b)),
        seconds={"applied": applied - started, "after the kill": completed - killed},
    )


async def verify(
    run: Run, http: httpx.AsyncClient, sim_url: str, database_url: str
) -> tuple[Verdict, int]:
    """Each deal against the lender's ledger and the database (bench/chaos_check.py),
    and how many deals' decisions reached the API only after the kill."""
    verdict = Verdict(deals=DEALS)
    in_flight = 0
    for final in run.finals:
        await read_model_caught_up(database_url, final)
        held = await ledger(http, sim_url, final.deal_id)
        paid = [d for d in held["disbursement_requests"] if d["result"] == "completed"]
        assert len(paid) == 1, f"{final.deal_id}: the lender paid {len(paid)} times"
        in_flight += decided_after(held["webhooks"], run.killed_at)
        deal = DealRun(final.deal_id, APPROVED, final=final)
        engine = db.make_engine(database_url)
        await asyncio.to_thread(check_deal, verdict, deal, held, engine, [])
    return verdict, in_flight


@pytest.mark.e2e
async def test_deals_complete_while_an_api_and_a_worker_are_killed(
    cluster: Cluster, shared_database: str
) -> None:
    sim_url = f"http://127.0.0.1:{cluster.lender.cfg.lender_sim_port}"
    office = HttpApi(cluster.balancer.url, sim_url, keep_alive=False)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        try:
            run = await drive(cluster, office, http)
        finally:
            await office.close_clients()
        verdict, in_flight = await verify(run, http, sim_url, shared_database)

    # Before the kill both hosts served: staff requests spread over both
    # APIs, and both workers ran the deals' workflow tasks.
    port_a, port_b = cluster.api_ports["a"], cluster.api_ports["b"]
    assert run.served_before.get(port_a, 0) > 0 and run.served_before.get(port_b, 0) > 0
    assert all(n > 0 for n in run.tasks_before.values()), run.tasks_before
    # After it, host B alone took every request and every deal.
    assert cluster.balancer.served[port_a] == run.served_before[port_a]
    assert cluster.balancer.served[port_b] > run.served_before[port_b]
    assert run.tasks_after > run.tasks_before["b"]
    assert [f.stage.value for f in run.finals] == ["COMPLETED"] * DEALS
    assert verdict.findings == [], "\n".join(
        f"{f.deal_id} {f.category}: {f.text}" for f in verdict.findings
    )
    assert verdict.as_expected == DEALS
    # The kill came while deals moved: some lender decisions reached the surviving API only.
    assert in_flight > 0
    print(
        f"\n{DEALS} deals on 2 APIs and 2 workers: applied in {run.seconds['applied']:.1f} s "
        f"(APIs served {sorted(run.served_before.values())} connections, workers ran "
        f"{sorted(int(n) for n in run.tasks_before.values())} workflow tasks); after the kill "
        f"of one API and one worker, {in_flight} decisions still in flight, all COMPLETED "
        f"{run.seconds['after the kill']:.1f} s later"
    )
