"""The DealFlow worker: DealWorkflow and its activities on the configured task queue.

Workers are stateless and scale out horizontally on the same task queue; a
deal's state is its Temporal history, so any worker can pick it up after
another dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker

import workflows
from activities import DealActivities
from dealflow import client as deals
from dealflow import logs, names, startup, tracing, worker_metrics
from dealflow.bytecode import cache_bytecode, cache_imported_bytecode
from dealflow.config import Settings, load_lenders
from dealflow.storage import db
from dealflow.storage.documents import store_from_settings
from workflows import WORKFLOW_RUNNER, DealWorkflow

log = logging.getLogger("dealflow.worker")


def build_worker(
    settings: Settings, client: Client, activities: DealActivities, executor: ThreadPoolExecutor
) -> Worker:
    return Worker(
        deals.worker_client(client),
        task_queue=settings.task_queue,
        workflows=[DealWorkflow],
        activities=activities.all(),
        activity_executor=executor,
        workflow_runner=WORKFLOW_RUNNER,
        # The cache bounds memory (its cost per deal is measured by make bench, README);
        # evicted deals are rebuilt from history on their next event.
        max_cached_workflows=settings.max_cached_workflows,
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        # On SIGTERM running activities get this long to finish; after that
        # they are cancelled and Temporal retries them on another worker.
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
        sticky_queue_schedule_to_start_timeout=timedelta(
            seconds=settings.sticky_schedule_to_start_seconds
        ),
    )


@contextlib.asynccontextmanager
async def reporting(runtime: Runtime | None, engine: Engine) -> AsyncIterator[None]:
    """While the worker polls: the metrics say so and count open and overdue deals."""
    if runtime is None:
        yield
        return
    polling = runtime.metric_meter.create_gauge(
        names.WORKER_POLLING_METRIC, "1 while this worker polls its task queue"
    )
    polling.set(1)
    counts = asyncio.create_task(worker_metrics.report_deal_counts(runtime, engine))
    try:
        yield
    finally:
        polling.set(0)
        counts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counts


async def main() -> None:
    logs.setup()
    cache_bytecode(workflows)
    settings = startup.settings_from_env()
    lenders = load_lenders(settings.lenders_file)
    startup.start_tracing(settings, tracing.SERVICE_WORKER)
    runtime = worker_metrics.metrics_runtime(settings)
    client = await startup.connect_patiently(settings, lambda s: deals.connect(s, runtime=runtime))
    store = store_from_settings(settings)
    activities_http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0))
    engine = db.make_engine(settings.database_url)
    acts = DealActivities(engine, lenders, activities_http, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = settings.data_dir / "worker.ready"
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        worker = build_worker(settings, client, acts, executor)
        async with worker, reporting(runtime, engine):
            ready.parent.mkdir(parents=True, exist_ok=True)
            ready.write_text(str(os.getpid()))
            log.info(
                "worker polling",
                extra={
                    "task_queue": settings.task_queue,
                    "namespace": settings.namespace,
                    "max_cached_workflows": settings.max_cached_workflows,
                },
            )
            # Once polling, so this start is not delayed: the next one (a restart
            # after a crash) reads DealFlow's modules as bytecode (dealflow/bytecode.py).
            await asyncio.to_thread(cache_imported_bytecode, "dealflow", "activities", "workflows")
            await stop.wait()
            log.info(
                "worker shutting down", extra={"grace_seconds": settings.graceful_shutdown_seconds}
            )
        ready.unlink(missing_ok=True)
    await activities_http.aclose()
    # The spans of the last tasks, still batched, go out before the process does.
    tracing.shutdown()
    log.info("worker stopped")


if __name__ == "__main__":
    startup.run("worker", main)
