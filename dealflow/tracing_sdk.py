"""The OpenTelemetry SDK side of dealflow/tracing.py: the tracer provider, the
OTLP/HTTP exporter, redaction, and the Temporal tracing interceptor with
update and signal spans as children of their caller's span.

Imported only when tracing is on: it needs the `dealflow[tracing]` extra.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import temporalio.worker
from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status
from opentelemetry.util.types import Attributes
from temporalio.api.common.v1 import Payload
from temporalio.contrib.opentelemetry import TracingInterceptor, TracingWorkflowInboundInterceptor

# The parent class's own helper: attaching a context this way survives the
# detach that an evicted workflow's handler runs from another context.
from temporalio.contrib.opentelemetry._context import attached_context

# Probes and scrapes every few seconds would bury the traces that matter.
UNTRACED_PATHS = "/healthz$,/readyz$,/metrics$"

# The span attributes that leave the process; every other one is dropped, so
# nothing a library adds (a header, a user agent, a client address, an
# exception's message) can carry personal data out. Ids only: Temporal's ids
# name deals and steps, never the customer.
KEPT_ATTRIBUTES = frozenset(
    {
        "temporalWorkflowID",
        "temporalRunID",
        "temporalActivityID",
        "temporalActivityType",
        "temporalUpdateID",
        # HTTP, old and stable semantic conventions.
        "http.method",
        "http.request.method",
        "http.route",
        "http.status_code",
        "http.response.status_code",
        "http.scheme",
        "url.scheme",
        "url.path",
        "http.flavor",
        "network.protocol.version",
        "http.host",
        "http.server_name",
        "server.address",
        "server.port",
        "net.host.name",
        "net.host.port",
        "error.type",
        "asgi.event.type",
        "exception.type",
        "exception.escaped",
    }
)
# URLs are kept without their query string, which may carry a signature or a
# search term; their paths hold ids only.
URL_ATTRIBUTES = frozenset({"http.url", "url.full", "http.target"})
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")


def redact_attributes(attributes: Attributes) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if key in URL_ATTRIBUTES:
            kept[key] = _without_query(str(value))
        elif key in KEPT_ATTRIBUTES:
            kept[key] = value
    return kept


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _redact_status(status: Status) -> Status:
    """An error's kind, never its message ("ValueError: <the message>")."""
    description = (status.description or "").split(":", 1)[0].strip()
    if not _TYPE_NAME.fullmatch(description):
        description = ""
    return Status(status.status_code, description or None)


def redact(span: ReadableSpan) -> ReadableSpan:
    events = [
        Event(event.name, redact_attributes(event.attributes), event.timestamp)
        for event in span.events
    ]
    links = [trace.Link(link.context, redact_attributes(link.attributes)) for link in span.links]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=redact_attributes(span.attributes),
        events=events,
        links=links,
        kind=span.kind,
        status=_redact_status(span.status),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanExporter(SpanExporter):
    """Exports through `inner` only what KEPT_ATTRIBUTES allows."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redact(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


# --------------------------------------------------------------------------- Temporal


@dataclass
class _Headers:
    """Where the interceptor's helpers write a span's context as a header."""

    headers: Mapping[str, Payload] = field(default_factory=dict)


class DealTracingInterceptor(TracingInterceptor):
    """The SDK's tracing interceptor, with updates and signals in their caller's
    trace, and a client span for the updates DealFlow sends by hand."""

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> type[TracingWorkflowInboundInterceptor]:
        super().workflow_interceptor_class(input)  # registers the span extern
        return CallerParentedWorkflowInterceptor

    @contextmanager
    def update_call_span(
        self, update: str, workflow_id: str, update_id: str
    ) -> Iterator[Mapping[str, Payload]]:
        """The span the SDK's `start_workflow_update` would start, for an
        update sent without the handle (dealflow.client._send_once)."""
        carrier = _Headers()
        with self._start_as_current_span(
            f"StartWorkflowUpdate:{update}",
            attributes={"temporalWorkflowID": workflow_id, "temporalUpdateID": update_id},
            input_with_headers=carrier,
            kind=SpanKind.CLIENT,
        ):
            yield carrier.headers


class CallerParentedWorkflowInterceptor(TracingWorkflowInboundInterceptor):
    """An update or signal that carries its caller's span gets its handler span
    as that span's child (the stock interceptor puts it in the workflow's own
    trace and only links the caller), and what the handler schedules (the
    projection, a document's bookkeeping) becomes the handler span's child."""

    def handle_update_validator(self, input: temporalio.worker.HandleUpdateInput) -> None:
        caller = self._caller_context(input.headers)
        if caller is None:
            super().handle_update_validator(input)
            return
        with self._handler_span(caller, f"ValidateUpdate:{input.update}", input.id):
            self.next.handle_update_validator(input)

    async def handle_update_handler(self, input: temporalio.worker.HandleUpdateInput) -> Any:
        caller = self._caller_context(input.headers)
        if caller is None:
            return await super().handle_update_handler(input)
        with self._handler_span(caller, f"HandleUpdate:{input.update}", input.id):
            return await self.next.handle_update_handler(input)

    async def handle_signal(self, input: temporalio.worker.HandleSignalInput) -> None:
        caller = self._caller_context(input.headers)
        if caller is None:
            await super().handle_signal(input)
            return
        with self._handler_span(caller, f"HandleSignal:{input.signal}", None):
            await self.next.handle_signal(input)

    def _caller_context(self, headers: Mapping[str, Payload]) -> Context | None:
        header = headers.get(self.header_key)
        if not header:
            return None
        carrier = self.payload_converter.from_payloads([header])[0]
        if not carrier:
            return None
        return self._set_on_context(self.text_map_propagator.extract(carrier))

    @contextmanager
    def _handler_span(self, caller: Context, name: str, update_id: str | None) -> Iterator[None]:
        with attached_context(caller):
            span = _Headers()
            # A zero-length span, as every workflow span (replay-safe); none on replay.
            self._completed_span(
                name,
                add_to_outbound=span,
                additional_attributes={"temporalUpdateID": update_id} if update_id else None,
                kind=SpanKind.SERVER,
            )
            with attached_context(self._caller_context(span.headers)):
                yield


# --------------------------------------------------------------------------- the process


class ActiveTracing:
    """A process's tracing: its provider, its tracer, its Temporal interceptor."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("dealflow")
        self.interceptor = DealTracingInterceptor(self.tracer)

    def instrument_app(self, app: FastAPI) -> None:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls=UNTRACED_PATHS,
            # One span per request: the ASGI message spans say nothing an operator needs.
            exclude_spans=["receive", "send"],
        )

    def current_ids(self) -> dict[str, str]:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return {}
        return {
            "trace_id": trace.format_trace_id(context.trace_id),
            "span_id": trace.format_span_id(context.span_id),
        }

    @contextmanager
    def http_client_span(self, method: str, route: str) -> Iterator[dict[str, str]]:
        with self.tracer.start_as_current_span(
            f"{method} {route}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "http.route": route},
        ):
            headers: dict[str, str] = {}
            propagate.inject(headers)
            yield headers

    def force_flush(self) -> bool:
        return self.provider.force_flush()

    def shutdown(self) -> None:
        self.provider.shutdown()


def provider_for(exporter: SpanExporter, service_name: str) -> TracerProvider:
    """Spans batched, redacted, then handed to `exporter`."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(RedactingSpanExporter(exporter)))
    return provider


def exporting(traces_url: str, service_name: str) -> ActiveTracing:
    """Tracing that exports over OTLP/HTTP to `traces_url`.

    Not installed as OpenTelemetry's global provider: FastAPI's own telemetry
    turns on when one is, and would trace every request a second time."""
    return ActiveTracing(provider_for(OTLPSpanExporter(endpoint=traces_url), service_name))
