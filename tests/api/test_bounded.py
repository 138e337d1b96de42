"""Bounded requests against the live API (issue 14, items 10 and 11), over raw
sockets so a test controls exactly when each byte leaves.

Slow uploads: a handful of clients trickling their files must not stall a
lender's webhook (uploads have their own thread pool), an upload that stops
sending is 408 after the idle timeout and one that trickles forever 408 at its
deadline, and one person may run only so many uploads at once (429).

Unbounded bodies: a declared Content-Length over a route's limit is 413 before
the body is read, a chunked body 413 as soon as it passes the limit — both
answered while the client is still sending — and a caller without a token is
401 before any of its body is read, the connection then closed rather than
drained.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow.api.body_limits import LINGER_SECONDS
from dealflow.models import Role
from dealflow.samples import sample_pdf
from dealflow.storage.documents import LocalDirectoryStore
from tests.api.test_webhooks import ACME, BETA, decided, new_id, signed
from tests.support.api_stack import ApiStack, HttpDesk, api_stack, policy_file

IDLE = 1.5
DEADLINE = 3.0
PER_SUBJECT = 2
# Small, so a body past it is sent well within the upload deadline.
DOCUMENT_LIMIT = 2 * 1024 * 1024
SILENT = {"lenders": {ACME: [{"decision": "silent"}], BETA: [{"decision": "silent"}]}}
BOUNDARY = "bounded-test-boundary"
# The default executor's size (asyncio: min(32, cpu + 4)); more slow uploads
# than this held every one of its threads before uploads had their own pool.
DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    changes = {
        "upload_idle_seconds": IDLE,
        "upload_deadline_seconds": DEADLINE,
        "uploads_per_subject": PER_SUBJECT,
        # One more than a person may hold: somebody else's upload finds a thread.
        "upload_workers": PER_SUBJECT + 1,
    }
    policy = policy_file(tmp_session, max_document_bytes=DOCUMENT_LIMIT)
    async with api_stack(
        dev_env.client, database_url, tmp_session, policy_file=policy, settings_changes=changes
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def signed_deal(stack: ApiStack) -> str:
    """A deal in DOCUMENTS: it takes uploads."""
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    return desk.deal_id


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the status line arrived


class RawClient:
    """One HTTP/1.1 connection driven by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0

    @classmethod
    async def open(cls, stack: ApiStack) -> RawClient:
        url = urlsplit(stack.api_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: 127.0.0.1",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def chunk(self, data: bytes) -> None:
        await self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def answer(self, within: float) -> Answer:
        async with asyncio.timeout(within):
            head = await self.reader.readuntil(b"\r\n\r\n")
            at = time.monotonic()
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, body, at)

    async def closed_by_server(self, within: float) -> bool:
        """Whether the server closes the connection (EOF or reset) within `within` s."""
        try:
            async with asyncio.timeout(within):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def problem_of(answer: Answer, status: int, fragment: str = "") -> str:
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers["content-type"].startswith("application/problem+json")
    detail = str(json.loads(answer.body)["detail"])
    assert fragment in detail, (fragment, detail)
    return detail


FILE_PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.pdf"\r\n'
    "Content-Type: application/pdf\r\n\r\n"
)


def form_head(file_head: bytes) -> bytes:
    """The multipart body up to and including the first bytes of a PDF file part."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nproof_of_income\r\n',
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="party"\r\n\r\napplicant\r\n',
        FILE_PART,
    ]
    return "".join(parts).encode() + file_head


async def slow_upload(
    stack: ApiStack, deal_id: str, sub: str, file_first: bool = False
) -> RawClient:
    """An upload whose first file bytes are sent (after its form fields, or
    before any of them with `file_first`); the rest is up to the caller."""
    client = await RawClient.open(stack)
    headers = {
        "Authorization": f"Bearer {stack.token(Role.SALES, sub=sub)}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Transfer-Encoding": "chunked",
    }
    await client.head("POST", f"/api/deals/{deal_id}/documents", headers)
    file_head = b"%PDF-1.7\n" + b"%" + b"x" * 63 + b"\n"
    await client.chunk(FILE_PART.encode() + file_head if file_first else form_head(file_head))
    return client


async def trickle(client: RawClient, every: float, until: float) -> None:
    """One byte of the file every `every` seconds until `until` (monotonic) or an error."""
    try:
        while time.monotonic() < until:
            await asyncio.sleep(every)
            await client.chunk(b"x")
    except ConnectionError:
        return


# --------------------------------------------------------------------------- item 10


async def _underwriting_deal(stack: ApiStack) -> tuple[str, str, str]:
    """A deal waiting for a silent lender's decision: its id and application ref."""
    desk = HttpDesk(stack)
    await desk.start()
    await stack.script(desk.deal_id, SILENT)
    await desk.ok("sign-sales-contract", Role.SALES)
    await desk.upload_all()
    await desk.ok("submit-application", Role.CREDIT)
    status = await desk.wait_until(
        lambda s: any(sub.get("application_ref") for sub in s["submissions"]), "a submission"
    )
    sub = next(sub for sub in status["submissions"] if sub.get("application_ref"))
    return desk.deal_id, str(sub["lender_id"]), str(sub["application_ref"])


async def test_slow_uploads_do_not_stall_webhooks(stack: ApiStack, signed_deal: str) -> None:
    deal_id, lender_id, ref = await _underwriting_deal(stack)
    count = DEFAULT_EXECUTOR_THREADS + 2
    clients = [await slow_upload(stack, signed_deal, f"slow-{n}") for n in range(count)]
    trickles = [asyncio.create_task(trickle(c, IDLE / 4, time.monotonic() + 6)) for c in clients]
    try:
        await asyncio.sleep(0.8)  # every upload is past its first bytes, in a store thread
        body = decided(deal_id, ref)
        headers = signed(stack.lenders[lender_id].webhook_secret, body, new_id())
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=15, trust_env=False) as http:
            r = await http.post(f"/webhooks/lenders/{lender_id}", content=body, headers=headers)
        took = time.monotonic() - started
        assert r.status_code == 204, r.text
        print(f"webhook answered in {took * 1000:.0f} ms while {count} uploads trickled")
        assert took < 2.0, f"the webhook took {took:.1f} s while {count} uploads trickled"
    finally:
        for task in trickles:
            task.cancel()
        for c in clients:
            c.close()


ORDERS = {"fields-first": False, "file-first": True}


@pytest.mark.parametrize("order", list(ORDERS))
async def test_an_upload_that_stops_sending_is_408(
    stack: ApiStack, signed_deal: str, order: str
) -> None:
    client = await slow_upload(stack, signed_deal, f"idle-{order}", file_first=ORDERS[order])
    started = time.monotonic()
    try:
        answer = await client.answer(within=IDLE + 3)
        problem_of(answer, 408, f"no data arrived for {IDLE:g} s")
        assert IDLE - 0.2 < answer.at - started < IDLE + 2
        assert answer.headers.get("connection") == "close"
        assert await client.closed_by_server(within=LINGER_SECONDS + 1)
    finally:
        client.close()


@pytest.mark.parametrize("order", list(ORDERS))
async def test_an_upload_that_never_ends_is_408_at_its_deadline(
    stack: ApiStack, signed_deal: str, order: str
) -> None:
    client = await slow_upload(stack, signed_deal, f"deadline-{order}", file_first=ORDERS[order])
    started = time.monotonic()
    sending = asyncio.create_task(trickle(client, IDLE / 3, started + DEADLINE + 5))
    try:
        answer = await client.answer(within=DEADLINE + 3)
        problem_of(answer, 408, f"took longer than {DEADLINE:g} s")
        assert DEADLINE - 0.2 < answer.at - started < DEADLINE + 2
    finally:
        sending.cancel()
        client.close()


async def _upload(stack: ApiStack, deal_id: str, sub: str, name: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10, trust_env=False) as http:
        return await http.post(
            f"/api/deals/{deal_id}/documents",
            headers={"Authorization": f"Bearer {stack.token(Role.SALES, sub=sub)}"},
            data={"kind": "proof_of_residence", "party": "applicant"},
            files={"file": (name, sample_pdf(name), "application/pdf")},
        )


async def test_one_person_runs_two_uploads_at_once(stack: ApiStack, signed_deal: str) -> None:
    held = [await slow_upload(stack, signed_deal, "busy-01") for _ in range(PER_SUBJECT)]
    trickles = [asyncio.create_task(trickle(c, IDLE / 4, time.monotonic() + 10)) for c in held]
    try:
        await asyncio.sleep(0.3)
        r = await _upload(stack, signed_deal, "busy-01", "third.pdf")
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert int(r.headers["retry-after"]) > 0
        assert f"you have {PER_SUBJECT} uploads in progress" in r.json()["detail"]
        # Somebody else is not held up by them: done while they still trickle
        # (for 10 s), in the time of an upload on this machine, not of theirs.
        started = time.monotonic()
        r = await _upload(stack, signed_deal, "calm-01", "other.pdf")
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 5.0
        assert not any(task.done() for task in trickles)
    finally:
        for task in trickles:
            task.cancel()
        for c in held:
            c.close()
    # Their slots come back once the slow uploads end.
    deadline = time.monotonic() + 5
    while (r := await _upload(stack, signed_deal, "busy-01", "later.pdf")).status_code == 429:
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)
    assert r.status_code == 201, r.text


def stored_files(stack: ApiStack) -> set[Path]:
    """Every file of the (local) document store, uploads in progress included."""
    assert isinstance(stack.store, LocalDirectoryStore)
    return {path for path in stack.store.root.rglob("*") if path.is_file()}


async def test_a_file_sent_first_is_413_while_it_is_sent(stack: ApiStack, signed_deal: str) -> None:
    """A file part before the form fields is kept only up to the document limit:
    past it, 413 while the client is still sending, and nothing stored."""
    before = stored_files(stack)
    documents = (await stack.http(Role.SALES).get(f"/api/deals/{signed_deal}/documents")).json()
    client = await RawClient.open(stack)
    piece = b"%" * (64 * 1024)
    total = 4 * DOCUMENT_LIMIT

    async def send_all() -> None:
        try:
            await client.chunk(FILE_PART.encode() + b"%PDF-1.7\n")
            while client.sent < total:
                await client.chunk(piece)
            await client.send(b"0\r\n\r\n")
        except ConnectionError:
            return

    headers = {
        "Authorization": f"Bearer {stack.token(Role.SALES, sub='big-first')}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Transfer-Encoding": "chunked",
    }
    sending: asyncio.Task[None] | None = None
    try:
        await client.head("POST", f"/api/deals/{signed_deal}/documents", headers)
        sending = asyncio.create_task(send_all())
        answer = await client.answer(within=DEADLINE + 2)
        sent_when_answered = client.sent
        problem_of(answer, 413, f"larger than the limit of {DOCUMENT_LIMIT:,} bytes")
        assert sent_when_answered < total, "answered only after the whole body was sent"
    finally:
        if sending is not None:
            sending.cancel()
        client.close()
    assert stored_files(stack) == before
    after = (await stack.http(Role.SALES).get(f"/api/deals/{signed_deal}/documents")).json()
    assert after == documents


# --------------------------------------------------------------------------- item 11


# route, the role of the token sent (None: none), content type, the limit as the 413 says it
DECLARED: dict[str, tuple[str, Role | None, str, str]] = {
    "deals": ("/api/deals", Role.SALES, "application/json", "limit of 65,536 bytes"),
    "codec-decode": ("/codec/decode", Role.AUDITOR, "application/json", "limit of 4,194,304 bytes"),
    "codec-login": (
        "/codec/login",
        None,
        "application/x-www-form-urlencoded",
        "limit of 65,536 bytes",
    ),
    "webhook": (f"/webhooks/lenders/{ACME}", None, "application/json", "limit of 262144 bytes"),
}


@pytest.mark.parametrize("target", list(DECLARED))
async def test_a_declared_oversized_body_is_413_before_it_is_read(
    stack: ApiStack, target: str
) -> None:
    path, role, content_type, limit = DECLARED[target]
    headers = {"Content-Type": content_type, "Content-Length": str(10 * 1024 * 1024)}
    if role is not None:
        headers["Authorization"] = f"Bearer {stack.token(role)}"
    client = await RawClient.open(stack)
    try:
        await client.head("POST", path, headers)
        await client.send(b"{" + b" " * 1024)
        answer = await client.answer(within=2)
        detail = problem_of(answer, 413, limit)
        assert "10,485,760 bytes" in detail or "10485760 bytes" in detail, detail
        assert answer.headers.get("connection") == "close"
        assert await client.closed_by_server(within=LINGER_SECONDS + 1)
    finally:
        client.close()


@pytest.mark.parametrize("target", ["deals", "codec-decode", "webhook"])
async def test_a_chunked_body_is_413_while_it_is_sent(stack: ApiStack, target: str) -> None:
    path, role, content_type, limit = DECLARED[target]
    headers = {"Content-Type": content_type, "Transfer-Encoding": "chunked"}
    if role is not None:
        headers["Authorization"] = f"Bearer {stack.token(role)}"
    client = await RawClient.open(stack)
    piece = b" " * (64 * 1024)
    total = 16 * 1024 * 1024

    async def send_all() -> None:
        try:
            await client.chunk(b"{")
            while client.sent < total:
                await client.chunk(piece)
                await asyncio.sleep(0.002)
            await client.send(b"0\r\n\r\n")
        except ConnectionError:
            return

    try:
        await client.head("POST", path, headers)
        sending = asyncio.create_task(send_all())
        answer = await client.answer(within=10)
        sent_when_answered = client.sent
        problem_of(answer, 413, limit)
        assert sent_when_answered < total, "answered only after the whole body was sent"
        assert answer.headers.get("connection") == "close"
        await sending
        assert client.sent < total, "the server read the whole body"
    finally:
        client.close()


@pytest.mark.parametrize("route", ["deals", "documents"])
async def test_no_token_is_401_before_the_body_and_the_connection_closes(
    stack: ApiStack, signed_deal: str, route: str
) -> None:
    path = "/api/deals" if route == "deals" else f"/api/deals/{signed_deal}/documents"
    declared = 8 * 1024 * 1024
    content_type = (
        "application/json" if route == "deals" else f"multipart/form-data; boundary={BOUNDARY}"
    )
    client = await RawClient.open(stack)
    try:
        started = time.monotonic()
        await client.head(
            "POST", path, {"Content-Type": content_type, "Content-Length": str(declared)}
        )
        await client.send(b"x" * (32 * 1024))
        answer = await client.answer(within=2)
        assert answer.at - started < 1.0
        problem_of(answer, 401, "missing Authorization header")
        assert answer.headers.get("connection") == "close"
        # Not drained: the rest of the declared body cannot be sent.
        refused = False
        try:
            while client.sent < declared:
                await client.send(b"x" * (256 * 1024))
        except ConnectionError:
            refused = True
        assert refused or await client.closed_by_server(within=LINGER_SECONDS + 1)
        assert client.sent < declared, "the server read the whole body"
    finally:
        client.close()


async def test_the_limits_leave_ordinary_requests_alone(stack: ApiStack) -> None:
    """Keep-alive after a request read to its end; a webhook body just under its
    limit is judged on its signature, not refused for its size."""
    http: Any = stack.http(Role.SALES)
    for _ in range(2):
        r = await http.get("/api/deals?limit=1")
        assert r.status_code == 200 and r.headers.get("connection") != "close"
    body = b"{" + b" " * (255 * 1024) + b"}"
    r = await http.post(
        f"/webhooks/lenders/{ACME}", content=body, headers=signed("whsec_AAAA", body)
    )
    assert r.status_code == 401, r.text
