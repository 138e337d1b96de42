"""A multipart/form-data body read as it arrives (the document upload).

`MultipartReader` parses the request stream chunk by chunk and yields the
parts' events; `FileStream` hands the file part to the document store, which
consumes it in a worker thread, hashing and counting as it goes. Nothing is
buffered beyond the network chunk being parsed, except a file part that comes
before the form fields it needs: `SpooledPart` keeps it (bounded by the
document limit, in memory up to `SPOOL_MEMORY_BYTES`, then in a temporary file
removed when the request ends) until those fields have been read and judged.
With an `UploadTiming` every read waits a bounded time for the next chunk
(408 after that).
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

from fastapi import Request
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from dealflow.api.body_limits import mark_draining
from dealflow.api.errors import Problem
from dealflow.api.upload_gate import UploadTiming
from dealflow.storage.documents import DocumentTooLarge

MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
# After a refusal, read (and drop) at most this much of the rest of the body,
# so the client gets to read our answer instead of a reset connection.
MAX_DRAIN_BYTES = 128 * 1024 * 1024
# A file part kept for the fields after it: this much in memory, the rest on disk.
SPOOL_MEMORY_BYTES = 1024 * 1024
SPOOL_READ_BYTES = 64 * 1024

T = TypeVar("T")


class MultipartReader:
    """The parts of a multipart/form-data body, as the body arrives.

    Events: ("begin", name, filename), ("data", bytes), ("end",). Nothing is
    buffered beyond the network chunk being parsed.
    """

    def __init__(
        self, request: Request, boundary: bytes, timing: UploadTiming | None = None
    ) -> None:
        self._scope = request.scope
        self._body = request.stream().__aiter__()
        self._timing = timing
        self._events: deque[tuple[Any, ...]] = deque()
        self.exhausted = False  # the request body has been read to its end
        self.closed = False  # the closing boundary was seen
        self.parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_part_data": self._on_part_data,
                    "on_part_end": lambda: self._events.append(("end",)),
                    "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                    "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_end": self._on_end,
                },
            )
        except ValueError as e:
            raise Problem(415, f"bad multipart boundary: {e}") from None

    def _on_part_begin(self) -> None:
        self._headers = {}
        self.parts += 1

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", bytes(data[start:end])))

    def _on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        filename = options.get(b"filename")
        self._events.append(
            (
                "begin",
                name.decode("utf-8", "replace") if name is not None else None,
                filename.decode("utf-8", "replace") if filename is not None else None,
            )
        )

    def _on_end(self) -> None:
        self.closed = True

    async def next(self) -> tuple[Any, ...] | None:
        """The next event, or None at the end of the body."""
        while not self._events:
            if self.exhausted:
                return None
            try:
                chunk = await self._receive()
            except StopAsyncIteration:
                self.exhausted = True
                if not self.closed:
                    raise Problem(
                        422, "the multipart body ended before its closing boundary"
                    ) from None
                continue
            except ClientDisconnect:
                self.exhausted = True
                raise Problem(400, "the client disconnected before the upload finished") from None
            if not chunk:
                continue
            try:
                self._parser.write(chunk)
            except MultipartParseError as e:
                raise Problem(422, f"the multipart body is malformed: {e}") from None
            if self.parts > MAX_PARTS:
                raise Problem(422, f"too many parts (at most {MAX_PARTS})")
        return self._events.popleft()

    @property
    def pull_timeout(self) -> float | None:
        """How long a thread waits for the loop to hand it the next chunk: the
        idle timeout answers first; this only frees the thread of a loop that
        has stopped."""
        return None if self._timing is None else self._timing.idle_seconds + 5

    @property
    def rest_timeout(self) -> float | None:
        """How long a thread waits for the loop to read the parts after the file
        (bounded by the upload's deadline; this only frees the thread of a loop
        that has stopped)."""
        if self._timing is None:
            return None
        return self._timing.deadline_seconds + 5

    async def _receive(self) -> bytes:
        """The next network chunk of the body, waited for at most as the timing says."""
        if self._timing is None:
            return await self._body.__anext__()
        try:
            async with asyncio.timeout(self._timing.next_wait()):
                return await self._body.__anext__()
        except TimeoutError:
            self.exhausted = True  # the body stream was cancelled mid-read
            raise self._timing.expired() from None
        except Problem:
            self.exhausted = True
            raise

    async def read_value(self, name: str) -> str:
        value = bytearray()
        while (event := await self.next()) is not None and event[0] == "data":
            value += event[1]
            if len(value) > MAX_FIELD_BYTES:
                raise Problem(422, f"field {name} is longer than {MAX_FIELD_BYTES} bytes")
        try:
            return value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Problem(422, f"field {name} is not UTF-8 text") from None

    async def next_file_data(self) -> bytes | None:
        """The next piece of the file part; None after its last (the parts after
        it, if any, are the caller's to read)."""
        event = await self.next()
        if event is not None and event[0] == "data":
            return bytes(event[1])
        return None

    async def drain(self, limit: int = MAX_DRAIN_BYTES) -> None:
        """Read and drop what is left of the body (bounded in size and, with a
        timing, in time), ignoring its content."""
        mark_draining(self._scope)
        seen = 0
        while not self.exhausted and seen < limit:
            try:
                chunk = await self._receive()
            except (StopAsyncIteration, ClientDisconnect, Problem):
                self.exhausted = True
                return
            seen += len(chunk)


class FileStream:
    """The file part as the blocking iterator the store consumes in a worker thread.

    The first bytes (for sniffing) were read on the event loop; the rest is
    pulled from the loop one network chunk at a time. Hashes and counts as it goes.
    """

    def __init__(
        self,
        reader: MultipartReader,
        loop: asyncio.AbstractEventLoop,
        head: list[bytes],
        finished: bool,
        limit: int,
        at_end: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.reader = reader
        self.loop = loop
        self.head = head
        self.finished = finished
        self.limit = limit
        # Run on the loop once the file part has ended and before the stream
        # does: what it raises aborts the store, which then keeps nothing.
        self.at_end = at_end
        self.size = 0
        self.hasher = hashlib.sha256()
        self.too_large = False

    def _take(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large = True
            raise DocumentTooLarge(self.limit)
        self.hasher.update(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.head:
            yield self._take(chunk)
        if not self.finished:
            while (
                data := self._on_loop(self.reader.next_file_data, self.reader.pull_timeout)
            ) is not None:
                yield self._take(data)
        if self.at_end is not None:
            self._on_loop(self.at_end, self.reader.rest_timeout)

    def _on_loop(self, call: Callable[[], Coroutine[Any, Any, T]], timeout: float | None) -> T:
        """Run `call` on the loop and wait for its result (from a worker thread)."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            # Pulling from the loop on its own thread would deadlock.
            raise RuntimeError("FileStream must be consumed in a worker thread")
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=timeout)

    @property
    def sha256(self) -> str:
        return self.hasher.hexdigest()


class SpooledPart:
    """A file part kept until the form fields after it have been read: in memory
    up to SPOOL_MEMORY_BYTES, then in an anonymous temporary file, gone on close.
    Filled in a worker thread and read by the store's (the writes and reads may
    block), but for the first piece, which the type is sniffed from."""

    def __init__(self) -> None:
        # Closed by close() / the with-block that owns the part.
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_MEMORY_BYTES
        )
        self.size = 0

    def fill(self, stream: FileStream) -> None:
        """Keep the whole of `stream` (its limit and the upload's timing apply)."""
        for chunk in stream:
            self._file.write(chunk)
            self.size += len(chunk)

    def chunks(self) -> Iterator[bytes]:
        """The kept bytes, from the start, a bounded piece at a time."""
        self._file.seek(0)
        while chunk := self._file.read(SPOOL_READ_BYTES):
            yield chunk

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SpooledPart:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


async def drain_unparsed(
    request: Request, limit: int = MAX_DRAIN_BYTES, timing: UploadTiming | None = None
) -> None:
    """Read and drop a body refused before it was parsed (bounded in size and,
    with a timing, in time)."""
    mark_draining(request.scope)
    seen = 0
    body = request.stream().__aiter__()
    try:
        while seen < limit:
            if timing is None:
                chunk = await body.__anext__()
            else:
                async with asyncio.timeout(timing.next_wait()):
                    chunk = await body.__anext__()
            seen += len(chunk)
    except (StopAsyncIteration, ClientDisconnect, RuntimeError, TimeoutError, Problem):
        return
