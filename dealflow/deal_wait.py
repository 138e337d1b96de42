"""Waiting for a deal to change without asking the deal over and over.

A status query is a workflow task on a worker; polling it while a deal waits
for its lender costs one per poll. The read model (`dealflow.storage.db`)
holds each deal's `version` and `stage`, written by the workflow after every
change, so a waiter watches that row instead, with one shared, cheap read per
tick for every deal watched in the process, and asks the deal for its status
once the row shows the change it waits for. The API's long-poll route, the
CLI's `status --wait` and the benchmarks' driver all wait this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from dealflow.models import DealStatus, Stage
from dealflow.storage import db

log = logging.getLogger("dealflow.deal_wait")

# The longest wait one request may ask for: a client wanting longer asks again.
MAX_WAIT_SECONDS = 30.0
# The read model is read this often while anything waits: a change is seen
# within this much of its projection, at one indexed read per tick however many wait.
POLL_SECONDS = 0.15
# How often a wait looks up from the read model to ask whether its client is gone.
SLICE_SECONDS = 1.0


@dataclass(frozen=True)
class Change:
    """What a waiter waits for: the deal's stage other than `stage`, or its
    version past `version`; either, when both are given."""

    stage: Stage | None = None
    version: int | None = None

    def seen_in(self, version: int, stage: Stage) -> bool:
        return (self.stage is not None and stage is not self.stage) or (
            self.version is not None and version > self.version
        )


@dataclass(frozen=True)
class Awaited:
    """The deal's status when the wait ended, and whether it shows the change."""

    status: DealStatus
    changed: bool


MarkTest = Callable[[db.DealMark | None], bool]


@dataclass(eq=False)
class _Waiter:
    test: MarkTest
    done: asyncio.Event = field(default_factory=asyncio.Event)
    seen: bool = False


class ReadModelWatch:
    """Every wait of one process on one poll of the read model.

    The poll runs only while someone waits, reads the rows of the deals
    waited on in one statement, and wakes each waiter whose test passes.
    `close()` (the server shutting down) ends every wait at once, unchanged.
    """

    def __init__(self, engine: Engine, every: float = POLL_SECONDS) -> None:
        self.engine = engine
        self.every = every
        self._waiters: dict[str, list[_Waiter]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    async def mark(self, deal_id: str) -> db.DealMark | None:
        """The deal's row as it is now (None: not projected yet, or no such deal)."""
        marks = await asyncio.to_thread(db.deal_marks, self.engine, [deal_id])
        return marks.get(deal_id)

    async def wait(self, deal_id: str, test: MarkTest, within: float) -> bool:
        """True once `test` passes on the deal's row (None while it has none);
        False if `within` seconds pass first or the watch is closed."""
        if self._closed or within <= 0:
            return False
        waiter = _Waiter(test)
        self._waiters.setdefault(deal_id, []).append(waiter)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="read-model-watch")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await waiter.done.wait()
        finally:
            self._forget(deal_id, waiter)
        return waiter.seen

    def close(self) -> None:
        self._closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.done.set()

    def _forget(self, deal_id: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(deal_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(deal_id, None)

    async def _poll(self) -> None:
        try:
            while self._waiters and not self._closed:
                await self._tick()
                await asyncio.sleep(self.every)
        finally:
            self._poller = None

    async def _tick(self) -> None:
        try:
            marks = await asyncio.to_thread(db.deal_marks, self.engine, list(self._waiters))
        except Exception:  # noqa: BLE001 - a database blip must not end every wait
            log.warning("read-model watch: reading the deals failed", exc_info=True)
            return
        for deal_id, waiters in list(self._waiters.items()):
            mark = marks.get(deal_id)
            for waiter in waiters:
                if not waiter.done.is_set() and waiter.test(mark):
                    waiter.seen = True
                    waiter.done.set()


ReadStatus = Callable[[], Awaitable[DealStatus]]
Gone = Callable[[], Awaitable[bool]]


async def next_status(
    watch: ReadModelWatch,
    deal_id: str,
    change: Change,
    within: float,
    read_status: ReadStatus,
    *,
    known: DealStatus | None = None,
    gone: Gone | None = None,
) -> Awaited | None:
    """The deal's status once it shows `change`, or as it is after `within`
    seconds (`changed` False); None if `gone()` says the client left first.

    `read_status` (a status query) is called only when the read model shows
    the change, and once more at the end if it never does. `known` is a status
    the caller has just read: the read model must then get past its version,
    so a row that lags behind the deal does not count as a change.
    """
    deadline = time.monotonic() + within
    status = known
    while True:
        if status is not None and change.seen_in(status.version, status.stage):
            return Awaited(status, True)
        floor = status.version if status is not None else -1
        seen = await _watch_until(watch, deal_id, change, floor, deadline, gone)
        if seen is None:
            return None
        status = await read_status()
        if not seen:
            return Awaited(status, change.seen_in(status.version, status.stage))


async def _watch_until(
    watch: ReadModelWatch,
    deal_id: str,
    change: Change,
    floor: int,
    deadline: float,
    gone: Gone | None,
) -> bool | None:
    """Whether the row showed `change` past version `floor` before `deadline`
    (None: the client is gone). Watched in slices, to notice a client leaving."""

    def test(mark: db.DealMark | None) -> bool:
        return (
            mark is not None and mark.version > floor and change.seen_in(mark.version, mark.stage)
        )

    while (remaining := deadline - time.monotonic()) > 0:
        if await watch.wait(deal_id, test, min(remaining, SLICE_SECONDS)):
            return True
        if watch.closed:
            return False
        if gone is not None and await gone():
            return None
    return False
