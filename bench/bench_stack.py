"""The benchmarks' stack: the real DealFlow processes on free ports in a private data dir.

Every benchmark starts its own stack with `dealflow.devstack` (dev server with the
SQLite file in WAL + synchronous=FULL, migrations, lender simulator, API,
worker), never on the default ports and never in `.data`, so `make bench` runs
beside a developer's `make up`. The lender simulator answers at once
(`--decision-delay 0`); the lenders file is rewritten to point at it (or at a
proxy placed in front of it).

Also here: per-process CPU and memory from /proc, percentiles, history counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.bench_driver import Driver
from dealflow import client as deals
from dealflow.config import ROOT, Settings, load_lenders
from dealflow.devstack import lifecycle, processes, procfs
from dealflow.devstack.components import Component, components
from dealflow.devstack.config import StackConfig
from dealflow.devstack.health import worker_health
from dealflow.storage.documents import DocumentStore, store_from_settings

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
EXAMPLE_LENDERS = ROOT / "examples" / "lenders.toml"


def free_port(taken: set[int] | None = None) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        # The dev server's UI defaults to gRPC port + 1000; keep clear of it too.
        if taken is None or (port not in taken and port + 1000 not in taken):
            if taken is not None:
                taken.add(port)
            return port


def say(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", flush=True)


# --------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process and its live children, in seconds."""
    if pid is None:
        return 0.0
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total / 1e6


class CpuMeter:
    """CPU seconds used by named processes between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.t0 = 0.0
        self.c0: dict[str, float] = {}
        self.wall = 0.0
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.c0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.c0["bench"] = time.process_time()
        self.t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        self.wall = time.monotonic() - self.t0
        self.used = {n: cpu_seconds(p) - self.c0[n] for n, p in self.pids.items()}
        self.used["bench"] = time.process_time() - self.c0["bench"]
        return self.used


# --------------------------------------------------------------------------- numbers


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def mean(values: Iterable[float]) -> float:
    v = list(values)
    return statistics.fmean(v) if v else 0.0


def ratio(a: float, b: float) -> float | None:
    return None if not b else a / b


def row(
    figure: str,
    value: float | None,
    unit: str = "",
    *,
    baseline: float | None = None,
    target: str = "",
    ok: bool | None = None,
    note: str = "",
    key: str = "",
) -> dict[str, Any]:
    """One line of the results table. `ratio` is value / baseline when both exist;
    `met` is None when the figure has no target (or the run is too small to judge).
    `key` names the figure in latest.json's flat `figures` map (`<key>` for the
    value, `<key>_baseline`, `<key>_ratio`); a time's key ends in `_s`."""
    return {
        "key": key,
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio(value, baseline) if value is not None and baseline is not None else None,
        "target": target,
        "met": ok,
        "note": note,
    }


# --------------------------------------------------------------------------- histories


async def history_stats(
    client: Client,
    workflow_ids: Sequence[str],
    concurrency: int = 16,
    keep: list[Any] | None = None,
) -> dict[str, Any]:
    """Event counts (total and by type), bytes and activity retries of whole histories.
    With `keep`, the fetched `WorkflowHistory` objects are appended to it."""
    sem = asyncio.Semaphore(concurrency)
    lengths: list[int] = []
    sizes: list[int] = []
    by_type: Counter[str] = Counter()
    bytes_by_type: Counter[str] = Counter()
    retries = 0
    wft_failures = 0
    activity_timeouts = 0
    run_times: dict[str, list[float]] = {}  # activity type -> started..closed seconds

    async def one(wid: str) -> None:
        nonlocal retries, wft_failures, activity_timeouts
        async with sem:
            hist = await client.get_workflow_handle(wid).fetch_history()
        if keep is not None:
            keep.append(hist)
        lengths.append(len(hist.events))
        sizes.append(sum(e.ByteSize() for e in hist.events))
        kinds: dict[int, str] = {}
        started: dict[int, float] = {}
        for e in hist.events:
            name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
            by_type[name] += 1
            bytes_by_type[name] += e.ByteSize()
            ts = e.event_time.ToDatetime().timestamp()
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                kinds[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started[e.activity_task_started_event_attributes.scheduled_event_id] = ts
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                sched = e.activity_task_completed_event_attributes.scheduled_event_id
                if sched in started:
                    run_times.setdefault(kinds.get(sched, "?"), []).append(ts - started[sched])
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and (
                e.activity_task_started_event_attributes.attempt > 1
            ):
                retries += 1
            if e.event_type in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            ):
                wft_failures += 1
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                activity_timeouts += 1

    await asyncio.gather(*(one(w) for w in workflow_ids))
    n = max(len(lengths), 1)
    return {
        "workflows": len(lengths),
        "events_mean": mean(lengths),
        "events_min": min(lengths, default=0),
        "events_max": max(lengths, default=0),
        "bytes_mean": mean(sizes),
        "by_type": {k: round(v / n, 2) for k, v in by_type.most_common()},
        "bytes_by_type": {k: round(v / n) for k, v in bytes_by_type.most_common()},
        "activity_run_s": {
            k: {"p99": round(pct(v, 99), 3), "max": round(max(v), 3)}
            for k, v in sorted(run_times.items())
        },
        "activity_retries": retries,
        "activity_timeouts": activity_timeouts,
        "workflow_task_failures": wft_failures,
    }


# --------------------------------------------------------------------------- hold proxy


class HoldProxy:
    """Forwards `/lenders/...` to the lender simulator; while holding, requests wait."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0
        self.forwarded = 0
        self._http = httpx.AsyncClient(timeout=30, trust_env=False)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def _forward(self, request: Request) -> Response:
        if not self.gate.is_set():
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        body = await request.body()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "idempotency-key")
        }
        r = await self._http.request(
            request.method, self.target + request.url.path, content=body, headers=headers
        )
        self.forwarded += 1
        return Response(
            r.content, status_code=r.status_code, media_type=r.headers.get("content-type")
        )

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.release()
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 10)
        await self._http.aclose()


# --------------------------------------------------------------------------- the stack


@dataclasses.dataclass
class Proc:
    """An extra process the benchmark started (a floor worker, a tuned worker)."""

    name: str
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid


class BenchStack:
    """One private DealFlow stack: `async with BenchStack(...) as s:`."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        proxy: bool = False,
        env: dict[str, str] | None = None,
        worker: bool = True,
        src: Path = ROOT,
    ) -> None:
        self.name = name
        self.data_dir = root / name
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        taken: set[int] = set()
        self.temporal_port = free_port(taken)
        self.ui_port = free_port(taken)
        self.api_port = free_port(taken)
        self.sim_port = free_port(taken)
        self.lenders_file = self.data_dir / "lenders.toml"
        # With `proxy`, lender calls go through a HoldProxy in this process (benchmark 5).
        self.proxy = HoldProxy(self.sim_url) if proxy else None
        self.set_lender_url(self.proxy.url if self.proxy else self.sim_url)
        base = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        base.update(
            {
                "DEALFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
                "DEALFLOW_TEMPORAL_UI_PORT": str(self.ui_port),
                "DEALFLOW_API_PORT": str(self.api_port),
                "DEALFLOW_LENDER_SIM_PORT": str(self.sim_port),
                "DEALFLOW_LENDERS_FILE": str(self.lenders_file),
                "DEALFLOW_TASK_QUEUE": "deals",
                # Its own metrics port: a stack of `make up` may hold the default.
                "DEALFLOW_WORKER_METRICS_PORT": str(free_port()),
            }
        )
        base.update(env or {})
        # `src`: the code the processes run (bench.run passes a snapshot of the tree).
        self.cfg = StackConfig.from_env(self.data_dir, base, root=src)
        comps = components(self.cfg)
        self.comps = [
            # The lender answers at once: the benchmarks measure DealFlow, not a lender.
            dataclasses.replace(c, argv=(*c.argv, "--decision-delay", "0"))
            if c.name == "lender_sim"
            else c
            for c in comps
            if worker or c.name != "worker"
        ]
        self.settings = Settings(
            temporal_address=self.cfg.temporal_address,
            task_queue=self.cfg.task_queue,
            lenders_file=self.lenders_file,
            api_port=self.api_port,
            lender_sim_port=self.sim_port,
            database_url=self.cfg.env["DEALFLOW_DATABASE_URL"],
            document_store=self.cfg.env["DEALFLOW_DOCUMENT_STORE"],
        )
        self.lenders = load_lenders(self.lenders_file)
        self.store: DocumentStore = store_from_settings(self.settings)
        self.client: Client | None = None
        self.plain_client: Client | None = None
        self.extra: list[Proc] = []

    def set_lender_url(self, url: str) -> None:
        """Point every lender of the lenders file at `url`/lenders/<id>."""
        text = EXAMPLE_LENDERS.read_text(encoding="utf-8").replace(
            "http://127.0.0.1:8100", url.rstrip("/")
        )
        self.lenders_file.write_text(text, encoding="utf-8")

    # -- lifecycle

    async def __aenter__(self) -> BenchStack:
        say(
            f"[{self.name}] stack up in {self.data_dir} (temporal :{self.temporal_port}, "
            f"api :{self.api_port}, lender sim :{self.sim_port})"
        )
        try:
            if self.proxy is not None:
                await self.proxy.start()
            await asyncio.to_thread(lifecycle.up, self.cfg, self.comps, out=lambda s: None)
            self.client = await deals.connect(self.settings)
            # The floor runs on the SDK's plain pydantic converter: no payload codec.
            self.plain_client = await Client.connect(
                self.cfg.temporal_address,
                namespace=self.cfg.namespace,
                data_converter=pydantic_data_converter,
            )
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for p in list(self.extra):
            self.stop_extra(p)
        await asyncio.to_thread(lifecycle.down, self.cfg, self.comps, out=lambda s: None)
        if self.proxy is not None:
            await self.proxy.stop()

    def driver(self) -> Driver:
        """The back office for this stack's deals: its client, store, lenders
        and queue, waiting on its read model."""
        assert self.client is not None
        return Driver(
            self.client,
            self.store,
            self.lenders,
            self.settings.task_queue,
            self.sim_url,
            database_url=self.settings.database_url,
        )

    def pid(self, name: str) -> int | None:
        comp = next((c for c in self.comps if c.name == name), None)
        return None if comp is None else processes.running_pid(self.cfg, comp)

    def component(self, name: str) -> Component:
        return next(c for c in self.comps if c.name == name)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.cfg.env)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def log(self, name: str) -> Path:
        return self.cfg.log_file(name)

    # -- the deal worker: stop, kill, start again

    def kill_worker(self) -> None:
        pid = self.pid("worker")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while procfs.pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        self.cfg.pid_file("worker").unlink(missing_ok=True)

    def stop_worker(self) -> str:
        pid = self.pid("worker")
        if pid is None:
            return "not running"
        how = processes.stop_pid(pid)
        self.cfg.pid_file("worker").unlink(missing_ok=True)
        return how

    def start_worker(self, wait: bool = True) -> int:
        comp = self.component("worker")
        self.cfg.worker_ready_file.unlink(missing_ok=True)
        proc, _ = processes.start_process(self.cfg, comp)
        if wait:
            self.wait_ready(comp, proc)
        return proc.pid

    def wait_ready(self, comp: Component, proc: subprocess.Popen[bytes]) -> None:
        health, code = processes.wait_healthy(comp, proc.pid, proc, 60)
        if not health.ok:
            raise RuntimeError(f"{comp.name} did not become healthy: {health.detail}")

    # -- extra processes (floor worker, tuned worker)

    def start_extra(
        self,
        name: str,
        argv: Sequence[str],
        task_queue: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Proc:
        """Start `argv` in the stack's environment; healthy when it polls `task_queue`."""
        cfg = dataclasses.replace(
            self.cfg,
            task_queue=task_queue or self.cfg.task_queue,
            env={**self.cfg.env, **(env or {})},
        )
        comp = Component(
            name=name,
            argv=tuple(argv),
            signature=tuple(argv[1:3]),
            ports=(),
            port_hint="",
            health=lambda pid: worker_health(cfg, pid),
            timeout=60,
        )
        proc, _ = processes.start_process(cfg, comp)
        p = Proc(name, proc)
        self.extra.append(p)
        if wait:
            self.wait_ready(comp, proc)
        return p

    def ensure_extra(self, name: str, argv: Sequence[str], task_queue: str) -> Proc:
        """The running extra process `name`, started if it is not (quick mode shares stacks)."""
        for p in self.extra:
            if p.name == name and p.popen.poll() is None:
                return p
        return self.start_extra(name, argv, task_queue=task_queue)

    def stop_extra(self, p: Proc, kill: bool = False) -> None:
        if p.popen.poll() is None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            else:
                processes.stop_pid(p.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(10)
        self.cfg.pid_file(p.name).unlink(missing_ok=True)
        if p in self.extra:
            self.extra.remove(p)

    async def wait_idle(
        self,
        names: Sequence[str],
        below: float = 0.03,
        quiet_for: float = 3.0,
        limit: float = 600.0,
        step: float = 0.5,
    ) -> float:
        """Wait until the named processes together use < `below` of a core for `quiet_for` s.
        Returns the seconds waited."""
        pids = {n: self.pid(n) for n in names}
        started = time.monotonic()
        quiet_since: float | None = None
        last = sum(cpu_seconds(p) for p in pids.values())
        while time.monotonic() - started < limit:
            await asyncio.sleep(step)
            now = sum(cpu_seconds(p) for p in pids.values())
            busy = (now - last) / step
            last = now
            if busy < below:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_for:
                    break
            else:
                quiet_since = None
        return time.monotonic() - started


def python() -> str:
    return sys.executable


@dataclasses.dataclass
class Ctx:
    """What every benchmark gets from `bench.run`."""

    root: Path  # scratch: one data dir per benchmark under it
    results_dir: Path
    quick: bool = False
    src: Path = ROOT  # the code the stacks run: a snapshot taken by bench.run, or the tree
    profile: bool = False  # py-spy the workers/API during the measured phases
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)

    _quick_stack: BenchStack | None = None

    @asynccontextmanager
    async def stack(self, name: str, proxy: bool = False) -> AsyncIterator[BenchStack]:
        """A fresh stack per benchmark; under --quick one stack shared by all (started
        once with the proxy, stopped by `aclose`), since stack start-up would dominate."""
        if not self.quick:
            async with BenchStack(self.root, name, proxy=proxy, src=self.src) as s:
                yield s
            return
        if self._quick_stack is None:
            self._quick_stack = await BenchStack(
                self.root, "quick", proxy=True, src=self.src
            ).__aenter__()
        yield self._quick_stack

    async def aclose(self) -> None:
        if self._quick_stack is not None:
            await self._quick_stack.aclose()
            self._quick_stack = None

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def judge(self, ok: bool) -> bool | None:
        """A target is judged only at full size: --quick proves the harness, not the figure."""
        return None if self.quick else bool(ok)
