"""Tracing in real processes: the worker (`worker.py`) and the API
(`python -m dealflow.api`) started with DEALFLOW_OTLP_ENDPOINT export their
spans over OTLP/HTTP (protobuf on /v1/traces) to a collector stand-in the test
runs, each under its own service name, and a staff action's trace, begun by
the caller's `traceparent`, reaches the worker's spans; `starter.py --api`
exports its own span of the trace the API continues. The batch delay is
longer than the test: every span arrives in the flush each process makes as
it stops on SIGTERM (the API's server re-raises the signal once it is done,
the worker leaves without interpreter finalisation), or never."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from temporalio.testing import WorkflowEnvironment

from dealflow import names
from dealflow.api.security import mint_token
from dealflow.config import DEV_JWT_SECRET, ROOT
from dealflow.models import Role
from dealflow.samples import example_action, example_deal
from dealflow.storage import db
from tests.support.servers import free_port
from tests.support.stack import TEST_CODEC_KEY_FILE

pytestmark = pytest.mark.e2e

ACTION = "sign-sales-contract"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: str


@dataclass
class Collector:
    """What an OpenTelemetry collector's OTLP/HTTP receiver would take in."""

    url: str
    spans: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        got = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.append(Received(attributes["service.name"], span.name, span.trace_id.hex()))
        with self.lock:
            self.spans.extend(got)

    def of(self, service: str, trace_id: str | None = None) -> set[str]:
        with self.lock:
            return {
                s.name
                for s in self.spans
                if s.service == service and (trace_id is None or s.trace_id == trace_id)
            }


@pytest.fixture
def collector() -> Iterator[Collector]:
    port = free_port()
    found = Collector(f"http://127.0.0.1:{port}")

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            found.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_until(check: object, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while not await check():  # type: ignore[operator]
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"{dead} exited waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_the_worker_and_the_api_export_one_trace_over_otlp_http(
    dev_env: WorkflowEnvironment, collector: Collector, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'dealflow.db'}"
    db.migrate(database_url)
    api_port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "OTEL_"))}
    env = base | {
        "DEALFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "DEALFLOW_TASK_QUEUE": f"traced-{api_port}",
        "DEALFLOW_DATA_DIR": str(tmp_path),
        "DEALFLOW_DATABASE_URL": database_url,
        "DEALFLOW_DOCUMENT_STORE": f"file://{tmp_path / 'documents'}",
        "DEALFLOW_CODEC_KEYS": f"file:{TEST_CODEC_KEY_FILE}",
        "DEALFLOW_API_PORT": str(api_port),
        "DEALFLOW_WORKER_METRICS_PORT": "0",
        "DEALFLOW_OTLP_ENDPOINT": collector.url,
        "DEALFLOW_GRACEFUL_SHUTDOWN_SECONDS": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    procs = [
        start([sys.executable, "worker.py"], env, tmp_path / "worker.log"),
        start([sys.executable, "-m", "dealflow.api"], env, tmp_path / "api.log"),
    ]
    api = f"http://127.0.0.1:{api_port}"
    sales = {"Authorization": f"Bearer {mint_token(DEV_JWT_SECRET, 'sales-01', [Role.SALES])}"}
    try:
        async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as http:

            async def up() -> bool:
                try:
                    healthy = (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False
                return healthy and (tmp_path / "worker.ready").exists()

            await wait_until(up, "the API and the worker", procs)
            r = await http.post(
                "/api/deals", json=example_deal().model_dump(mode="json"), headers=sales
            )
            assert r.status_code == 201, r.text
            deal_id = r.json()["deal_id"]
            r = await http.post(
                f"/api/deals/{deal_id}/actions/{ACTION}",
                json=example_action(ACTION),
                headers=sales | {"traceparent": TRACEPARENT},
            )
            assert r.status_code == 200, r.text
            version = r.json()["status"]["version"]
            engine = db.make_engine(database_url)

            async def projected() -> bool:
                row = db.get_deal(engine, deal_id)
                return row is not None and row.version >= version

            await wait_until(projected, "the action's projection", procs)
            # The projection's activity span ends just after its write.
            await asyncio.sleep(0.5)
            assert not collector.spans, "a batch left before the processes stopped"
            # The operator CLI through the API: its span, then the API's, one trace.
            cli = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "starter.py", "--api", api, "--json", "status", deal_id],
                cwd=ROOT,
                env=env | {"DEALFLOW_API_TOKEN": sales["Authorization"].split()[1]},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert cli.returncode == 0, cli.stderr
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.wait, 30)
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
    assert [proc.returncode for proc in procs] == [0, -signal.SIGTERM], logs
    run_projection = f"RunActivity:{names.PROJECT_DEAL}"
    route = f"/api/deals/{{deal_id}}/actions/{ACTION}"
    assert {f"POST {route}", f"StartWorkflowUpdate:{ACTION}"} <= collector.of(
        "dealflow-api", TRACE_ID
    ), logs
    assert {f"HandleUpdate:{ACTION}", run_projection} <= collector.of(
        "dealflow-worker", TRACE_ID
    ), logs
    # The deal's start is a trace of its own, from the API to the worker.
    assert "POST /api/deals" in collector.of("dealflow-api")
    assert "RunWorkflow:DealWorkflow" in collector.of("dealflow-worker")
    read = "GET /api/deals/{deal_id}"
    [cli_trace] = {s.trace_id for s in collector.spans if s.service == "dealflow-cli"}
    assert read in collector.of("dealflow-cli", cli_trace)
    assert read in collector.of("dealflow-api", cli_trace)
    services = {s.service for s in collector.spans}
    assert services == {"dealflow-api", "dealflow-worker", "dealflow-cli"}
    assert "tracing on: spans to " in logs["worker.log"] and collector.url in logs["api.log"]
