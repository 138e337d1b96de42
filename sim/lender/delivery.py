"""Outbound webhooks: Standard Webhooks 1.0, from the durable outbox in the ledger.

Every webhook is written to the ledger before any attempt to send it. The
`Dispatcher` (started in the app's lifespan) picks due rows, signs each try
afresh (new `webhook-timestamp`, same `webhook-id`, same body), POSTs it and
retries anything but a 2xx with exponential backoff up to `max_attempts`.
A restarted simulator resumes whatever is still pending. Deliveries for one
application go out in order (see ledger `_ELIGIBLE`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from sim.lender.config import SimConfig
from sim.lender.ledger import Ledger

log = logging.getLogger("sim.lender.delivery")

# Used for scripted `bad_signature` events: a well-formed signature by the wrong key.
WRONG_SECRET = "whsec_" + base64.b64encode(b"not-the-lender-secret-0123456789").decode()


def build_body(type: str, data: dict[str, Any], timestamp: datetime) -> str:
    """The webhook body, serialised once and stored: retries and scripted
    duplicates send exactly these bytes."""
    return json.dumps(
        {"type": type, "timestamp": timestamp.astimezone(UTC).isoformat(), "data": data},
        separators=(",", ":"),
    )


def signed_headers(
    secret: str, webhook_id: str, body: str, now: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for one delivery attempt."""
    ts = (now or datetime.now(UTC)).astimezone(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(math.floor(ts.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, ts, body),
        "content-type": "application/json",
    }


class Dispatcher:
    def __init__(self, config: SimConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._sem = asyncio.Semaphore(config.delivery_concurrency)

    def wake(self) -> None:
        """Look at the outbox now (a new webhook was stored)."""
        self._wake.set()

    async def start(self) -> None:
        # trust_env=False: the receiver is the DealFlow API next door; an
        # HTTP(S)_PROXY meant for the outside world must not capture it.
        self._client = httpx.AsyncClient(timeout=self.config.delivery_timeout, trust_env=False)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="lender-sim-delivery")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        cap = self.config.delivery_concurrency * 4
        while not self._stopping:
            self._wake.clear()
            timeout = 1.0
            try:
                room = cap - len(self._in_flight)
                if room > 0:
                    rows = await asyncio.to_thread(
                        self.ledger.due_webhooks, time.time(), list(self._in_flight), room
                    )
                    for row in rows:
                        seq = int(row["seq"])
                        self._in_flight[seq] = asyncio.create_task(self._deliver(row))
                    nxt = await asyncio.to_thread(self.ledger.next_due_at, list(self._in_flight))
                    if nxt is not None:
                        timeout = min(max(nxt - time.time(), 0.0), 1.0)
                    if timeout == 0.0 and len(self._in_flight) >= cap:
                        timeout = 1.0  # full: a finishing delivery wakes us
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lender simulator: outbox scan failed")
                timeout = 0.5
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _deliver(self, row: dict[str, Any]) -> None:
        seq = int(row["seq"])
        try:
            async with self._sem:
                await self._attempt(row)
        finally:
            self._in_flight.pop(seq, None)
            self._wake.set()

    async def _attempt(self, row: dict[str, Any]) -> None:
        seq = int(row["seq"])
        if await asyncio.to_thread(self.ledger.webhook_status, seq) != "pending":
            return  # cancelled by a withdrawal since it was picked
        lender = self.config.lenders.get(row["lender_id"])
        if lender is None:
            await asyncio.to_thread(
                self.ledger.record_attempt,
                seq,
                http_status=None,
                error=f"lender {row['lender_id']!r} is not in the lenders file",
                delivered=False,
                next_attempt_at=None,
            )
            return
        secret = lender.webhook_secret if row["sign_ok"] else WRONG_SECRET
        body: str = row["body"]
        headers = signed_headers(secret, row["id"], body)
        code: int | None = None
        error: str | None = None
        assert self._client is not None
        try:
            resp = await self._client.post(row["target"], content=body.encode(), headers=headers)
            code = resp.status_code
            if not 200 <= code < 300:
                error = resp.text[:500]
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"[:500]
        delivered = code is not None and 200 <= code < 300
        attempts = int(row["attempts"]) + 1
        next_at: float | None = None
        if not delivered and attempts < int(row["max_attempts"]):
            next_at = time.time() + self.config.backoff(attempts)
        log.info(
            "webhook %s %s lender=%s deal=%s attempt=%d status=%s%s",
            row["id"],
            row["type"],
            row["lender_id"],
            row["deal_id"],
            attempts,
            code if code is not None else "-",
            "" if delivered else (" retry" if next_at else " gave up"),
        )
        await asyncio.to_thread(
            self.ledger.record_attempt,
            seq,
            http_status=code,
            error=error,
            delivered=delivered,
            next_attempt_at=next_at,
        )
