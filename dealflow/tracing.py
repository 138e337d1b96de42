"""OpenTelemetry traces, off unless an OTLP endpoint is configured.

On, one trace follows a staff action from the API's HTTP request through the
Temporal update into the workflow and the activities the update schedules,
exported over OTLP/HTTP by each process under its own service name. Off (the
default), nothing of OpenTelemetry is imported: the packages are the optional
extra `dealflow[tracing]`, and a process asked to trace without them stops at
start saying so.

Where the endpoint comes from, first found wins:
1. `DEALFLOW_OTLP_ENDPOINT`: the collector's base URL (`http://collector:4318`);
   `/v1/traces` is appended;
2. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full traces URL, used as given;
3. `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL, `/v1/traces` appended.
`OTEL_SDK_DISABLED=true` turns tracing off whatever is set. `OTEL_SERVICE_NAME`
replaces the per-process names (`dealflow-api`, `dealflow-worker`,
`dealflow-cli`). The exporter itself reads the other `OTEL_EXPORTER_OTLP_*`
variables (headers, timeout, certificates) and the batch processor the
`OTEL_BSP_*` ones.

This module holds the settings and the process's one active tracing; what
needs the SDK is in dealflow/tracing_sdk.py, imported only when tracing is on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dealflow.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from temporalio.api.common.v1 import Payload
    from temporalio.client import Client

    from dealflow.tracing_sdk import ActiveTracing

SERVICE_API = "dealflow-api"
SERVICE_WORKER = "dealflow-worker"
SERVICE_CLI = "dealflow-cli"

TRACES_PATH = "/v1/traces"
EXTRA_HINT = "pip install 'dealflow[tracing]'"


class TracingConfigError(ValueError):
    """Tracing is asked for but cannot work: the process stops at start."""


@dataclass(frozen=True)
class TracingConfig:
    traces_url: str
    # The variable the URL came from, for start-up lines and errors.
    source: str
    service_name: str

    def where(self) -> str:
        """The URL without credentials or query, for a start-up line."""
        parts = urlsplit(self.traces_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


def tracing_config(settings: Settings, service: str) -> TracingConfig | None:
    """Where this process sends its spans, or None: tracing is off."""
    if settings.otel_sdk_disabled:
        return None
    candidates = (
        ("DEALFLOW_OTLP_ENDPOINT", settings.otlp_endpoint, True),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", settings.otel_traces_endpoint, False),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", settings.otel_endpoint, True),
    )
    for source, value, is_base in candidates:
        if value:
            url = value.rstrip("/")
            if is_base and not url.endswith(TRACES_PATH):
                url += TRACES_PATH
            if not url.startswith(("http://", "https://")):
                raise TracingConfigError(f"{source}: {value!r} is not an http(s) URL")
            name = settings.otel_service_name or service
            return TracingConfig(traces_url=url, source=source, service_name=name)
    return None


_active: ActiveTracing | None = None


def setup(settings: Settings, service: str) -> TracingConfig | None:
    """Turn tracing on for this process if the settings say so (its config),
    exporting to their endpoint; None and nothing imported when off."""
    config = tracing_config(settings, service)
    if config is None:
        return None
    try:
        from dealflow import tracing_sdk
    except ImportError as e:
        raise TracingConfigError(
            f"{config.source} is set but the tracing packages are missing "
            f"({e.name or e}): {EXTRA_HINT}"
        ) from None
    activate(tracing_sdk.exporting(config.traces_url, config.service_name))
    return config


def activate(tracing: ActiveTracing) -> None:
    """Make `tracing` the process's (setup does; tests activate an in-memory one)."""
    global _active
    _active = tracing


def active() -> ActiveTracing | None:
    return _active


def shutdown() -> None:
    """Send what is still buffered and stop; a no-op when off."""
    global _active
    tracing, _active = _active, None
    if tracing is not None:
        tracing.shutdown()


def temporal_interceptors() -> list[Any]:
    """The interceptors a Temporal client gets (its workers inherit them)."""
    return [] if _active is None else [_active.interceptor]


def instrument_app(app: FastAPI) -> None:
    """A server span per request, the route template as its name."""
    if _active is not None:
        _active.instrument_app(app)


def log_ids() -> dict[str, str]:
    """The current trace and span ids, for a log line; empty when off or outside a span."""
    return {} if _active is None else _active.current_ids()


@contextlib.contextmanager
def http_client_span(method: str, route: str) -> Iterator[dict[str, str]]:
    """A client span around one HTTP call; yields the headers that carry it
    (`traceparent`), none when off."""
    if _active is None:
        yield {}
        return
    with _active.http_client_span(method, route) as headers:
        yield headers


@contextlib.contextmanager
def update_call(
    client: Client, update: str, workflow_id: str, update_id: str
) -> Iterator[Mapping[str, Payload]]:
    """The client span of an update sent without the SDK's handle (so without
    its interceptors), and the Temporal header that carries the span to the
    workflow. Nothing when the client has no tracing interceptor."""
    for interceptor in client.config()["interceptors"]:
        span = getattr(interceptor, "update_call_span", None)
        if span is not None:
            with span(update, workflow_id, update_id) as headers:
                yield headers
            return
    yield {}
