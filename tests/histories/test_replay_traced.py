"""The replay gate with tracing on: every committed history of the current
code replays with DealFlow's tracing interceptor (dealflow/tracing_sdk.py) on
the replayer, as it would on a traced worker rebuilding an evicted deal, both
as recorded (untraced) and with a caller's trace header on the start, every
update and every signal, as a traced API sends them. A replayed history makes
no span: its spans were made when the events first happened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import PayloadConverter

from dealflow.tracing_sdk import ActiveTracing, provider_for
from tests.support.replay import CURRENT, HISTORIES_DIR, replayer

TRACE_HEADER = "_tracer-data"
CALLER = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[ActiveTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = ActiveTracing(provider_for(exporter, "dealflow-replay"))
    yield tracing, exporter
    tracing.shutdown()


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"deal-{path.stem}", json.loads(path.read_text("utf-8")))


def with_caller_headers(history: WorkflowHistory) -> tuple[WorkflowHistory, int]:
    """The history as a traced caller would have made it; how many headers it got."""
    [header] = PayloadConverter.default.to_payloads([CALLER])
    carried = 0
    for event in history.events:
        for fields in _headers(event):
            fields[TRACE_HEADER].CopyFrom(header)
            carried += 1
    return history, carried


def _headers(event: HistoryEvent) -> Iterator[Any]:
    """The header fields of the events a caller's header arrives on."""
    if event.HasField("workflow_execution_started_event_attributes"):
        yield event.workflow_execution_started_event_attributes.header.fields
    if event.HasField("workflow_execution_signaled_event_attributes"):
        yield event.workflow_execution_signaled_event_attributes.header.fields
    if event.HasField("workflow_execution_update_accepted_event_attributes"):
        accepted = event.workflow_execution_update_accepted_event_attributes
        yield accepted.accepted_request.input.header.fields


@pytest.mark.parametrize("path", CURRENT, ids=[str(p.relative_to(HISTORIES_DIR)) for p in CURRENT])
async def test_history_replays_with_tracing_on(
    path: Path, traced: tuple[ActiveTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = traced
    history_replayer = replayer(interceptors=[tracing.interceptor])
    as_recorded = await history_replayer.replay_workflow(
        _history(path), raise_on_replay_failure=False
    )
    assert as_recorded.replay_failure is None, f"{path.name}: {as_recorded.replay_failure}"
    history, carried = with_caller_headers(_history(path))
    assert carried >= 1
    as_traced = await history_replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert as_traced.replay_failure is None, f"{path.name} traced: {as_traced.replay_failure}"
    tracing.force_flush()
    assert not exporter.get_finished_spans()
