"""A worker for `tests/client/test_update_once.py`: a counter workflow whose signal
keeps the worker busy inside one workflow task, so a test can kill the server
while a worker holds a task that carries a staff-like update.

    python -m tests.support.update_race ADDRESS TASK_QUEUE MARK_FILE
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

# Set by the worker process: the file the busy signal touches when it starts.
MARK: list[Path] = []


@workflow.defn(sandboxed=False)
class CounterWorkflow:
    """Steps are numbered: step N is valid only while the count is N, as a
    DealFlow action is valid only in its stage."""

    def __init__(self) -> None:
        self.count = 0

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.count >= 3)
        return self.count

    @workflow.signal
    def hold_the_task(self, seconds: float) -> None:
        if workflow.unsafe.is_replaying():
            return
        if MARK:
            MARK[0].write_text("busy")
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # keeps this workflow task in the worker's hands
            pass

    @workflow.update
    def step(self, expected: int) -> int:
        self.count += 1
        return self.count

    @step.validator
    def check_step(self, expected: int) -> None:
        if expected != self.count:
            raise ValueError(f"step {expected} is stale: the count is {self.count}")


async def main(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    # debug_mode: the busy signal must not trip the deadlock detector.
    async with Worker(client, task_queue=task_queue, workflows=[CounterWorkflow], debug_mode=True):
        await asyncio.Event().wait()


if __name__ == "__main__":
    MARK.append(Path(sys.argv[3]))
    asyncio.run(main(sys.argv[1], sys.argv[2]))
