"""The worker's metrics: the Temporal SDK's own (workflow and activity task
slots, schedule-to-start latency, sticky cache, polls, requests) and DealFlow's,
served together by the SDK's Prometheus exporter at
`http://{DEALFLOW_WORKER_METRICS_HOST}:{DEALFLOW_WORKER_METRICS_PORT}/metrics`.

DealFlow's metrics are recorded through the SDK's meters: the workflow's
(`workflow.metric_meter()`, silent during replay, so a rebuilt deal does not
count its transitions again), the activities' and the runtime's. Their labels
are stages, lender ids, call names, outcomes and compensation kinds — never a
deal id, a name or an amount.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from dealflow import names
from dealflow.config import Settings
from dealflow.models import Stage
from dealflow.startup import StartupError
from dealflow.storage import db

log = logging.getLogger("dealflow.metrics")

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
BUCKETS = {
    # Stages last minutes to weeks (registration may take 60 days).
    names.TIME_IN_STAGE_METRIC: [
        MINUTE,
        HOUR,
        4 * HOUR,
        DAY,
        3 * DAY,
        7 * DAY,
        14 * DAY,
        30 * DAY,
        60 * DAY,
    ],
    # A lender call is a round trip; 30 s is its start-to-close timeout.
    names.LENDER_CALLS_METRIC: [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
}


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A runtime exporting every metric at the worker's metrics address, or
    None when the port is 0 (no exporter)."""
    if not settings.worker_metrics_port:
        return None
    address = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
    prometheus = PrometheusConfig(bind_address=address, histogram_bucket_overrides=BUCKETS)
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=prometheus))
    except ValueError as e:  # the exporter's socket: in use, or not ours to bind
        raise StartupError(
            f"configuration error: DEALFLOW_WORKER_METRICS_PORT: cannot serve metrics at "
            f"{address} ({e}); another worker on this host needs another port, or 0 for none"
        ) from None


async def report_deal_counts(runtime: Runtime, engine: Engine, every: float = 30.0) -> None:
    """Keep the gauges of open and of overdue deals per open stage current (0
    when none), from the read model, until cancelled. Every worker reports the
    same counts: a dashboard takes their max, not their sum."""
    meter = runtime.metric_meter
    open_deals = meter.create_gauge(names.OPEN_DEALS_METRIC, "Open deals, per stage")
    overdue_deals = meter.create_gauge(
        names.OVERDUE_DEALS_METRIC, "Open deals past their next deadline, per stage"
    )
    open_stages = [stage.value for stage in Stage if not stage.terminal]
    while True:
        try:
            opened, overdue = await asyncio.to_thread(_deal_counts, engine, datetime.now(UTC))
        except Exception:  # the database may be down for a while: report next time
            log.warning("open and overdue deals not counted: the read model did not answer")
        else:
            for stage in open_stages:
                label = {"stage": stage}
                open_deals.with_additional_attributes(label).set(opened.get(stage, 0))
                overdue_deals.with_additional_attributes(label).set(overdue.get(stage, 0))
        await asyncio.sleep(every)


def _deal_counts(engine: Engine, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
    return db.open_by_stage(engine), db.overdue_by_stage(engine, now)
