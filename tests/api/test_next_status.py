"""The long-poll status read, `GET /api/deals/{id}/next-status` (issue 15).

Over real HTTP against the real app, a Temporal dev server and a worker. The
app's Temporal client counts the status queries it sends (a client
interceptor on a real client), so each test can say how often the deal was
asked: once per wait, however long it waited. Also the CLI's `status --wait`
through the API, the benchmarks' driver waiting on the read model, and the
watch and the API's server ending every wait when they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from temporalio import client as temporal
from temporalio.testing import WorkflowEnvironment

import starter
from bench.bench_driver import Driver
from dealflow.api.__main__ import FlushingServer
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.api.errors import Problem
from dealflow.api.status_waits import StatusWaits
from dealflow.deal_wait import ReadModelWatch
from dealflow.models import Role, Stage
from tests.support.api_stack import ApiStack, HttpDesk, api_stack
from tests.support.servers import free_port

PROBLEM = "application/problem+json"
NO_DEAL = "20990101-00000000"


class QueryCounter(temporal.Interceptor):
    """Counts the workflow queries sent through the client it is given to."""

    def __init__(self) -> None:
        self.queries = 0

    def intercept_client(self, next: temporal.OutboundInterceptor) -> temporal.OutboundInterceptor:
        counter = self

        class Counting(temporal.OutboundInterceptor):
            async def query_workflow(self, input: temporal.QueryWorkflowInput) -> Any:
                counter.queries += 1
                return await super().query_workflow(input)

        return Counting(next)


@pytest.fixture(scope="module")
def counter() -> QueryCounter:
    return QueryCounter()


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path, counter: QueryCounter
) -> AsyncIterator[ApiStack]:
    config = dev_env.client.config()
    config["interceptors"] = [counter]
    client = temporal.Client(**config)
    async with api_stack(client, database_url, tmp_session) as s:
        yield s


async def projected_deal(stack: ApiStack, dealer_id: str | None = None) -> HttpDesk:
    """A deal in CONTRACT whose row the read model holds."""
    desk = HttpDesk(stack)
    await desk.start(dealer_id)
    deadline = time.monotonic() + 20
    while await ReadModelWatch(stack.engine).mark(desk.deal_id) is None:
        assert time.monotonic() < deadline, "the deal was never projected"
        await asyncio.sleep(0.05)
    return desk


def next_status(
    http: httpx.AsyncClient, deal_id: str, **params: Any
) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(http.get(f"/api/deals/{deal_id}/next-status", params=params))


async def test_answers_promptly_once_the_stage_changes_asking_the_deal_once(
    stack: ApiStack, counter: QueryCounter
) -> None:
    desk = await projected_deal(stack)
    credit = stack.http(Role.CREDIT)
    before = counter.queries
    waiting = next_status(credit, desk.deal_id, after_stage="CONTRACT", wait=20)
    await asyncio.sleep(1.0)
    assert not waiting.done()
    assert counter.queries == before, "the wait asked the deal while nothing changed"
    await desk.ok("sign-sales-contract", Role.SALES)
    signed = time.monotonic()
    answer = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - signed < 2.0
    assert answer.status_code == 200, answer.text
    assert answer.headers["Wait-Outcome"] == "changed"
    body = answer.json()
    assert body["stage"] == "DOCUMENTS" and body["deal_id"] == desk.deal_id
    # One query for the answer, one for the action's own status.
    assert counter.queries - before == 2
    # The body is GET /api/deals/{id}'s for the same role.
    plain = await credit.get(f"/api/deals/{desk.deal_id}")
    assert body == plain.json()


async def test_times_out_with_the_status_as_it_is(stack: ApiStack, counter: QueryCounter) -> None:
    desk = await projected_deal(stack)
    sales = stack.http(Role.SALES)
    before, started = counter.queries, time.monotonic()
    answer = await sales.get(
        f"/api/deals/{desk.deal_id}/next-status", params={"after_stage": "CONTRACT", "wait": 1}
    )
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.headers["Wait-Outcome"] == "timeout"
    assert answer.json()["stage"] == "CONTRACT"
    assert 1.0 <= took < 3.0, took
    assert counter.queries - before == 1


async def test_waits_for_a_version_past_the_one_named(stack: ApiStack) -> None:
    desk = await projected_deal(stack)
    auditor = stack.http(Role.AUDITOR)
    version = (await desk.status())["version"]
    path = f"/api/deals/{desk.deal_id}/next-status"
    older = await auditor.get(path, params={"after_version": version - 1, "wait": 5})
    assert older.headers["Wait-Outcome"] == "changed" and older.json()["version"] == version
    same = await auditor.get(path, params={"after_version": version, "wait": 0.5})
    assert same.headers["Wait-Outcome"] == "timeout" and same.json()["version"] == version
    # A stage already left answers at once.
    started = time.monotonic()
    left = await auditor.get(path, params={"after_stage": "DOCUMENTS", "wait": 20})
    assert left.headers["Wait-Outcome"] == "changed" and time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"wait": 1}, "say what to wait for: after_stage"),
        ({"after_stage": "LIMBO"}, "query.after_stage: Input should be"),
        (
            {"after_stage": "CONTRACT", "wait": 31},
            "query.wait: Input should be less than or equal to 30",
        ),
        (
            {"after_stage": "CONTRACT", "wait": -1},
            "query.wait: Input should be greater than or equal to 0",
        ),
        ({"after_version": -1}, "query.after_version: Input should be greater than or equal to 0"),
        ({"after_version": "newest"}, "query.after_version: Input should be a valid integer"),
    ],
)
async def test_refuses_bad_parameters_precisely(
    stack: ApiStack, params: dict[str, Any], words: str
) -> None:
    answer = await stack.http(Role.SALES).get(f"/api/deals/{NO_DEAL}/next-status", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert words in answer.json()["detail"]


async def test_reads_as_get_deal_does_for_tokens_and_dealers(stack: ApiStack) -> None:
    desk = await projected_deal(stack, dealer_id="WAIT-A")
    path = f"/api/deals/{desk.deal_id}/next-status"
    params: dict[str, Any] = {"after_stage": "DOCUMENTS", "wait": 0}
    no_token = await stack.http().get(path, params=params)
    assert no_token.status_code == 401
    other_dealer = stack.http(token=stack.token(Role.SALES, "sales.b", dealers=["WAIT-B"]))
    hidden = await other_dealer.get(path, params=params)
    unknown = await other_dealer.get(f"/api/deals/{NO_DEAL}/next-status", params=params)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["detail"].replace(desk.deal_id, "ID") == unknown.json()["detail"].replace(
        NO_DEAL, "ID"
    )
    own_dealer = stack.http(token=stack.token(Role.SALES, "sales.a", dealers=["WAIT-A"]))
    seen = await own_dealer.get(path, params=params)
    assert seen.status_code == 200 and seen.headers["Wait-Outcome"] == "changed"


async def test_caps_the_waits_of_one_person_and_frees_them_as_clients_leave(
    stack: ApiStack,
) -> None:
    desk = await projected_deal(stack)
    path = f"/api/deals/{desk.deal_id}/next-status"
    per_subject = stack.services.settings.status_waits_per_subject
    token = stack.token(Role.SALES, "sales.patient")
    clients = [stack.http(token=token) for _ in range(per_subject)]
    waits = [next_status(c, desk.deal_id, after_stage="CONTRACT", wait=20) for c in clients]
    deadline = time.monotonic() + 5
    while stack.services.status_waits.open_waits("sales.patient") < per_subject:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    refused = await stack.http(token=token).get(path, params={"after_stage": "CONTRACT"})
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "5"
    assert f"you have {per_subject} status waits open" in refused.json()["detail"]
    # Someone else still waits (and here is answered at once).
    other = await stack.http(Role.SALES).get(path, params={"after_stage": "DOCUMENTS"})
    assert other.status_code == 200
    # The patient person gives up: closing the connections ends the waits.
    for wait in waits:
        wait.cancel()
    for c in clients:
        await c.aclose()
    deadline = time.monotonic() + 5
    while stack.services.status_waits.open_waits("sales.patient"):
        assert time.monotonic() < deadline, "a wait outlived its client"
        await asyncio.sleep(0.05)
    again = await stack.http(token=token).get(path, params={"after_stage": "CONTRACT", "wait": 0})
    assert again.status_code == 200


async def test_the_cli_waits_for_the_next_stage_through_the_api(stack: ApiStack) -> None:
    desk = await projected_deal(stack)
    token = stack.token(Role.SALES, "sales.cli")
    argv = ["--json", "--api", stack.api_url, "--token", token, "status", desk.deal_id]

    def run(*more: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = starter.main([*argv, *more])
        return code, out.getvalue()

    code, printed = await asyncio.to_thread(run, "--wait", "0.5")
    assert code == 0 and json.loads(printed)["stage"] == "CONTRACT"
    waiting = asyncio.create_task(asyncio.to_thread(run, "--wait", "20"))
    await asyncio.sleep(1.0)
    await desk.ok("sign-sales-contract", Role.SALES)
    code, printed = await asyncio.wait_for(waiting, 10)
    assert code == 0 and json.loads(printed)["stage"] == "DOCUMENTS"


async def test_the_bench_driver_asks_only_when_the_read_model_moves(stack: ApiStack) -> None:
    settings = stack.services.settings
    driver = Driver(
        stack.services.client,
        stack.store,
        stack.lenders,
        stack.task_queue,
        stack.sim_url,
        database_url=settings.database_url,
    )
    try:
        deal_id = await driver.start()
        start = await driver.status(deal_id)
        asked = driver.queries
        with pytest.raises(TimeoutError, match="no miracle within 1s"):
            await driver.wait(deal_id, lambda _: False, "miracle", limit=1.0)
        assert driver.queries - asked == 2  # the first look and the last
        await driver.to_underwriting(deal_id)
        asked = driver.queries
        approved = await driver.approved(deal_id)
        assert approved.stage is Stage.DOWN_PAYMENT
        # A query at the start and one per projected version at most, not one per poll.
        assert driver.queries - asked <= 1 + approved.version - start.version
    finally:
        await driver.aclose()


async def test_closing_the_watch_ends_every_wait_at_once(stack: ApiStack) -> None:
    watch = ReadModelWatch(stack.engine)
    waits = [
        asyncio.create_task(watch.wait(NO_DEAL, lambda mark: mark is not None, 30))
        for _ in range(3)
    ]
    await asyncio.sleep(0.3)
    assert watch.waiting == 3
    started = time.monotonic()
    watch.close()
    assert await asyncio.wait_for(asyncio.gather(*waits), 2) == [False, False, False]
    assert time.monotonic() - started < 1.0
    assert await watch.wait(NO_DEAL, lambda mark: True, 5) is False


async def test_stopping_the_server_answers_the_open_waits_at_once(stack: ApiStack) -> None:
    """uvicorn lets open requests finish before it stops: the API's server ends
    the waits first, so a long poll does not hold a deploy for 30 s."""
    desk = await projected_deal(stack)
    services = Services(
        settings=stack.services.settings,
        client=stack.services.client,
        engine=stack.engine,
        lenders=stack.lenders,
        store=stack.store,
    )
    port = free_port()
    config = uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_config=None)
    server = FlushingServer(config, services.status_waits.close)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done()
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=stack.headers(Role.SALES), trust_env=False
    ) as http:
        waiting = next_status(http, desk.deal_id, after_stage="CONTRACT", wait=30)
        while services.status_waits.open_waits("sales-01") == 0:
            assert not waiting.done(), waiting.result().text
            await asyncio.sleep(0.05)
        started = time.monotonic()
        server.should_exit = True
        answer = await asyncio.wait_for(waiting, 5)
        await asyncio.wait_for(serving, 5)
    assert time.monotonic() - started < 3.0
    assert answer.status_code == 200 and answer.headers["Wait-Outcome"] == "timeout"
    assert answer.json()["stage"] == "CONTRACT"


async def test_the_server_caps_the_waits_of_everyone_together(stack: ApiStack) -> None:
    settings = stack.services.settings.model_copy(update={"status_waits_total": 3})
    waits = StatusWaits(settings, ReadModelWatch(stack.engine))
    with waits.slot("li"), waits.slot("li"), waits.slot("wang"):
        with pytest.raises(Problem) as refused, waits.slot("zhao"):
            pass
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "5"}
        assert "too many status waits are open on this server" in refused.value.detail
    with waits.slot("zhao"):
        assert waits.open_waits("zhao") == 1 and waits.open_waits("li") == 0
