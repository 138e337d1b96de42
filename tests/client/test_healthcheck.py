"""`python -m dealflow.healthcheck`, the containers' healthcheck: exit 0 only for
a 2xx answer (holding the text asked for), else 1 with one line saying why."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.servers import free_port
from tests.support.stack import ROOT


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 503 if self.path == "/down" else 200
        body = b'dealflow_worker_polling{service_name="temporal-core-sdk"} 1\n'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dealflow.healthcheck", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthy_and_holding_the_text(server: str) -> None:
    polling = 'dealflow_worker_polling{service_name="temporal-core-sdk"} 1'
    result = healthcheck(f"{server}/metrics", "--contains", polling)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("path", "extra", "problem"),
    [
        ("/down", [], "{url} answered 503"),
        ("/metrics", ["--contains", "dealflow_worker_polling 0"], "{url} answered without"),
    ],
)
def test_unhealthy_answers_are_named(
    server: str, path: str, extra: list[str], problem: str
) -> None:
    url = server + path
    result = healthcheck(url, *extra)
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: " + problem.format(url=url))


def test_nothing_listening_is_unhealthy() -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    result = healthcheck(url, "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.startswith(f"unhealthy: {url} did not answer:")
