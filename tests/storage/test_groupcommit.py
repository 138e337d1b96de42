"""Group commit: concurrent writes share transactions, each caller gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from dealflow.storage.groupcommit import GroupCommit


async def test_concurrent_writes_share_batches_and_get_their_own_results() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def write(ops: Sequence[int]) -> list[int]:
        release.wait(5)  # the first batch holds the writer while the rest queue up
        batches.append(list(ops))
        return [op * 10 for op in ops]

    gc: GroupCommit[int, int] = GroupCommit(write)
    first = asyncio.create_task(gc.submit(0))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(gc.submit(i)) for i in range(1, 33)]
    await asyncio.sleep(0.05)
    release.set()
    assert await first == 0
    assert [await t for t in rest] == [i * 10 for i in range(1, 33)]
    assert batches == [[0], list(range(1, 33))], "the 32 queued writes took one commit"
    assert (gc.batches, gc.ops) == (2, 33)
    await gc.aclose()


async def test_a_failed_batch_fails_each_of_its_callers_and_the_writer_goes_on() -> None:
    def write(ops: Sequence[str]) -> list[str]:
        if "bad" in ops:
            raise RuntimeError("database is locked")
        return list(ops)

    gc: GroupCommit[str, str] = GroupCommit(write)
    results = await asyncio.gather(gc.submit("a"), gc.submit("bad"), return_exceptions=True)
    # Both were queued before the writer ran: one batch, so both fail.
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await gc.submit("ok") == "ok"
    await gc.aclose()


async def test_a_batch_never_exceeds_its_limit() -> None:
    sizes: list[int] = []

    def write(ops: Sequence[int]) -> list[int]:
        sizes.append(len(ops))
        return list(ops)

    gc: GroupCommit[int, int] = GroupCommit(write, max_batch=4)
    assert await asyncio.gather(*(gc.submit(i) for i in range(10))) == list(range(10))
    assert max(sizes) <= 4 and sum(sizes) == 10
    await gc.aclose()


async def test_closing_cancels_callers_still_queued() -> None:
    block = threading.Event()

    def write(ops: Sequence[int]) -> list[int]:
        block.wait(5)
        return list(ops)

    gc: GroupCommit[int, int] = GroupCommit(write)
    held = asyncio.create_task(gc.submit(1))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(gc.submit(2))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(gc.aclose())
    block.set()
    await closing
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(asyncio.CancelledError):
        await held
