"""Run real HTTP services (uvicorn) inside the test process, on free ports."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: FastAPI, port: int | None = None, health: str = "/healthz") -> Iterator[str]:
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(url + health, timeout=1).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{app.title} did not start on {url}")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _listening_socket(port: int) -> socket.socket:
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on the connections
    # it accepts only from a socket that says it is TCP, and without it every
    # answer waits ~40 ms on Nagle and the client's delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    return listener


@asynccontextmanager
async def serve_async(app: FastAPI, port: int | None = None) -> AsyncIterator[str]:
    """Serve on the caller's event loop, so the app can share its Temporal client.

    The socket is bound here, before uvicorn starts: without `port`, the one the
    system gives (no window for another process to take it); with one that
    another process took meanwhile, an OSError for this test only — uvicorn's
    own bind failure is a `sys.exit` that would break the event loop of every
    later test of this process."""
    listener = _listening_socket(port or 0)
    port = int(listener.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()
