"""Request bodies bounded before and while they are read.

FastAPI reads a JSON body before the route's dependencies run, so without this
a caller with no token could make the API read (and hold) any amount. Every
request falls in one class, by its route, and each class has one body limit:

- upload: `POST /api/deals/{id}/documents` and the desk's upload — the
  policy's `max_document_bytes` plus 64 KiB for the multipart envelope (the
  route itself refuses a declared length over the limit, after the deal's
  checks, so that it can answer the desk's page);
- webhook: `/webhooks/...` — 256 KiB (`DEALFLOW_MAX_WEBHOOK_BODY_BYTES`);
- codec: `/codec/decode`, `/codec/encode` — 4 MiB (`DEALFLOW_MAX_CODEC_BODY_BYTES`);
- other: deals, actions, the desk's and the codec's forms, ... — 64 KiB
  (`DEALFLOW_MAX_BODY_BYTES`).

`BodyLimitMiddleware`, in this order, before the route runs: a route that needs
a staff token (`/api/...`) has the token checked (401) and, where the route
declares one, the role (403) — before a byte of the body is read; a
Content-Length over the limit is 413. Then, while the route reads, the body is
counted (a chunked body too); the moment it passes the limit the route sees
the client as gone, and its answer becomes the 413 — unless the route has said
it is draining the body (`mark_draining`: an upload refused to a signed-in
clerk reads the rest, bounded, so the clerk's browser shows the answer).

Any answer given before the body was read to its end carries `Connection:
close`, so the server closes the connection instead of reading (draining) the
rest; only a short lingering read (64 KiB, 1 s at most) comes first, because a
client whose unread bytes meet a closed socket gets a reset that can erase the
answer before it reads it (RFC 9112 §9.6).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dealflow.api.deps import Services
from dealflow.api.errors import Problem
from dealflow.api.problems import problem_response
from dealflow.api.security import authenticate, needs_bearer_token, route_requirement

# Room for the multipart envelope (boundaries, part headers, the form fields)
# on top of the file itself.
ENVELOPE_BYTES = 64 * 1024
_UPLOAD_PATH = re.compile(r"^/(api|desk)/deals/[^/]+/documents/?$")
_CODEC_PATHS = frozenset({"/codec/decode", "/codec/encode"})
_CLOSE = (b"connection", b"close")
# What is read (and dropped) after an early answer before the connection closes.
LINGER_BYTES = 64 * 1024
LINGER_SECONDS = 1.0
# Set in the scope by a route that reads the rest of a refused body (bounded
# by its own limits): what it reads no longer counts against the class limit.
DRAINING = "dealflow.draining"


@dataclass(frozen=True)
class BodyClass:
    """A route class's body limit and how a 413 words it."""

    name: str
    limit: int
    # Formatted with `size` (" of N bytes" when declared, else "") and `stated`.
    refusal: str
    stated: int
    # Whether the route judges a declared Content-Length itself.
    route_checks_declared: bool = False

    def too_large(self, declared: int | None = None) -> str:
        size = f" of {declared:,} bytes" if declared is not None else ""
        return self.refusal.format(size=size, stated=self.stated)


def body_class(method: str, path: str, svc: Services) -> BodyClass:
    """The class of a request, by its method and path."""
    settings = svc.settings
    if method == "POST" and _UPLOAD_PATH.match(path):
        document = svc.deal_policy.max_document_bytes
        return BodyClass(
            "upload",
            document + ENVELOPE_BYTES,
            "the upload{size} is larger than the limit of {stated:,} bytes per document; "
            "nothing was stored",
            document,
            route_checks_declared=True,
        )
    if path.startswith("/webhooks/"):
        limit = settings.max_webhook_body_bytes
        refusal = "webhook body{size} exceeds the limit of {stated} bytes"
        return BodyClass("webhook", limit, refusal, limit)
    if path in _CODEC_PATHS:
        limit = settings.max_codec_body_bytes
        return BodyClass(
            "codec", limit, "the request{size} is larger than the limit of {stated:,} bytes", limit
        )
    limit = settings.max_body_bytes
    return BodyClass(
        "other",
        limit,
        "the request body{size} is larger than the limit of {stated:,} bytes of this endpoint",
        limit,
    )


def mark_draining(scope: Scope) -> None:
    """Say that the route now reads the rest of a refused body only to drop it."""
    scope[DRAINING] = True


class BodyLimitMiddleware:
    """Auth before the body, one body limit per route class, no draining (module doc)."""

    def __init__(self, app: ASGIApp, services: Services, routes: list[BaseRoute]) -> None:
        self.app = app
        self.services = services
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bounded = BoundedRequest(
            scope, receive, send, body_class(scope["method"], scope["path"], self.services)
        )
        refusal = await self._refuse_caller(scope)
        if refusal is not None:
            await bounded.answer(refusal)
            return
        kind = bounded.body_class
        declared = bounded.declared
        if declared is not None and declared > kind.limit and not kind.route_checks_declared:
            await bounded.answer(Problem(413, kind.too_large(declared)))
            return
        try:
            await self.app(scope, bounded.receive, bounded.send)
        except ClientDisconnect:
            if not bounded.overflowed:
                raise
            # The route gave up on the body it was cut off from: the 413 below.
        await bounded.finish()

    def _route(self, scope: Scope) -> BaseRoute | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
        return None

    async def _refuse_caller(self, scope: Scope) -> Problem | None:
        """401/403 for a route that needs a token, decided from the headers alone."""
        if not needs_bearer_token(scope["path"]):
            return None
        route = self._route(scope)
        if route is None:
            return None  # the router answers 404 or 405
        try:
            principal = await authenticate(Request(scope))
            requirement = route_requirement(route)
            if requirement is not None:
                requirement.actor_of(principal)
        except Problem as refusal:
            scope["route"] = route  # for the metrics' route label
            return refusal
        return None


class BoundedRequest:
    """One request's body, counted as the app reads it, and its answer."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, body_class: BodyClass) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.body_class = body_class
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        self.declared = int(length) if length.isdigit() else None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.body_read = not chunked and not self.declared
        self.received = 0
        self.response_started = False
        # The body passed its limit: the app sees the client as gone, and its
        # answer — sent once it has let go of what it held, such as a partly
        # stored upload — becomes the 413.
        self.overflowed = False
        # Set once this middleware has answered: the app's own answer is dropped.
        self.answered = False

    async def receive(self) -> Message:
        if self.answered or self.overflowed:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.body_class.limit and not self.scope.get(DRAINING):
                self.overflowed = True
                return {"type": "http.disconnect"}
            if not message.get("more_body", False):
                self.body_read = True
        return message

    async def send(self, message: Message) -> None:
        """The app's answer (the 413 instead once the body overflowed)."""
        if self.answered:
            return
        if self.overflowed and not self.response_started:
            await self.answer(Problem(413, self.body_class.too_large()))
            return
        await self._forward(message)

    async def finish(self) -> None:
        """After the app: the 413 of an overflowed body the app did not answer."""
        if self.overflowed and not self.response_started:
            await self.answer(Problem(413, self.body_class.too_large()))

    async def _forward(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
            if not self.body_read:
                # Answered before the body ended: close rather than read the rest.
                headers = list(message.get("headers", []))
                if _CLOSE not in headers:
                    message = {**message, "headers": [*headers, _CLOSE]}
        elif message["type"] == "http.response.body" and not (
            self.body_read or message.get("more_body", False)
        ):
            # The whole answer goes out first; the connection closes after a
            # short lingering read, so the client gets to read the answer.
            await self._send({**message, "more_body": True})
            await self._linger()
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self._send(message)

    async def _linger(self) -> None:
        """Read and drop a little of the rest of the body (bounded in bytes and time)."""
        read = 0
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while not self.body_read and read < LINGER_BYTES:
                    message = await self._receive()
                    if message["type"] != "http.request":
                        return
                    read += len(message.get("body", b""))
                    self.body_read = not message.get("more_body", False)
        except TimeoutError:
            return

    async def answer(self, problem: Problem) -> None:
        """Answer `problem` in the app's stead (unless it has started its own answer)."""
        if not self.response_started:
            response = problem_response(problem.status, problem.detail, problem.headers)
            await response(self.scope, self.receive, self._forward)
        self.answered = True
