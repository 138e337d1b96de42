"""The lender webhook receiver (docs/architecture.md §3.4) over real HTTP, with real Standard
Webhooks signatures made by the `standardwebhooks` package, against the real
API app and a real Temporal dev server. Deals wait in UNDERWRITING with a
silent lender (the simulator never answers), so every decision they see came
from a webhook sent here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select
from standardwebhooks.webhooks import Webhook
from temporalio.api.enums.v1 import EventType

from dealflow.api.deps import DealLenders
from dealflow.api.routes.webhooks import MAX_WEBHOOK_BYTES
from dealflow.models import DealStatus, Stage, Submission
from dealflow.storage import db
from tests.support.back_office import Desk
from tests.support.stack import Stack, deal_worker

ACME, BETA, CATHAY = "acme-auto-finance", "beta-motor-credit", "cathay-car-loans"
SILENT = {"lenders": {ACME: [{"decision": "silent"}], BETA: [{"decision": "silent"}]}}
FINANCED = "105000.00"


# --------------------------------------------------------------------------- helpers


def secret(stack: Stack, lender_id: str) -> str:
    return stack.lenders[lender_id].webhook_secret


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def signed(
    secret_: str, body: bytes, webhook_id: str | None = None, at: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed by the `standardwebhooks` library."""
    webhook_id = webhook_id or new_id()
    at = at or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret_).sign(webhook_id, at, body.decode()),
        "content-type": "application/json",
    }


def event(type_: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": type_, "timestamp": datetime.now(UTC).isoformat(), "data": data},
        separators=(",", ":"),
    ).encode()


def decided(
    deal_id: str, ref: str, seq: int = 1, decision: str = "approved", amount: str | None = FINANCED
) -> bytes:
    return event(
        "application.decided",
        {
            "deal_id": deal_id,
            "application_ref": ref,
            "decision_seq": seq,
            "decision": decision,
            "approved_amount": amount,
            "apr": "6.50",
            "term_months": 36,
            "stipulations": [],
            "reasons": []
            if decision != "declined"
            else [{"code": "DTI_TOO_HIGH", "text": "debt-to-income too high"}],
        },
    )


async def post(
    stack: Stack, lender_id: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10, trust_env=False) as http:
        return await http.post(f"/webhooks/lenders/{lender_id}", content=body, headers=headers)


def assert_problem(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    problem = r.json()
    assert problem["status"] == status
    detail = str(problem["detail"])
    assert detail, problem
    for f in fragments:
        assert f.lower() in detail.lower(), (f, detail)
    return detail


async def inbox(stack: Stack, lender_id: str, webhook_id: str) -> list[db.InboxRow]:
    """The inbox rows of one webhook id, once no request still has it in hand
    (a duplicate's reply can come before the first request marks it)."""
    deadline = time.monotonic() + 5
    while True:
        with Session(stack.engine) as session:
            rows = list(
                session.exec(
                    select(db.InboxRow).where(
                        col(db.InboxRow.lender_id) == lender_id,
                        col(db.InboxRow.webhook_id) == webhook_id,
                    )
                ).all()
            )
        if all(r.status != "received" for r in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.02)


def decisions(st: DealStatus) -> list[str]:
    return [d.webhook_id for s in st.submissions for d in s.decisions]


async def signals(desk: Desk) -> int:
    events = await desk.quiet_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in events)


# --------------------------------------------------------------------------- fixtures


NewDeal = Callable[[], Awaitable[tuple[Desk, Submission]]]


@pytest.fixture(scope="module")
async def task_queue(dev_stack: Stack, database_url: str) -> AsyncIterator[str]:
    async with deal_worker(
        dev_stack.env.client, database_url, dev_stack.lenders, dev_stack.store
    ) as tq:
        yield tq


@pytest.fixture(scope="module")
async def new_deal(dev_stack: Stack, task_queue: str) -> AsyncIterator[NewDeal]:
    """Deals waiting in UNDERWRITING for a lender that stays silent."""
    desks: list[Desk] = []

    async def make() -> tuple[Desk, Submission]:
        desk = Desk(dev_stack, task_queue)
        desks.append(desk)
        await desk.start(script=SILENT)
        await desk.through_documents()
        await desk.do("submit-application")
        return desk, await desk.submitted()

    yield make
    for d in desks:
        await d.close()


@pytest.fixture(scope="module")
async def quiet(new_deal: NewDeal) -> tuple[Desk, Submission]:
    """One deal every refused webhook is aimed at; it must never see any of them."""
    return await new_deal()


@pytest.fixture
async def untouched(quiet: tuple[Desk, Submission]) -> AsyncIterator[tuple[Desk, Submission]]:
    """The quiet deal, checked after the test: no signal, no decision, still waiting."""
    desk, _ = quiet
    yield quiet
    assert await signals(desk) == 0
    st = await desk.status()
    assert decisions(st) == []
    assert st.stage is Stage.UNDERWRITING


# --------------------------------------------------------------------------- accepted


async def test_valid_decision_is_applied_once(dev_stack: Stack, new_deal: NewDeal) -> None:
    desk, sub = await new_deal()
    assert sub.lender_id == ACME and sub.application_ref
    wid = new_id()
    body = decided(desk.deal_id, sub.application_ref)

    # A forgery that arrives first must not claim the id of the genuine event.
    forged = signed(secret(dev_stack, BETA), body, wid)
    assert_problem(await post(dev_stack, ACME, body, forged), 401, "signature")
    assert await inbox(dev_stack, ACME, wid) == []

    r = await post(dev_stack, ACME, body, signed(secret(dev_stack, ACME), body, wid))
    assert r.status_code == 204, r.text
    assert r.content == b""
    st = await desk.wait_stage(Stage.DOWN_PAYMENT)
    assert decisions(st) == [wid]
    current = st.submissions[-1].current
    assert current is not None and current.decision.value == "approved"
    assert str(current.approved_amount) == FINANCED
    [row] = await inbox(dev_stack, ACME, wid)
    assert (row.status, row.deal_id, row.event_type) == (
        "delivered",
        desk.deal_id,
        "application.decided",
    )
    assert row.delivered_at is not None
    assert json.loads(row.body) == json.loads(body)

    # The lender's retry: same id and body, signed afresh a little later -> 204, applied once.
    retry = signed(secret(dev_stack, ACME), body, wid, datetime.now(UTC) + timedelta(seconds=3))
    r = await post(dev_stack, ACME, body, retry)
    assert r.status_code == 204, r.text
    assert await signals(desk) == 1
    st = await desk.status()
    assert decisions(st) == [wid]
    assert st.stage is Stage.DOWN_PAYMENT
    assert [x.status for x in await inbox(dev_stack, ACME, wid)] == ["delivered"]

    # The same id with another body: 409, and the first one stays as it was.
    other = decided(desk.deal_id, sub.application_ref, seq=2, decision="declined", amount=None)
    r = await post(dev_stack, ACME, other, signed(secret(dev_stack, ACME), other, wid))
    assert_problem(r, 409, wid, "different body")
    [after] = await inbox(dev_stack, ACME, wid)
    assert (after.body_sha256, after.status) == (row.body_sha256, "delivered")
    assert await signals(desk) == 1
    assert decisions(await desk.status()) == [wid]


async def test_rotated_secret_any_matching_signature_passes(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    """Several signatures in one header (key rotation): one valid one is enough.
    Aimed at an unknown deal, so passing the check shows as 422, not 401."""
    body = decided("20990101-00000000", "APP-NONE")
    wid = new_id()
    headers = signed(secret(dev_stack, ACME), body, wid)
    wrong = Webhook(secret(dev_stack, BETA)).sign(wid, datetime.now(UTC), body.decode())
    headers["webhook-signature"] = f"{wrong} {headers['webhook-signature']}"
    assert_problem(await post(dev_stack, ACME, body, headers), 422, "unknown deal")


# --------------------------------------------------------------------------- 401


def tamper(signature: str) -> str:
    version, _, mac = signature.partition(",")
    raw = bytearray(base64.b64decode(mac))
    raw[0] ^= 0x01
    return f"{version},{base64.b64encode(bytes(raw)).decode()}"


async def test_bad_signature_is_401_and_not_stored(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    desk, sub = untouched
    body = decided(desk.deal_id, sub.application_ref or "")
    headers = signed(secret(dev_stack, ACME), body)
    headers["webhook-signature"] = tamper(headers["webhook-signature"])
    assert_problem(await post(dev_stack, ACME, body, headers), 401, "no matching signature")
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []


async def test_signature_over_another_body_is_401(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    desk, sub = untouched
    signed_body = decided(desk.deal_id, sub.application_ref or "", decision="declined", amount=None)
    sent = decided(desk.deal_id, sub.application_ref or "")
    headers = signed(secret(dev_stack, ACME), signed_body)
    assert_problem(await post(dev_stack, ACME, sent, headers), 401, "signature")
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []


async def test_event_signed_with_another_lenders_secret_is_401(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    desk, sub = untouched
    body = decided(desk.deal_id, sub.application_ref or "")
    headers = signed(secret(dev_stack, BETA), body)
    assert_problem(await post(dev_stack, ACME, body, headers), 401, "signature")
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []
    assert await inbox(dev_stack, BETA, headers["webhook-id"]) == []


@pytest.mark.parametrize(
    ("shift", "why"),
    [(timedelta(minutes=-10), "too old"), (timedelta(minutes=10), "too new")],
    ids=["10-minutes-old", "10-minutes-ahead"],
)
async def test_timestamp_outside_tolerance_is_401(
    dev_stack: Stack, untouched: tuple[Desk, Submission], shift: timedelta, why: str
) -> None:
    desk, sub = untouched
    body = decided(desk.deal_id, sub.application_ref or "")
    # Correctly signed over the stale timestamp: only the clock check can refuse it.
    headers = signed(secret(dev_stack, ACME), body, at=datetime.now(UTC) + shift)
    assert_problem(await post(dev_stack, ACME, body, headers), 401, why)
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []


@pytest.mark.parametrize(
    "drop",
    [
        ("webhook-id",),
        ("webhook-timestamp",),
        ("webhook-signature",),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ],
    ids=["no-id", "no-timestamp", "no-signature", "none"],
)
async def test_missing_headers_are_401(
    dev_stack: Stack, untouched: tuple[Desk, Submission], drop: tuple[str, ...]
) -> None:
    desk, sub = untouched
    body = decided(desk.deal_id, sub.application_ref or "")
    headers = signed(secret(dev_stack, ACME), body)
    wid = headers["webhook-id"]
    for h in drop:
        del headers[h]
    assert_problem(await post(dev_stack, ACME, body, headers), 401, "missing", *drop)
    assert await inbox(dev_stack, ACME, wid) == []


@pytest.mark.parametrize(
    "signature",
    ["garbage", "v1,not base64!", "v1,a,b", "v2,abc"],
)
async def test_garbled_signature_header_is_401_not_500(
    dev_stack: Stack, untouched: tuple[Desk, Submission], signature: str
) -> None:
    desk, sub = untouched
    body = decided(desk.deal_id, sub.application_ref or "")
    headers = signed(secret(dev_stack, ACME), body)
    headers["webhook-signature"] = signature
    assert_problem(await post(dev_stack, ACME, body, headers), 401, "signature")
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []


async def test_body_that_is_not_utf8_is_401_not_500(dev_stack: Stack) -> None:
    body = b'{"type":"application.decided","data":"\xff\xfe"}'
    headers = {
        "webhook-id": new_id(),
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": "v1,AAAA",
    }
    assert_problem(await post(dev_stack, ACME, body, headers), 401, "UTF-8")
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []


# --------------------------------------------------------------------------- 404, 413


async def test_unknown_lender_is_404(dev_stack: Stack) -> None:
    body = decided("20990101-00000000", "APP-NONE")
    headers = signed(secret(dev_stack, ACME), body)
    assert_problem(
        await post(dev_stack, "no-such-lender", body, headers),
        404,
        "unknown lender",
        "no-such-lender",
    )
    assert await inbox(dev_stack, "no-such-lender", headers["webhook-id"]) == []


async def test_oversized_body_is_413_and_not_stored(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    desk, sub = untouched
    data: dict[str, Any] = {
        "deal_id": desk.deal_id,
        "application_ref": sub.application_ref,
        "decision_seq": 1,
        "decision": "approved",
        "approved_amount": FINANCED,
        "apr": "6.50",
        "term_months": 36,
        "stipulations": [],
        "reasons": [],
        "padding": "x" * MAX_WEBHOOK_BYTES,
    }
    body = event("application.decided", data)
    assert len(body) > MAX_WEBHOOK_BYTES
    headers = signed(secret(dev_stack, ACME), body)  # correctly signed: size alone refuses it
    assert_problem(await post(dev_stack, ACME, body, headers), 413, str(MAX_WEBHOOK_BYTES))
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []

    # Streamed without a Content-Length (chunked): refused all the same.
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    async with httpx.AsyncClient(base_url=dev_stack.api_url, timeout=10, trust_env=False) as h:
        r = await h.post(f"/webhooks/lenders/{ACME}", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_problem(r, 413, str(MAX_WEBHOOK_BYTES))
    assert await inbox(dev_stack, ACME, headers["webhook-id"]) == []


# --------------------------------------------------------------------------- 422, 409


async def test_an_event_from_a_lender_not_on_the_deal_is_422_and_never_signalled(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    """Cathay is a configured lender with a valid signature, but the deal was
    never sent to it: refused, kept as rejected for audit, nothing signalled."""
    desk, sub = untouched
    wid = new_id()
    body = decided(desk.deal_id, sub.application_ref or "")
    r = await post(dev_stack, CATHAY, body, signed(secret(dev_stack, CATHAY), body, wid))
    assert_problem(r, 422, f"lender {CATHAY} was never sent an application of deal")
    [row] = await inbox(dev_stack, CATHAY, wid)
    assert row.status == "rejected" and "never sent an application" in (row.error or "")


async def test_one_lenders_webhook_id_cannot_squat_anothers(
    dev_stack: Stack, new_deal: NewDeal
) -> None:
    """Webhook ids are unique per lender only. Beta (on the routing list, but
    never sent this application) uses the id Acme will use: Beta's event is
    ignored by the deal, and Acme's genuine decision under that id still applies."""
    desk, sub = await new_deal()
    wid = new_id()
    body = decided(desk.deal_id, sub.application_ref or "")
    r = await post(dev_stack, BETA, body, signed(secret(dev_stack, BETA), body, wid))
    assert r.status_code == 204, r.text
    st = await desk.wait_until(
        lambda s: f"{BETA} {wid}" in s.applied_lender_webhooks, "Beta's event recorded"
    )
    assert st.stage is Stage.UNDERWRITING and decisions(st) == []
    r = await post(dev_stack, ACME, body, signed(secret(dev_stack, ACME), body, wid))
    assert r.status_code == 204, r.text
    st = await desk.wait_stage(Stage.DOWN_PAYMENT)
    assert decisions(st) == [wid]


async def test_unknown_deal_is_422_and_kept_as_rejected(dev_stack: Stack) -> None:
    body = decided("20990101-deadbeef", "APP-NONE")
    headers = signed(secret(dev_stack, ACME), body)
    assert_problem(
        await post(dev_stack, ACME, body, headers), 422, "unknown deal", "20990101-deadbeef"
    )
    [row] = await inbox(dev_stack, ACME, headers["webhook-id"])
    assert row.status == "rejected"
    assert row.deal_id == "20990101-deadbeef"
    assert row.error and "20990101-deadbeef" in row.error
    assert json.loads(row.body) == json.loads(body)

    # The lender retries it: still 422, still one row.
    again = signed(secret(dev_stack, ACME), body, headers["webhook-id"])
    assert_problem(await post(dev_stack, ACME, body, again), 422, "unknown deal")
    assert [r.status for r in await inbox(dev_stack, ACME, headers["webhook-id"])] == ["rejected"]


def _missing_decision_seq(deal_id: str, ref: str) -> bytes:
    data = json.loads(decided(deal_id, ref))["data"]
    del data["decision_seq"]
    return event("application.decided", data)


MALFORMED: dict[str, tuple[Callable[[str, str], bytes], tuple[str, ...]]] = {
    "not-json": (lambda d, r: b'{"type": "application.decided", "data": {', ("JSON",)),
    "not-an-object": (lambda d, r: b'["application.decided"]', ("JSON object",)),
    "unknown-type": (
        lambda d, r: event("application.exploded", {"deal_id": d}),
        ("unknown event type", "application.exploded", "application.decided"),
    ),
    "missing-field": (_missing_decision_seq, ("decision_seq", "required")),
    "no-data": (
        lambda d, r: json.dumps({"type": "disbursement.failed"}).encode(),
        ("disbursement.failed", "data must be a JSON object"),
    ),
    "bad-decision": (lambda d, r: decided(d, r, decision="maybe"), ("decision",)),
    # Issue 14 item 12: a reference that would steer a URL is no reference.
    "traversal-ref": (lambda d, r: decided(d, "../../admin"), ("application_ref", "../../admin")),
    "query-ref": (lambda d, r: decided(d, f"{r}?x=1#y"), ("application_ref", "not a reference")),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_body_is_422_and_kept_as_rejected(
    dev_stack: Stack, untouched: tuple[Desk, Submission], case: str
) -> None:
    desk, sub = untouched
    make, fragments = MALFORMED[case]
    body = make(desk.deal_id, sub.application_ref or "")
    headers = signed(secret(dev_stack, ACME), body)
    detail = assert_problem(await post(dev_stack, ACME, body, headers), 422, *fragments)
    [row] = await inbox(dev_stack, ACME, headers["webhook-id"])
    assert row.status == "rejected"
    assert row.error == detail
    assert row.body == body.decode()


async def test_reused_id_with_another_body_is_409_first_kept(
    dev_stack: Stack, untouched: tuple[Desk, Submission]
) -> None:
    desk, sub = untouched
    first = event("application.exploded", {"deal_id": desk.deal_id})
    wid = new_id()
    r = await post(dev_stack, ACME, first, signed(secret(dev_stack, ACME), first, wid))
    assert_problem(r, 422, "unknown event type")
    [row] = await inbox(dev_stack, ACME, wid)

    second = decided(desk.deal_id, sub.application_ref or "")
    r = await post(dev_stack, ACME, second, signed(secret(dev_stack, ACME), second, wid))
    assert_problem(r, 409, wid, "different body")
    [after] = await inbox(dev_stack, ACME, wid)
    assert (after.id, after.body, after.body_sha256, after.status) == (
        row.id,
        row.body,
        row.body_sha256,
        "rejected",
    )


async def test_concurrent_deliveries_of_one_id_apply_once(
    dev_stack: Stack, new_deal: NewDeal
) -> None:
    """A lender that fires its retry before the first answer arrives."""
    desk, sub = await new_deal()
    wid = new_id()
    body = decided(desk.deal_id, sub.application_ref or "")
    key = secret(dev_stack, ACME)
    replies = await asyncio.gather(
        *[post(dev_stack, ACME, body, signed(key, body, wid)) for _ in range(5)]
    )
    assert [r.status_code for r in replies] == [204] * 5, [r.text for r in replies]
    st = await desk.wait_stage(Stage.DOWN_PAYMENT)
    await desk.quiet_history()
    assert decisions(await desk.status()) == [wid], st
    assert [r.status for r in await inbox(dev_stack, ACME, wid)] == ["delivered"]


async def test_event_for_a_deal_that_has_ended_is_422_saying_so(
    dev_stack: Stack, task_queue: str
) -> None:
    desk = Desk(dev_stack, task_queue)
    await desk.start(script=SILENT)
    await desk.status()
    await desk.handle.terminate("test: the deal is over")
    body = event(
        "disbursement.failed",
        {"deal_id": desk.deal_id, "application_ref": "APP-1", "reason": "too late"},
    )
    headers = signed(secret(dev_stack, ACME), body)
    assert_problem(
        await post(dev_stack, ACME, body, headers), 422, desk.deal_id, "has ended", "TERMINATED"
    )
    [row] = await inbox(dev_stack, ACME, headers["webhook-id"])
    assert row.status == "rejected" and row.error and "has ended" in row.error


async def test_event_stored_but_not_delivered_before_a_crash_is_delivered_on_restart(
    dev_stack: Stack, new_deal: NewDeal
) -> None:
    """The API stored the webhook, then died before signalling the deal; the lender
    gave up. The redelivery pass finds the row and delivers it, once."""
    from dealflow.api.routes.webhooks import redeliver_pending

    desk, sub = await new_deal()
    assert sub.application_ref
    wid = new_id()
    body = decided(desk.deal_id, sub.application_ref)
    row, outcome = db.store_webhook(
        dev_stack.engine,
        lender_id=ACME,
        webhook_id=wid,
        body=body,
        received_at=datetime.now(UTC) - timedelta(minutes=1),
        event_type="application.decided",
        deal_id=desk.deal_id,
    )
    assert outcome == "new" and row.status == "received"
    services = dev_stack.api_services
    assert await redeliver_pending(services) >= 1
    st = await desk.wait_stage(Stage.DOWN_PAYMENT)
    assert decisions(st) == [wid]
    assert [x.status for x in await inbox(dev_stack, ACME, wid)] == ["delivered"]
    await redeliver_pending(services)
    assert await signals(desk) == 1


async def test_an_applied_event_whose_mark_was_lost_is_delivered_after_the_deal_closed(
    dev_stack: Stack, new_deal: NewDeal
) -> None:
    """The API signalled the deal, then died before marking the inbox row; the deal
    went on and closed. Redelivery and the lender's retry find the deal ended, and
    it had applied this very webhook: delivered (204), not refused."""
    from dealflow import client as deals
    from dealflow.api.routes.webhooks import parse_event, redeliver_pending

    desk, sub = await new_deal()
    assert sub.application_ref
    wid = new_id()
    body = decided(desk.deal_id, sub.application_ref)
    row, outcome = db.store_webhook(
        dev_stack.engine,
        lender_id=ACME,
        webhook_id=wid,
        body=body,
        # Dated ahead: out of reach of the redelivery loops of the suite's other
        # API stacks, which share this database but not this Temporal server.
        received_at=datetime.now(UTC) + timedelta(hours=1),
        event_type="application.decided",
        deal_id=desk.deal_id,
    )
    assert outcome == "new"
    event = parse_event(ACME, wid, json.loads(body))
    await deals.signal_lender_event(desk.client, desk.deal_id, event)
    await desk.wait_stage(Stage.DOWN_PAYMENT)
    await desk.do("cancel", reason="the customer bought elsewhere")
    final = await desk.result()
    assert f"{ACME} {wid}" in final.applied_lender_webhooks

    await redeliver_pending(dev_stack.api_services, older_than=-timedelta(hours=2))
    assert [x.status for x in await inbox(dev_stack, ACME, wid)] == ["delivered"]
    retry = signed(secret(dev_stack, ACME), body, wid)
    assert (await post(dev_stack, ACME, body, retry)).status_code == 204
    # An event the closed deal never saw is still refused, saying why.
    unseen = decided(desk.deal_id, sub.application_ref, seq=2)
    headers = signed(secret(dev_stack, ACME), unseen)
    assert_problem(await post(dev_stack, ACME, unseen, headers), 422, "has ended")


def test_the_memo_of_deal_lenders_keeps_the_newest_within_its_bound() -> None:
    memo = DealLenders(2)
    memo.put("d1", (ACME,))
    memo.put("d2", (BETA,))
    memo.put("d3", (ACME, BETA))
    assert (memo.get("d1"), memo.get("d2"), memo.get("d3")) == (None, (BETA,), (ACME, BETA))
