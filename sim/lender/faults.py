"""Fault injection for the lender simulator's lender API (chaos tests).

A real lender misbehaves: it answers 500, lets a request time out, answers
slowly, or refuses a request with a 4xx that no retry will change. The chaos
suite (``bench/chaos.py``) switches these on at run time through

    PUT    /_sim/faults   {"rules": [FaultRule, ...], "seed": 7}   replace the rules
    POST   /_sim/faults   FaultRule                                add one rule
    GET    /_sim/faults                                            rules, hits, log, traffic
    DELETE /_sim/faults                                            remove rules, clear log

and every request to ``/lenders/{lender_id}/applications...`` consults them.
A rule matches a request by endpoint, lender and deal (each optional), fires
with probability ``ratio``, at most ``count`` times, until ``until`` (unix
seconds) or ``duration`` seconds after it was added. The first matching rule
that fires decides; a request matched by no rule is handled normally.

Modes:

* ``500``     -- answer ``status`` (default 500) with a problem body.
* ``timeout`` -- hold the request ``delay`` seconds (default 60, longer than
  any sane client timeout), then answer 504. The client gives up first.
* ``slow``    -- wait ``delay`` seconds (default 2), then handle it normally.
* ``4xx``     -- answer ``status`` (default 422): a verdict, not a glitch; a
  correct client does not retry it.

``phase`` says when a ``500`` or ``timeout`` strikes: ``before`` (default)
the request is not processed at all; ``after`` it is processed and recorded
in the ledger, and only the reply is lost (a 500 instead of the 202, or no
reply before the client's timeout). ``after`` is what proves a client's
idempotency keys: its retry must find the first request, not make a second.
``slow`` and ``4xx`` are always ``before``.

Rules, hit counters and the log live in memory: a restarted simulator starts
with no faults (the ledger, scripts and outbox survive as before). The
``traffic`` counters (requests received per endpoint, lender and deal, and
the requests in flight right now) let a test see that a client stopped
calling after a refusal, or kill a client while its call is in flight.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["applications", "disbursement-requests", "withdrawal", "repayment"]
ENDPOINTS: tuple[Endpoint, ...] = (
    "applications",
    "disbursement-requests",
    "withdrawal",
    "repayment",
)
Mode = Literal["500", "timeout", "slow", "4xx"]
Phase = Literal["before", "after"]

DEFAULT_DELAY: dict[str, float] = {"timeout": 60.0, "slow": 2.0, "500": 0.0, "4xx": 0.0}
DEFAULT_STATUS: dict[str, int] = {"500": 500, "timeout": 504, "4xx": 422, "slow": 0}
MAX_LOG = 10_000


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode
    # Which requests: None matches every endpoint / lender / deal.
    endpoints: list[Endpoint] | None = None
    lender_id: str | None = None
    deal_id: str | None = None
    ratio: Annotated[float, Field(ge=0, le=1)] = 1.0
    count: Annotated[int, Field(ge=1)] | None = None
    until: float | None = None  # unix seconds
    duration: Annotated[float, Field(gt=0)] | None = None  # seconds from when it was added
    delay: Annotated[float, Field(ge=0, le=3600)] | None = None
    status: Annotated[int, Field(ge=400, le=599)] | None = None
    phase: Phase = "before"
    note: Annotated[str, Field(max_length=200)] = ""

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.mode == "4xx" and self.status is not None and not 400 <= self.status < 500:
            raise ValueError("a 4xx fault needs a status from 400 to 499")
        if self.mode == "500" and self.status is not None and self.status < 500:
            raise ValueError("a 500 fault needs a status from 500 to 599")
        if self.mode in ("slow", "4xx") and self.phase != "before":
            raise ValueError(f"a {self.mode} fault always strikes before the request is handled")
        return self

    @property
    def effective_delay(self) -> float:
        return self.delay if self.delay is not None else DEFAULT_DELAY[self.mode]

    @property
    def effective_status(self) -> int:
        return self.status if self.status is not None else DEFAULT_STATUS[self.mode]


class FaultsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = Field(default_factory=list, max_length=1000)
    seed: int | None = None


@dataclass
class _Active:
    id: int
    rule: FaultRule
    added_at: float
    until: float | None
    checked: int = 0
    hits: int = 0

    def live(self, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        return self.rule.count is None or self.hits < self.rule.count

    def matches(self, endpoint: str, lender_id: str, deal_id: str | None) -> bool:
        r = self.rule
        return (
            (r.endpoints is None or endpoint in r.endpoints)
            and (r.lender_id is None or r.lender_id == lender_id)
            and (r.deal_id is None or r.deal_id == deal_id)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.rule.model_dump(mode="json"),
            "added_at": self.added_at,
            "until": self.until,
            "checked": self.checked,
            "hits": self.hits,
        }


@dataclass(frozen=True)
class Strike:
    """A fault that fired for one request."""

    rule_id: int
    mode: Mode
    phase: Phase
    delay: float
    status: int


@dataclass
class Faults:
    """The rules and counters of one simulator process. Used from the event loop only."""

    rules: list[_Active] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    in_flight: dict[int, dict[str, Any]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    _next_id: int = 1
    _next_req: int = 1

    # ------------------------------------------------------------------ admin

    def replace(self, body: FaultsBody) -> None:
        self.rules = []
        if body.seed is not None:
            self.rng = random.Random(body.seed)
        for rule in body.rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> dict[str, Any]:
        now = time.time()
        until = rule.until
        if rule.duration is not None:
            until = now + rule.duration if until is None else min(until, now + rule.duration)
        active = _Active(id=self._next_id, rule=rule, added_at=now, until=until)
        self._next_id += 1
        self.rules.append(active)
        return active.as_dict()

    def clear(self) -> None:
        self.rules = []
        self.log = []
        self.requests.clear()

    def snapshot(self, deal_id: str | None = None) -> dict[str, Any]:
        now = time.time()

        def mine(d: str | None) -> bool:
            return deal_id is None or d == deal_id

        return {
            "now": now,
            "rules": [{**a.as_dict(), "live": a.live(now)} for a in self.rules],
            "injected": [e for e in self.log if mine(e["deal_id"])],
            "traffic": [
                {"endpoint": ep, "lender_id": lid, "deal_id": did or None, "requests": n}
                for (ep, lid, did), n in sorted(self.requests.items())
                if mine(did or None)
            ],
            "in_flight": [r for r in self.in_flight.values() if mine(r["deal_id"])],
        }

    # ------------------------------------------------------------------ requests

    @contextmanager
    def request(self, endpoint: Endpoint, lender_id: str, deal_id: str | None) -> Iterator[None]:
        """Count one lender-API request and show it as in flight while it runs."""
        self.requests[(endpoint, lender_id, deal_id or "")] += 1
        rid = self._next_req
        self._next_req += 1
        self.in_flight[rid] = {
            "endpoint": endpoint,
            "lender_id": lender_id,
            "deal_id": deal_id,
            "since": time.time(),
        }
        try:
            yield
        finally:
            self.in_flight.pop(rid, None)

    def strike(self, endpoint: Endpoint, lender_id: str, deal_id: str | None) -> Strike | None:
        """The fault to apply to this request, if any (and log it)."""
        now = time.time()
        for a in self.rules:
            if not a.live(now) or not a.matches(endpoint, lender_id, deal_id):
                continue
            a.checked += 1
            if a.rule.ratio < 1 and self.rng.random() >= a.rule.ratio:
                continue
            a.hits += 1
            s = Strike(
                a.id, a.rule.mode, a.rule.phase, a.rule.effective_delay, a.rule.effective_status
            )
            if len(self.log) < MAX_LOG:
                self.log.append(
                    {
                        "at": now,
                        "rule_id": a.id,
                        "mode": s.mode,
                        "phase": s.phase,
                        "endpoint": endpoint,
                        "lender_id": lender_id,
                        "deal_id": deal_id,
                        "status": s.status if s.mode != "slow" else None,
                    }
                )
            return s
        return None


async def hold(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)
