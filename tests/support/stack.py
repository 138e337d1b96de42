"""What every test shares: the paths and binaries, the test codec key, a
worker on a fresh task queue, and the stack of real services around a Temporal
environment (the API and the lender simulator over HTTP). Nothing of Temporal
is mocked."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import workflows
from activities import DealActivities
from dealflow import client as deals
from dealflow import codec
from dealflow.api.app import create_app as create_api
from dealflow.api.deps import Services
from dealflow.bytecode import cache_bytecode
from dealflow.config import (
    LenderConfig,
    Settings,
    load_lenders,
)
from dealflow.storage import db
from dealflow.storage.documents import DocumentStore, LocalDirectoryStore
from sim.lender.app import create_app as create_sim
from sim.lender.config import SimConfig
from tests.support.servers import free_port, serve_async
from workflows import WORKFLOW_RUNNER, DealWorkflow
from workflows.deal import DEAL_STAGE, DEALER_ID, LENDER_ID

BIN = Path(sys.executable).parent
# As worker.py does: the sandbox re-imports the workflow module for each run.
cache_bytecode(workflows)
ROOT = Path(__file__).resolve().parents[2]
SEARCH_ATTRIBUTES = [DEAL_STAGE, DEALER_ID, LENDER_ID]

# Every Temporal client of the suite encrypts with the committed TEST key (the
# one the histories in tests/histories are encrypted with). Exported to the
# environment so processes the tests start (worker, API, CLI) and every
# `Settings()` built in this process use the same key.
TEST_CODEC_KEY_FILE = ROOT / "tests" / "histories" / "test-codec-key"
TEST_CODEC_KEYS = codec.load_keyring(f"file:{TEST_CODEC_KEY_FILE}")
os.environ["DEALFLOW_CODEC_KEYS"] = f"file:{TEST_CODEC_KEY_FILE}"


def codec_data_converter() -> DataConverter:
    """The converter of every test environment and client: pydantic + the test-key codec."""
    return codec.data_converter(TEST_CODEC_KEYS)


@dataclass
class Stack:
    """A Temporal environment with the real API service and lender simulator
    around it: lender webhooks travel signed over HTTP into the deal."""

    env: WorkflowEnvironment
    api_url: str
    sim_url: str
    lenders: dict[str, LenderConfig]
    engine: Engine
    store: LocalDirectoryStore
    api_services: Services


@asynccontextmanager
async def run_stack(
    env: WorkflowEnvironment, database_url: str, store: LocalDirectoryStore, tmp: Path
) -> AsyncIterator[Stack]:
    api_port, sim_port = free_port(), free_port()
    sim_base = f"http://127.0.0.1:{sim_port}"
    lenders = {
        lid: cfg.model_copy(update={"api_base_url": f"{sim_base}/lenders/{lid}"})
        for lid, cfg in load_lenders(ROOT / "examples" / "lenders.toml").items()
    }
    engine = db.make_engine(database_url)
    services = Services(
        settings=Settings(), client=env.client, engine=engine, lenders=lenders, store=store
    )
    sim_config = SimConfig(
        lenders=lenders,
        db_path=tmp / f"lender_sim_{sim_port}.db",
        webhook_base_url=f"http://127.0.0.1:{api_port}",
        decision_delay=0.05,
        retry_initial=0.2,
        retry_max=1.0,
    )
    async with (
        serve_async(create_api(services), api_port) as api_url,
        serve_async(create_sim(sim_config), sim_port) as sim_url,
    ):
        # The lender fetches the funding documents by their links: the store
        # signs them for this API, which serves them (both stacks of a session
        # serve the same store, so either one's links work while it runs).
        store.api_base_url = api_url.rstrip("/")
        yield Stack(env, api_url, sim_url, lenders, engine, store, services)


@asynccontextmanager
async def deal_worker(
    client: Client,
    database_url: str,
    lenders: dict[str, LenderConfig],
    store: DocumentStore,
    task_queue: str | None = None,
    workflows: Sequence[type] = (DealWorkflow,),
) -> AsyncIterator[str]:
    """A worker on a fresh task queue, wired to real DB, store and lender simulator."""
    task_queue = task_queue or f"deals-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=10) as http:
        acts = DealActivities(db.make_engine(database_url), lenders, http, store)
        with ThreadPoolExecutor(max_workers=8) as pool:
            async with Worker(
                deals.worker_client(client),
                task_queue=task_queue,
                workflows=list(workflows),
                activities=acts.all(),
                activity_executor=pool,
                workflow_runner=WORKFLOW_RUNNER,
            ):
                yield task_queue


PG_ENV = "DEALFLOW_TEST_POSTGRES_URL"


def postgres_url() -> str | None:
    return os.environ.get(PG_ENV)


@contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """The URL of a new, empty schema in the PostgreSQL database at `base` (its
    own search_path), dropped afterwards: tests running in parallel never
    share a table."""
    base = db.normalise_url(base)
    schema = f"dealflow_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        db.dispose_engine(url)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
