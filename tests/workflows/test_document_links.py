"""Document links in an application package (patch `fresh-document-links`): the
history keeps each document's storage key and sha256, never a link; the link is
signed by the sending activity at every attempt, to the underwriting deadline
plus a margin, capped by what the document store allows.

On the time-skipping server, with the lender simulator over HTTP; one scenario
runs on S3 (a moto server), whose links are capped at 7 days and so change from
one attempt to the next.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from dealflow import names
from dealflow.audit.histories import RunHistory
from dealflow.audit.payloads import decode_events, first_value, walk_payloads
from dealflow.audit.timeline import build_timeline
from dealflow.config import Settings
from dealflow.models import DealPolicy
from dealflow.storage.documents import S3Store, make_s3_client
from tests.support.api_stack import moto_server
from tests.support.back_office import Desk, desk_on
from tests.support.stack import TEST_CODEC_KEYS, Stack, deal_worker
from workflows.deal import DOCUMENT_LINK_MARGIN

SEVEN_DAYS = 7 * 24 * 3600


@pytest.fixture
async def desk(ts_stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    async with desk_on(ts_stack, database_url) as d:
        yield d


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
async def s3_desk(ts_stack: Stack, database_url: str, moto_url: str) -> AsyncIterator[Desk]:
    """A deal whose documents are uploaded to and linked from S3."""
    client = make_s3_client(
        moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, "dealflow", endpoint_url=moto_url, client=client)
    async with deal_worker(ts_stack.env.client, database_url, ts_stack.lenders, store) as tq:
        d = Desk(ts_stack, tq)
        d.store = store
        try:
            yield d
        finally:
            await d.close()


# --------------------------------------------------------------------------- reading links


def capped_now() -> datetime:
    """When a link signed now at the longest allowed would end."""
    return datetime.now(UTC) + timedelta(hours=Settings().file_link_max_hours)


def link_expiry(url: str) -> datetime:
    """When a link stops working: the local store's `expires`, or S3's signing
    time plus X-Amz-Expires."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    if "expires" in query:
        return datetime.fromtimestamp(int(query["expires"]), UTC)
    signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed + timedelta(seconds=int(query["X-Amz-Expires"]))


def s3_query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def add_fault(desk: Desk, **rule: Any) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{desk.sim_url}/_sim/faults",
            json={"endpoints": ["applications"], "deal_id": desk.deal_id, **rule},
        )
        assert r.status_code == 201, r.text


def scheduled_sends(events: list[HistoryEvent]) -> list[HistoryEvent]:
    return [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == names.SIGN_AND_SEND_APPLICATION
    ]


# --------------------------------------------------------------------------- tests


async def test_a_retried_submission_sends_fresh_links_the_lender_takes_as_the_same_application(
    s3_desk: Desk,
) -> None:
    """The lender records the first POST but its reply is lost (500), the next
    attempt fails too; the third carries links signed seconds later, which the
    lender takes as the same application, and which work."""
    desk = s3_desk
    await desk.start()
    await add_fault(desk, mode="500", phase="after", count=1)
    await add_fault(desk, mode="500", phase="before", count=1)
    await desk.through_documents()
    await desk.do("submit-application")
    sub = await desk.submitted()

    ledger = await desk.ledger()
    [application] = ledger["applications"]
    assert sub.application_ref == application["ref"]
    first, retry = ledger["application_requests"]
    assert (first["outcome"], retry["outcome"]) == ("created", "repeat")
    assert first["application_ref"] == retry["application_ref"] == application["ref"]

    def by_sha(request: dict[str, Any]) -> dict[str, str]:
        return {d["sha256"]: d["url"] for d in request["documents"]}

    before, after = by_sha(first), by_sha(retry)
    assert before.keys() == after.keys() and len(after) >= 8
    async with httpx.AsyncClient() as http:
        for sha, url in after.items():
            assert url != before[sha]
            assert s3_query(url)["X-Amz-Date"] > s3_query(before[sha])["X-Amz-Date"]
            # 17 days wanted, capped at the 7 a SigV4 link can last.
            assert s3_query(url)["X-Amz-Expires"] == str(SEVEN_DAYS)
            got = await http.get(url)
            assert got.status_code == 200, got.text
            assert hashlib.sha256(got.content).hexdigest() == sha


async def test_the_workflow_history_holds_no_document_link(desk: Desk) -> None:
    """Every payload of a submitted deal's history, decrypted: the storage keys
    are there, no link the lender was sent is."""
    await desk.start()
    await desk.through_underwriting()
    events = await desk.quiet_history()
    decoded, errors = decode_events(events, TEST_CODEC_KEYS)
    assert not errors
    payloads: list[bytes] = []
    for event in decoded:
        walk_payloads(event, lambda p: payloads.append(p.data))
    history = b"\n".join(payloads).decode("utf-8", "replace")

    ledger = await desk.ledger()
    sent = [d for r in ledger["application_requests"] for d in r["documents"]]
    assert len(sent) >= 8
    for document in sent:
        assert document["sha256"] in history
        assert document["url"] not in history
        assert parse_qs(urlsplit(document["url"]).query)["sig"][0] not in history
    keys = {d.storage_key for d in (await desk.status()).documents}
    assert keys and all(key in history for key in keys)
    assert "/api/files/" not in history and "sig=" not in history
    assert len(scheduled_sends(events)) == 1


async def test_link_lifetime_is_the_underwriting_deadline_plus_a_margin_within_the_cap(
    desk: Desk,
) -> None:
    """With a 9-day underwriting deadline the links last 9 days plus the margin
    from the send (the local store signs any lifetime): the workflow sets the
    end in the activity's input, and the links end then."""
    policy = DealPolicy(underwriting_timeout=timedelta(days=9))
    await desk.start(policy=policy)
    await desk.through_documents()
    await desk.do("submit-application")
    await desk.submitted()
    [send] = scheduled_sends(await desk.history_events())
    decoded, _ = decode_events([send], TEST_CODEC_KEYS)
    request = first_value(decoded[0].activity_task_scheduled_event_attributes.input)
    expire_at = datetime.fromisoformat(request["links_expire_at"])
    scheduled_at = send.event_time.ToDatetime(tzinfo=UTC)
    wanted = scheduled_at + policy.underwriting_timeout + DOCUMENT_LINK_MARGIN
    assert abs(expire_at - wanted) < timedelta(minutes=1)

    [sent] = (await desk.ledger())["application_requests"]
    assert sent["documents"]
    for document in sent["documents"]:
        # Until then, but never longer than a link may last (DEALFLOW_FILE_LINK_MAX_HOURS).
        assert abs(link_expiry(document["url"]) - min(expire_at, capped_now())) <= timedelta(
            seconds=5
        )


async def test_the_audit_timeline_shows_the_signed_send_as_the_application_submitted(
    desk: Desk,
) -> None:
    await desk.start()
    await desk.through_underwriting()
    events = await desk.quiet_history()
    timeline = build_timeline([RunHistory(f"deal-{desk.deal_id}", events)], TEST_CODEC_KEYS)
    assert not [e.action for e in timeline.entries if e.action.startswith("activity ")]
    [submitted] = [e for e in timeline.entries if e.action == "application submitted"]
    assert submitted.details.startswith("to acme-auto-finance (submission 1, 8 documents)")
