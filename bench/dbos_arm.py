"""Benchmark 1's DBOS arm: a scratch database, the DBOS floor's process, its senders.

`DbosArm.open` gives an arm that is either ready (its process serving, a
sender connected) or unavailable with the reason (PostgreSQL unreachable, dbos
not installed, the process did not start), so benchmark 1 reports the row
without a value instead of failing. The server's CPU for this arm is that of
the PostgreSQL backends serving the scratch database (local server only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import floor_dbos
from bench.bench_stack import BenchStack, Proc, cpu_seconds, python, say
from bench.floor import FloorPlan


class DbosArm:
    def __init__(self, note: str = "") -> None:
        self.note = note  # why the arm cannot run; empty when it can
        self.url = ""
        self.proc: Proc | None = None
        self.sender: floor_dbos.Sender | None = None
        self.pool: ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        return self.sender is not None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def drive(self, workflow_id: str, plan: FloorPlan, latencies: list[float]) -> str:
        assert self.sender is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, self.sender.drive, workflow_id, plan, latencies
        )

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds of each PostgreSQL backend connected to the scratch database."""
        if not self.url:
            return {}
        from sqlalchemy.engine import make_url

        name = make_url(self.url).database
        with floor_dbos._admin(floor_dbos.postgres_url()) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchall()
        return {int(r[0]): cpu_seconds(int(r[0])) for r in rows}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, s: BenchStack, concurrency: int) -> AsyncIterator[DbosArm]:
        try:
            import dbos  # noqa: F401
        except ImportError:
            yield cls("dbos is not installed (pip install -e '.[bench]')")
            return
        url = floor_dbos.postgres_url()
        scratch = contextlib.ExitStack()
        try:
            db_url = scratch.enter_context(floor_dbos.scratch_database(url))
        except Exception as e:  # psycopg's errors: unreachable, refused, no rights
            yield cls(f"PostgreSQL unreachable at {floor_dbos.shown(url)}: {type(e).__name__}")
            return
        with scratch:
            arm = cls()
            arm.url = db_url
            try:
                await arm._start(s, concurrency)
                yield arm
            finally:
                arm._stop(s)

    async def _start(self, s: BenchStack, concurrency: int) -> None:
        ready = s.data_dir / "dbos_floor.ready"
        argv = [python(), "-m", "bench.floor_dbos", "worker", "--database-url", self.url]
        argv += ["--ready", str(ready), "--concurrency", str(max(concurrency * 2, 10))]
        self.proc = s.start_extra("dbos_floor", argv, wait=False)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.popen.poll() is not None or time.monotonic() > deadline:
                self.note = f"the DBOS floor did not start: {_tail(s.log('dbos_floor'))}"
                return
            await asyncio.sleep(0.1)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dbos-send")
        self.sender = await asyncio.to_thread(floor_dbos.Sender, self.url, concurrency)
        say(
            f"[1] DBOS floor on a scratch database of {floor_dbos.shown(floor_dbos.postgres_url())}"
        )

    def _stop(self, s: BenchStack) -> None:
        if self.sender is not None:
            with contextlib.suppress(Exception):
                self.sender.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.proc is not None:
            s.stop_extra(self.proc)


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace").strip().splitlines()[-1][-200:]
    return "no log"


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU of the backends between two readings; a backend that appeared counts from 0."""
    return sum(v - before.get(p, 0.0) for p, v in after.items())
