"""Traces (dealflow/tracing.py): one trace follows a staff action from the
operator CLI's HTTP call through the API's request, the Temporal update and its
handler in the workflow, into the activities the update schedules; the API's
log lines of that request carry its trace id; no span carries a customer's
personal data; and with tracing off nothing of the tracing SDK is loaded.

The spans go to an in-memory exporter behind the same redaction and batching
as the OTLP exporter of a real process; Temporal is the real dev server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.converter import PayloadConverter
from temporalio.testing import WorkflowEnvironment

from dealflow import names, startup, tracing
from dealflow.api.remote import DealFlowAPI
from dealflow.config import ROOT, Settings
from dealflow.logs import JsonFormatter
from dealflow.models import Role
from dealflow.samples import example_action, example_deal
from dealflow.tracing_sdk import ActiveTracing, provider_for
from tests.support.api_stack import ApiStack, HttpDesk, api_stack
from tests.support.replay import replayer

ACTION = "sign-sales-contract"


@dataclass
class Traced:
    stack: ApiStack
    exporter: InMemorySpanExporter
    tracing: ActiveTracing
    client: Client

    def spans(self) -> list[ReadableSpan]:
        self.tracing.force_flush()
        return list(self.exporter.get_finished_spans())

    async def wait_for(
        self, found: Callable[[list[ReadableSpan]], bool], what: str, within: float = 15
    ) -> list[ReadableSpan]:
        deadline = time.monotonic() + within
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                names_seen = sorted({s.name for s in spans})
                raise AssertionError(f"timed out waiting for {what}; spans: {names_seen}")
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def traced(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    active = ActiveTracing(provider_for(exporter, tracing.SERVICE_API))
    tracing.activate(active)
    try:
        # The dev server's client again, with the interceptors the connection
        # factory adds when tracing is on (the API's and the worker's).
        config = dev_env.client.config()
        config["interceptors"] = tracing.temporal_interceptors()
        client = Client(**config)
        async with api_stack(client, database_url, tmp_session) as stack:
            yield Traced(stack, exporter, active, client)
    finally:
        tracing.shutdown()


class Lines(logging.Handler):
    """The log lines as the processes write them (dealflow.logs)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("dealflow")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind is kind)]
    assert len(found) == 1, f"{name}: {len(found)} spans"
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def personal_values() -> dict[str, str]:
    """What a deal says of its customer, and its money."""
    deal = example_deal()
    applicant, spouse = deal.customer.applicant, deal.customer.spouse
    assert spouse is not None
    return {
        "applicant name": applicant.full_name,
        "applicant ID number": applicant.id_number,
        "applicant phone": applicant.phone,
        "applicant phone digits": applicant.phone.replace(" ", "")[3:],
        "spouse name": spouse.full_name,
        "spouse ID number": spouse.id_number,
        "spouse phone": spouse.phone,
        "monthly income": f"{applicant.monthly_income}",
        "price": f"{deal.vehicle.price}",
        "down payment": f"{deal.down_payment}",
        "repayment account": example_action("record-repayment-account")["account_no"],
    }


def everything_said(span: ReadableSpan) -> str:
    """Every text a span exports: name, attributes, events, links, status."""
    parts: list[object] = [span.name, dict(span.attributes or {}), span.status.description]
    parts += [(e.name, dict(e.attributes or {})) for e in span.events]
    parts += [dict(link.attributes or {}) for link in span.links]
    return json.dumps(parts, default=str)


async def test_one_trace_from_the_clis_call_through_the_update_into_its_activities(
    traced: Traced, log_lines: Lines
) -> None:
    desk = HttpDesk(traced.stack)
    deal_id = await desk.start()
    await desk.wait_until(lambda st: st["version"] >= 1, "the deal projected")
    traced.exporter.clear()
    token = traced.stack.token(Role.SALES)
    with DealFlowAPI(traced.stack.api_url, token) as api:
        result = await asyncio.to_thread(api.act, deal_id, ACTION, example_action(ACTION))
    assert result["accepted"], result

    run_projection = f"RunActivity:{names.PROJECT_DEAL}"
    route = f"/api/deals/{{deal_id}}/actions/{ACTION}"
    cli = one(traced.spans(), f"POST {route}", SpanKind.CLIENT)
    spans = await traced.wait_for(
        lambda spans: any(s.name == run_projection and trace_of(s) == trace_of(cli) for s in spans),
        "the projection's run in the action's trace",
    )
    # The deal's start (its own trace) may still be finishing: this trace only.
    spans = [s for s in spans if trace_of(s) == trace_of(cli)]
    request = one(spans, f"POST {route}", SpanKind.SERVER)
    update = one(spans, f"StartWorkflowUpdate:{ACTION}")
    handled = one(spans, f"HandleUpdate:{ACTION}")
    scheduled = one(spans, f"StartActivity:{names.PROJECT_DEAL}")
    ran = one(spans, run_projection)
    chain = [cli, request, update, handled, scheduled, ran]
    assert {trace_of(s) for s in chain} == {trace_of(cli)}, [s.name for s in chain]
    assert parent_of(cli) is None
    # Each the child of the one before: the update handler's span is the
    # client update's child (the stock interceptor would only link it).
    for parent, child in zip(chain, chain[1:], strict=False):
        assert parent_of(child) == span_id(parent), f"{child.name} under {parent.name}"
    assert handled.attributes is not None and update.attributes is not None
    assert handled.attributes["temporalUpdateID"] == update.attributes["temporalUpdateID"]
    assert request.attributes is not None
    assert request.attributes["http.route"] == route
    validated = one(spans, f"ValidateUpdate:{ACTION}")
    assert parent_of(validated) == span_id(update)

    taken = [line for line in log_lines.lines if line["msg"] == "action taken"]
    assert len(taken) == 1, log_lines.lines
    assert taken[0]["trace_id"] == f"{trace_of(request):032x}"
    assert taken[0]["span_id"] == f"{span_id(request):016x}"

    # The traced run's history (updates carrying trace headers) replays, with
    # the tracing interceptor and without it.
    history = await traced.client.get_workflow_handle(f"deal-{deal_id}").fetch_history()
    # What the trace adds to history, in clear: the caller's span id, nothing else.
    accepted = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.header
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    [carried] = [
        PayloadConverter.default.from_payloads([h.fields["_tracer-data"]])[0] for h in accepted
    ]
    assert set(carried) == {"traceparent"}, carried
    assert carried["traceparent"].split("-")[1:3] == [
        f"{trace_of(update):032x}",
        f"{span_id(update):016x}",
    ]
    for interceptors in ([traced.tracing.interceptor], []):
        outcome = await replayer(interceptors=interceptors).replay_workflow(
            history, raise_on_replay_failure=False
        )
        assert outcome.replay_failure is None, outcome.replay_failure


async def test_a_lender_event_signal_is_a_child_of_the_webhook_request(traced: Traced) -> None:
    desk = HttpDesk(traced.stack)
    await desk.start()
    await desk.ok(ACTION, Role.SALES)
    await desk.upload_all()
    traced.exporter.clear()
    await desk.ok("submit-application", Role.CREDIT)
    await desk.wait_stage("DOWN_PAYMENT")
    spans = await traced.wait_for(
        lambda spans: any(s.name.startswith("HandleSignal:") for s in spans), "a handled signal"
    )
    by_id = {span_id(s): s for s in spans}
    for handled in [s for s in spans if s.name.startswith("HandleSignal:")]:
        sent = by_id[parent_of(handled) or 0]
        assert sent.name == handled.name.replace("HandleSignal:", "SignalWorkflow:")
        webhook = by_id[parent_of(sent) or 0]
        assert webhook.kind is SpanKind.SERVER, webhook.name
        assert webhook.name == "POST /webhooks/lenders/{lender_id}", webhook.name


async def test_no_span_carries_personal_data_or_a_token(traced: Traced) -> None:
    desk = HttpDesk(traced.stack)
    deal_id = await desk.start()
    await desk.ok(ACTION, Role.SALES)
    token = traced.stack.token(Role.AUDITOR)
    # A refusal (an error status), a query string and a bearer token.
    refused = await desk.do("confirm-down-payment", Role.FINANCE)
    assert refused.status_code == 409, refused.text
    http = traced.stack.http(token=token)
    r = await http.get("/api/deals", params={"dealer": "dealer-sh-001", "q": "Wang Fang"})
    assert r.status_code < 500, r.text
    r = await http.get(f"/api/deals/{deal_id}")
    assert r.status_code == 200, r.text
    spans = await traced.wait_for(
        lambda spans: any(s.name == "GET /api/deals/{deal_id}" for s in spans), "the reads"
    )
    assert len(spans) >= 10
    values = personal_values() | {"bearer token": token, "query": "dealer-sh-001"}
    leaked = {
        what: span.name
        for span in spans
        for what, value in values.items()
        if value in everything_said(span)
    }
    assert not leaked, leaked
    errors = [s for s in spans if s.status.status_code is StatusCode.ERROR]
    assert errors and all(":" not in (s.status.description or "") for s in errors)


def test_redaction_keeps_ids_and_drops_everything_else() -> None:
    exporter = InMemorySpanExporter()
    provider = provider_for(exporter, "redaction")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "GET /api/deals",
        attributes={
            "http.url": "http://127.0.0.1:8000/api/deals?q=Wang+Fang&sig=abc",
            "http.target": "/api/deals?q=Wang+Fang",
            "http.route": "/api/deals",
            "http.request.header.authorization": "Bearer secret",
            "http.user_agent": "python-httpx",
            "net.peer.ip": "10.1.2.3",
            "temporalWorkflowID": "deal-20260101-0a1b2c3d",
            "customer": "Wang Fang",
        },
    ) as span:
        span.record_exception(ValueError("Wang Fang 110105198803120014"))
        span.set_status(StatusCode.ERROR, "ValueError: Wang Fang")
    provider.force_flush()
    [exported] = exporter.get_finished_spans()
    assert dict(exported.attributes or {}) == {
        "http.url": "http://127.0.0.1:8000/api/deals",
        "http.target": "/api/deals",
        "http.route": "/api/deals",
        "temporalWorkflowID": "deal-20260101-0a1b2c3d",
    }
    [event] = exported.events
    assert dict(event.attributes or {}) == {
        "exception.type": "ValueError",
        "exception.escaped": "False",
    }
    assert exported.status.description == "ValueError"
    provider.shutdown()


def test_the_settings_name_the_endpoint_in_their_order() -> None:
    def config(**env: str) -> tracing.TracingConfig | None:
        return tracing.tracing_config(Settings.model_validate(env), tracing.SERVICE_WORKER)

    assert config() is None
    base = config(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    assert base == tracing.TracingConfig(
        "http://collector:4318/v1/traces", "OTEL_EXPORTER_OTLP_ENDPOINT", "dealflow-worker"
    )
    full = config(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://traces:4318/custom",
        OTEL_SERVICE_NAME="deals-eu",
    )
    assert full is not None and full.traces_url == "http://traces:4318/custom"
    assert full.service_name == "deals-eu"
    ours = config(
        otlp_endpoint="https://user:pw@otel.example:4318/",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://traces:4318/custom",
    )
    assert ours is not None and ours.source == "DEALFLOW_OTLP_ENDPOINT"
    assert ours.traces_url == "https://user:pw@otel.example:4318/v1/traces"
    assert ours.where() == "https://otel.example:4318/v1/traces"
    assert config(otlp_endpoint="http://c:4318", OTEL_SDK_DISABLED="true") is None
    with pytest.raises(ValidationError) as refused:
        Settings.model_validate({"otlp_endpoint": "collector:4318", "OTEL_SDK_DISABLED": "maybe"})
    said = startup.describe_settings_error(refused.value)
    assert "DEALFLOW_OTLP_ENDPOINT: Value error, the OTLP endpoint must be an http://" in said
    assert "; OTEL_SDK_DISABLED: Input should be a valid boolean" in said, said


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


OFF = """
import sys
import starter, worker
from dealflow import tracing
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.config import Settings
from dealflow.storage.documents import LocalDirectoryStore
settings = Settings()
assert tracing.setup(settings, tracing.SERVICE_API) is None
app = create_app(Services(settings=settings, client=None, engine=None, lenders={},
                          store=LocalDirectoryStore("/nonexistent", signing_secret="s" * 32, api_base_url="http://x")))
assert tracing.temporal_interceptors() == [] and tracing.log_ids() == {}
assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
loaded = [m for m in sys.modules if m.startswith(
    ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter",
     "temporalio.contrib.opentelemetry", "dealflow.tracing_sdk"))]
assert not loaded, loaded
print("untraced")
"""


def test_off_by_default_nothing_of_the_sdk_is_loaded() -> None:
    done = _python(OFF)
    assert done.returncode == 0 and done.stdout.strip() == "untraced", done.stderr


def test_on_without_the_extra_the_worker_stops_at_start_saying_so(tmp_path: Path) -> None:
    # The packages of the extra made unimportable, as in an install without it.
    code = (
        "import runpy, sys\n"
        "for name in ('opentelemetry.sdk', 'opentelemetry.exporter', "
        "'opentelemetry.instrumentation', 'temporalio.contrib.opentelemetry'):\n"
        "    sys.modules[name] = None\n"
        "sys.argv = ['worker.py']\n"
        "runpy.run_path('worker.py', run_name='__main__')\n"
    )
    done = _python(
        code,
        DEALFLOW_OTLP_ENDPOINT="http://127.0.0.1:4318",
        DEALFLOW_DATA_DIR=str(tmp_path),
        DEALFLOW_TEMPORAL_CONNECT_TIMEOUT="1",
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("worker: configuration error: DEALFLOW_OTLP_ENDPOINT is set"), last
    assert "pip install 'dealflow[tracing]'" in last and "Traceback" not in done.stderr
