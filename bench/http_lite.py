"""A minimal HTTP/1.1 keep-alive POST client for the webhook benchmark's load.

The load generator runs on the same two cores as the stack it measures, and a
lender's requests cost the lender's machine, not ours. httpx spent about
1.8 ms of CPU per webhook more than the raw arm's `client.signal` call
(`make bench` 2, `cpu_ms_per_request.bench`), CPU taken from the API and the
server under test. This client writes a request and reads the status line,
headers and a Content-Length body over one persistent connection: nothing more
is needed to post a webhook and read its status code.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class _Unanswered(ConnectionError):
    """The connection ended before the response began."""


class Connection:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """POST `body`; the response's status code (its body is read and dropped).

        A kept-alive connection the server has closed meanwhile (uvicorn drops
        idle ones after 5 s) fails before any byte of a response: the request
        was never read, so it is sent once more on a new connection.
        """
        reused = self._writer is not None
        try:
            return await self._post(body, headers)
        except _Unanswered:
            if not reused:
                raise
            return await self._post(body, headers)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = [f"POST {self.path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
        head.append(f"content-length: {len(body)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        try:
            try:
                status_line = await self._reader.readline()
            except ConnectionError as e:
                raise _Unanswered(str(e)) from e
            if not status_line:
                raise _Unanswered("server closed the connection")
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, False
            while (line := await self._reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    raise ValueError(f"unsupported transfer-encoding {value!r}")
                elif name == "connection" and value == "close":
                    close = True
            if length:
                await self._reader.readexactly(length)
        except BaseException:
            await self.aclose()
            raise
        if close:
            await self.aclose()
        return status

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class Pool:
    """`size` keep-alive connections, one per concurrent request."""

    def __init__(self, url: str, size: int) -> None:
        self._all = [Connection(url) for _ in range(size)]
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in self._all:
            self._free.put_nowait(conn)

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        conn = await self._free.get()
        try:
            return await conn.post(body, headers)
        finally:
            self._free.put_nowait(conn)

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.aclose()
