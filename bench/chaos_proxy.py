"""A TCP proxy the chaos driver can cut: how PostgreSQL and S3 "go down" for the
stack without stopping the shared server (or losing moto's in-memory state).

The proxy runs its own event loop in a daemon thread, so a busy or blocking
driver never stalls the traffic it forwards. `cut()` closes the listening
socket (new connections are refused) and aborts every open connection (the
client sees a reset mid-query); `restore()` listens again on the same port.
With `cut(mode="blackhole")` connections are accepted and never answered,
the nastier outage in which only the client's own timeouts help.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
CutMode = Literal["refuse", "blackhole"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", name: str = "") -> None:
        self.name = name or f"proxy->{target_port}"
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cuts = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=self.name)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._mode: CutMode | None = None

    # ------------------------------------------------------------------ control (any thread)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self, mode: CutMode = "refuse") -> None:
        self.cuts += 1
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._cut("refuse"))
            # The aborted connections' tasks end in the loop's next turns; a
            # loop stopped under them would leave them pending ("Task was
            # destroyed but it is pending!").
            self._call(asyncio.sleep(0.05))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ in the proxy's loop

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self, mode: CutMode) -> None:
        self._mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _restore(self) -> None:
        self._mode = None
        if self._server is None:
            await self._listen()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection a client's is forwarded to (tests/support/balancer.py picks one)."""
        return await asyncio.open_connection(*self.target)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._mode == "blackhole":
            self._writers.add(writer)  # held open, never answered; aborted on restore/cut
            return
        try:
            up_reader, up_writer = await self._open_upstream()
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)
