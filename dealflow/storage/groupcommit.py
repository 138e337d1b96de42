"""Group commit: many concurrent callers, one transaction per batch.

A durable write costs one fsync per commit, and SQLite has a single writer, so
32 webhooks arriving together would queue for 32 commits one after another.
Here each caller's write waits in a queue; one task takes everything queued,
writes it in one transaction (in a thread) and answers every caller. While a
batch is being written the next one gathers, so an idle system adds no delay
and a busy one pays one fsync per batch instead of per request. A caller is
answered only after its batch has committed, so durability is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, write: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 256) -> None:
        """`write(ops)` runs in a thread and returns one result per op, in order."""
        self._write = write
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    async def submit(self, op: T) -> R:
        """Write `op` with whatever else is waiting; its result once committed."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="group-commit")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((op, fut))
        return await fut

    async def aclose(self) -> None:
        """Stop after the batch in hand; callers still queued get CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            fut.cancel()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A caller that gave up meanwhile is written anyway, as a write
            # already in its thread would be; it just is not answered.
            try:
                results = await asyncio.to_thread(self._write, [op for op, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - every caller of the batch gets it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.ops += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
