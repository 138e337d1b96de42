"""The DBOS floor: the reference floor's shape written on DBOS, the peer of benchmark 1.

One DBOS workflow per deal with one step per activity of the reference plan
(all activities regular: a DBOS step is a durable write to PostgreSQL, as a
Temporal activity is a round trip through the server) and one message
(`DBOS.send` / `DBOS.recv`) per update and signal. An update is a request with
a reply, so after receiving an update's message the workflow publishes an event
(`DBOS.set_event`) the sender waits for, as `execute_update` waits for the
update's result; a signal is a message alone. The workflow runs its steps after
answering, as the Temporal floor's update handler schedules its activities and
returns.

The workflows run in their own process (`python -m bench.floor_dbos worker`),
so their CPU is measured apart from the senders, which run in the benchmark
process through `DBOSClient`, as the Temporal arms' clients do. Every run
gets a scratch database on `DEALFLOW_BENCH_POSTGRES_URL`, dropped afterwards.

    python -m bench.floor_dbos worker --database-url URL --ready FILE
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.floor import FloorPlan

POSTGRES_URL_ENV = "DEALFLOW_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
APP_NAME = "dealflow-bench-floor"
QUEUE = "floor"
WORKFLOW_NAME = "dbos_floor"
# The queue is polled for new workflows: at 1 s (DBOS's default) a deal would wait
# half a second on average before it starts, which no Temporal arm does; much
# faster polling costs the DBOS process more CPU than its workflows do.
QUEUE_POLL_S = 0.1

Shape = list[tuple[str, int]]  # (update | signal, steps after it), in order


def shape_of(plan: FloorPlan) -> tuple[int, Shape]:
    """The plan as plain data: steps at start, then (kind, steps) per message."""
    return plan.start_activities, [(s.kind, s.activities) for s in plan.steps]


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def shown(url: str) -> str:
    """The URL without its password, for notes and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _admin(url: str) -> Any:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(plain, autocommit=True, connect_timeout=5)


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new empty database on the server of `url` (its URL), dropped on exit.
    Raises OSError-like psycopg errors when the server cannot be reached."""
    name = f"dealflow_bench_dbos_{uuid.uuid4().hex[:10]}"
    with _admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(url, name)
    finally:
        with _admin(url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- the workflow


def _register() -> None:
    from dbos import DBOS

    @DBOS.step(name="floor_noop")
    def floor_noop(index: int) -> None:
        return None

    @DBOS.workflow(name=WORKFLOW_NAME)
    def dbos_floor(start_steps: int, shape: Shape) -> int:
        for _ in range(start_steps):
            floor_noop(0)
        for i, (kind, steps) in enumerate(shape):
            DBOS.recv(kind, timeout_seconds=120)
            if kind == "update":
                DBOS.set_event(f"step-{i}", i + 1)
            for _ in range(steps):
                floor_noop(i)
        return len(shape)


def worker_main(database_url: str, ready: Path, concurrency: int) -> None:
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": database_url,
        "log_level": "WARNING",
        "sys_db_pool_size": max(20, 2 * concurrency),
    }
    DBOS(config=config)
    _register()
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=concurrency, polling_interval_sec=QUEUE_POLL_S)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready.write_text(str(os.getpid()), encoding="utf-8")
    print(f"dbos floor {os.getpid()} serving queue {QUEUE!r}", flush=True)
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=5)


# --------------------------------------------------------------------------- the sender


class Sender:
    """Starts DBOS floor workflows and sends them their messages (blocking calls:
    the benchmark runs each deal's sender in a thread of its own pool)."""

    def __init__(self, database_url: str, concurrency: int) -> None:
        from dbos import DBOSClient

        self.client = DBOSClient(
            system_database_url=database_url,
            system_database_pool_size=concurrency + 5,
            use_listen_notify=True,
        )

    def close(self) -> None:
        self.client.destroy()

    def drive(self, workflow_id: str, plan: FloorPlan, latencies: list[float] | None = None) -> str:
        """One workflow from start to its result: the same messages as `floor.drive`."""
        start_steps, shape = shape_of(plan)
        handle: Any = self.client.enqueue(
            {"workflow_name": WORKFLOW_NAME, "queue_name": QUEUE, "workflow_id": workflow_id},
            start_steps,
            shape,
        )
        for i, (kind, _) in enumerate(shape):
            t0 = time.monotonic()
            self.client.send(workflow_id, i, kind)
            if kind == "update":
                if self.client.get_event(workflow_id, f"step-{i}", 60) is None:
                    raise TimeoutError(f"{workflow_id}: no reply to update {i} within 60 s")
                if latencies is not None:
                    latencies.append(time.monotonic() - t0)
        handle.get_result()
        return workflow_id


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.floor_dbos")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run the DBOS floor's workflows")
    w.add_argument("--database-url", required=True)
    w.add_argument("--ready", type=Path, required=True, help="written once it serves")
    w.add_argument("--concurrency", type=int, default=100)
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        worker_main(args.database_url, args.ready, args.concurrency)


if __name__ == "__main__":
    main()
