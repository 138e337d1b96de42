"""2. Webhook ingest: signed lender webhooks through the API vs. raw `client.signal` calls.

Two equal sets of deals are driven to UNDERWRITING with a lender that stays
silent (a simulator script), so each waits for a decision. Then the same mix
of lender decisions goes to each set at the same concurrency:

- webhook arm: `POST /webhooks/lenders/{id}` to the API, Standard Webhooks
  signed: unique events, 10 % duplicates (same webhook-id and body, re-signed)
  and 5 % forged (signed with a wrong key; must get 401 and never be applied);
- raw arm: `client.signal(lender-event)` of the same unique and duplicate
  events, straight to Temporal (a raw signal has no signature to forge).

Each unique event is a counter-offer with its own `decision_seq`, so every
deal keeps waiting and records each decision it receives (applied, or stale
if a higher seq came first). Afterwards each deal's status is read back:
every unique event must be recorded exactly once, no forged one at all.
The arms run webhook, raw, raw, webhook (two halves each) against drift.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench import http_lite
from bench.bench_driver import Driver, bounded
from bench.bench_profile import Profiles
from bench.bench_stack import CpuMeter, Ctx, pct, row, say
from dealflow import client as deals
from dealflow.models import ApplicationDecided, DealStatus, LenderEventInput
from dealflow.progress import Bar, Board, progress_board
from sim.lender.delivery import WRONG_SECRET, build_body, signed_headers

LENDER = "acme-auto-finance"
SILENT = {"lenders": {LENDER: [{"decision": "silent"}]}}
CONCURRENCY = 32
DEALS_FULL = 100  # per arm
REQUESTS_FULL = 2000  # per arm


@dataclass
class Event:
    deal_id: str
    webhook_id: str
    body: str
    forged: bool = False
    duplicate: bool = False

    def signal_input(self) -> LenderEventInput:
        payload = json.loads(self.body)
        return LenderEventInput(
            webhook_id=self.webhook_id,
            lender_id=LENDER,
            type=payload["type"],
            received_at=datetime.now(UTC),
            decided=ApplicationDecided.model_validate(payload["data"]),
            raw=payload,
        )


def make_events(
    refs: dict[str, str], total: int, rng: random.Random
) -> tuple[list[Event], dict[str, set[str]], set[str]]:
    """The request list (shuffled), the unique webhook ids each deal must record,
    and the forged ids no deal may record."""
    n_forged = round(total * 0.05)
    n_dup = round(total * 0.10)
    n_unique = total - n_forged - n_dup
    deal_ids = list(refs)
    expected: dict[str, set[str]] = {d: set() for d in deal_ids}
    unique: list[Event] = []
    seq: Counter[str] = Counter()
    now = datetime.now(UTC)
    for i in range(n_unique):
        d = deal_ids[i % len(deal_ids)]
        seq[d] += 1
        data = {
            "deal_id": d,
            "application_ref": refs[d],
            "decision_seq": seq[d],
            "decision": "counter_offer",
            "approved_amount": f"{90000 + seq[d]}.00",
            "apr": "6.50",
            "term_months": 36,
            "stipulations": [],
            "reasons": [],
        }
        ev = Event(d, f"msg_{uuid.uuid4().hex}", build_body("application.decided", data, now))
        unique.append(ev)
        expected[d].add(ev.webhook_id)
    dups = [
        Event(e.deal_id, e.webhook_id, e.body, duplicate=True) for e in rng.choices(unique, k=n_dup)
    ]
    forged: list[Event] = []
    for i in range(n_forged):
        d = deal_ids[i % len(deal_ids)]
        data = {
            "deal_id": d,
            "application_ref": refs[d],
            "decision_seq": 1_000_000 + i,
            "decision": "approved",
            "approved_amount": "105000.00",
            "apr": "6.50",
            "term_months": 36,
            "stipulations": [],
            "reasons": [],
        }
        forged.append(
            Event(
                d,
                f"msg_{uuid.uuid4().hex}",
                build_body("application.decided", data, now),
                forged=True,
            )
        )
    events = unique + dups + forged
    rng.shuffle(events)
    return events, expected, {e.webhook_id for e in forged}


async def prepare(driver: Driver, n: int, conc: int, bar: Bar) -> dict[str, str]:
    """`n` deals waiting for a decision: deal id -> application_ref."""

    async def one(_: int) -> tuple[str, str]:
        deal_id = await driver.start(script=SILENT)
        await driver.to_underwriting(deal_id)
        st = await driver.wait(
            deal_id,
            lambda s: bool(s.submissions) and s.submissions[-1].application_ref is not None,
            "application_ref",
        )
        return deal_id, st.submissions[-1].application_ref or ""

    return dict(await bounded(n, conc, bar.counted(one)))


async def send(
    events: list[Event], how: Any, conc: int, bar: Bar
) -> tuple[float, list[float], Counter[str]]:
    """Send `events` with `conc` senders; (wall seconds, latencies, outcome counts)."""
    it = iter(events)
    lat: list[float] = []
    outcomes: Counter[str] = Counter()

    async def sender() -> None:
        for ev in it:
            try:
                outcome, dt = await how(ev)
            except Exception as e:  # counted, not fatal: the check below finds losses
                outcome, dt = f"error:{type(e).__name__}", None
            outcomes[outcome] += 1
            if dt is not None:
                lat.append(dt)
            bar.advance()

    t0 = time.monotonic()
    await asyncio.gather(*(sender() for _ in range(conc)))
    return time.monotonic() - t0, lat, outcomes


async def check(
    driver: Driver, expected: dict[str, set[str]], forged: set[str], limit: float, bar: Bar
) -> dict[str, int]:
    """Read every deal back once it recorded as many decisions as it was sent."""
    deadline = time.monotonic() + limit
    lost = doubled = forged_applied = 0

    async def settled(deal_id: str) -> DealStatus:
        while True:
            st = await driver.status(deal_id)
            n = sum(len(s.decisions) for s in st.submissions)
            if n >= len(expected[deal_id]) or time.monotonic() > deadline:
                return st
            await asyncio.sleep(0.2)

    for deal_id, want in expected.items():
        st = await settled(deal_id)
        seen = Counter(d.webhook_id for s in st.submissions for d in s.decisions)
        lost += len(want - set(seen))
        doubled += sum(1 for c in seen.values() if c > 1)
        forged_applied += len(forged & set(seen))
        bar.advance()
    return {"lost": lost, "doubly_applied": doubled, "forged_applied": forged_applied}


async def run(ctx: Ctx) -> dict[str, Any]:
    with progress_board() as board:
        return await run_on(ctx, board)


async def run_on(ctx: Ctx, board: Board) -> dict[str, Any]:
    n_deals = ctx.n(DEALS_FULL, 2)
    total = ctx.n(REQUESTS_FULL, 40)
    rng = random.Random(5)
    async with ctx.stack("b2-webhooks") as s:
        assert s.client is not None
        client = s.client
        driver = s.driver()
        say(f"[2] driving {2 * n_deals} deals to UNDERWRITING (lender silent)")
        bar = board.add("[2] deals to UNDERWRITING", 2 * n_deals)
        refs = await prepare(driver, 2 * n_deals, ctx.n(20, 3), bar)
        ids = list(refs)
        web_refs = {d: refs[d] for d in ids[:n_deals]}
        raw_refs = {d: refs[d] for d in ids[n_deals:]}
        web_events, web_expected, web_forged = make_events(web_refs, total, rng)
        raw_all, raw_expected, _ = make_events(raw_refs, total, rng)
        raw_events = [e for e in raw_all if not e.forged]
        secret = s.lenders[LENDER].webhook_secret
        url = f"{s.api_url}/webhooks/lenders/{LENDER}"
        http = http_lite.Pool(url, CONCURRENCY)
        # Signed just before each half is sent (well inside the 5-minute
        # tolerance), as the lender signs on its own machine.
        signed: dict[int, dict[str, str]] = {}

        async def post(ev: Event) -> tuple[str, float]:
            headers = signed[id(ev)]
            t0 = time.monotonic()
            status = await http.post(ev.body.encode(), headers)
            dt = time.monotonic() - t0
            want = 401 if ev.forged else 204
            return ("ok" if status == want else f"http {status}"), dt

        async def signal(ev: Event) -> tuple[str, float]:
            inp = ev.signal_input()
            t0 = time.monotonic()
            await deals.signal_lender_event(client, ev.deal_id, inp)
            return "ok", time.monotonic() - t0

        await s.wait_idle(["temporal", "worker", "api"], quiet_for=ctx.n(2, 1), limit=120)
        arms: dict[str, dict[str, Any]] = {
            a: {"n": 0, "wall": 0.0, "lat": [], "outcomes": Counter(), "cpu": Counter()}
            for a in ("webhook", "raw")
        }
        halves = {
            "webhook": [web_events[: len(web_events) // 2], web_events[len(web_events) // 2 :]],
            "raw": [raw_events[: len(raw_events) // 2], raw_events[len(raw_events) // 2 :]],
        }
        for arm, half in (("webhook", 0), ("raw", 0), ("raw", 1), ("webhook", 1)):
            evs = halves[arm][half]
            if arm == "webhook":
                signed.clear()
                for ev in evs:
                    key = WRONG_SECRET if ev.forged else secret
                    signed[id(ev)] = signed_headers(key, ev.webhook_id, ev.body)
            meter = CpuMeter(
                {"server": s.pid("temporal"), "worker": s.pid("worker"), "api": s.pid("api")}
            ).start()
            prof = None
            if ctx.profile and half == 0:
                names = {"api": s.pid("api"), "worker": s.pid("worker")}
                prof = Profiles(names, ctx.results_dir / "profiles", f"b2-{arm}")
            bar = board.add(f"[2] {arm} arm, half {half + 1}", len(evs), "requests")
            wall, lat, outcomes = await send(
                evs, post if arm == "webhook" else signal, CONCURRENCY, bar
            )
            meter.stop()
            if prof is not None:
                prof.stop()
            a = arms[arm]
            a["n"] += len(evs)
            a["wall"] += wall
            a["lat"] += lat
            a["outcomes"].update(outcomes)
            a["cpu"].update(meter.used)
            say(
                f"[2] {arm:7} {len(evs)} requests: {len(evs) / wall:.0f}/s, "
                f"p99 {1000 * pct(lat, 99):.0f} ms, {dict(outcomes)}"
            )
            await s.wait_idle(["temporal", "worker", "api"], quiet_for=ctx.n(2, 1), limit=300)
        await http.aclose()
        say("[2] reading every deal back")
        bar = board.add("[2] deals read back", len(web_expected) + len(raw_expected))
        web_check = await check(driver, web_expected, web_forged, ctx.n(300, 60), bar)
        raw_check = await check(driver, raw_expected, set(), ctx.n(300, 60), bar)

    w, r = arms["webhook"], arms["raw"]
    w_rate, r_rate = w["n"] / w["wall"], r["n"] / r["wall"]
    w_p99, r_p99 = 1000 * pct(w["lat"], 99), 1000 * pct(r["lat"], 99)
    bad_status = sum(v for k, v in w["outcomes"].items() if k != "ok")
    raw_errors = sum(v for k, v in r["outcomes"].items() if k != "ok")
    wrong = web_check["lost"] + web_check["doubly_applied"] + web_check["forged_applied"]
    rows = [
        row(
            "webhooks/s",
            w_rate,
            "/s",
            baseline=r_rate,
            target=">= 0.9x raw signal",
            ok=ctx.judge(w_rate >= 0.9 * r_rate),
            key="webhooks_per_s_vs_signal",
        ),
        row(
            "webhook p99",
            w_p99,
            "ms",
            baseline=r_p99,
            target="<= 2x raw signal",
            ok=ctx.judge(w_p99 <= 2 * r_p99),
            key="webhook_p99_s",
        ),
        row(
            "webhook p50",
            1000 * pct(w["lat"], 50),
            "ms",
            baseline=1000 * pct(r["lat"], 50),
            key="webhook_p50_s",
        ),
        row(
            "lost / doubly applied / forged applied",
            wrong,
            "",
            baseline=raw_check["lost"] + raw_check["doubly_applied"],
            target="0",
            ok=wrong == 0 and bad_status == 0,
            key="webhooks_lost_doubled_forged",
            note=f"webhook {web_check}, unexpected HTTP statuses {bad_status}; raw {raw_check}, "
            f"errors {raw_errors}",
        ),
    ]
    return {
        "rows": rows,
        "detail": {
            "deals_per_arm": n_deals,
            "requests": total,
            "concurrency": CONCURRENCY,
            "webhook": {
                "requests": w["n"],
                "rate": w_rate,
                "p50_ms": 1000 * pct(w["lat"], 50),
                "p90_ms": 1000 * pct(w["lat"], 90),
                "p99_ms": w_p99,
                "outcomes": dict(w["outcomes"]),
                "check": web_check,
                "cpu_ms_per_request": {k: 1000 * v / w["n"] for k, v in w["cpu"].items()},
            },
            "raw": {
                "requests": r["n"],
                "rate": r_rate,
                "p50_ms": 1000 * pct(r["lat"], 50),
                "p90_ms": 1000 * pct(r["lat"], 90),
                "p99_ms": r_p99,
                "outcomes": dict(r["outcomes"]),
                "check": raw_check,
                "cpu_ms_per_request": {k: 1000 * v / r["n"] for k, v in r["cpu"].items()},
            },
        },
    }


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as tmp:
        out = asyncio.run(run(Ctx(Path(tmp), Path("bench/results"), quick=True)))
        print(json.dumps(out, indent=1, default=str))
