"""The sending activity signs each document link at the call, to the absolute
`links_expire_at` the workflow set (underwriting deadline plus margin), but never
longer than the document store allows: S3's SigV4 links last at most 7 days,
the local store's any time. Run in Temporal's ActivityEnvironment against the
lender simulator over HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from temporalio.testing import ActivityEnvironment

from activities.deal_activities import DealActivities
from dealflow.config import Settings
from dealflow.models import (
    DocumentKind,
    DocumentRecord,
    Party,
    SignAndSendApplicationInput,
    SubmitToLenderInput,
    UnsignedApplicationPackage,
)
from dealflow.samples import example_deal
from dealflow.storage.documents import DocumentStore, S3Store, content_key, make_s3_client
from tests.support.stack import Stack

ACME = "acme-auto-finance"
SEVEN_DAYS = 7 * 24 * 3600
SHA = "ab" * 32


def offline_s3() -> S3Store:
    """An S3 store nothing is fetched from: signing a link needs no server."""
    client = make_s3_client(
        "http://127.0.0.1:1",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return S3Store("docs", "dealflow", endpoint_url="http://127.0.0.1:1", client=client)


async def send(stack: Stack, store: DocumentStore, links_expire_at: datetime) -> str:
    """Run the activity once for a new deal; the document link the lender got."""
    deal_id = f"deal-links-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.put(
            f"{stack.sim_url}/_sim/scripts/{deal_id}",
            json={"lenders": {ACME: [{"decision": "silent"}]}},
        )
        assert r.status_code < 300, r.text
        document = DocumentRecord(
            doc_id="doc-1",
            kind=DocumentKind.ID_CARD,
            party=Party.APPLICANT,
            file_name="id.png",
            content_type="image/png",
            size=10,
            sha256=SHA,
            storage_key=content_key(SHA),
            uploaded_by="sales-01/sales",
            uploaded_at=datetime.now(UTC),
        )
        package = UnsignedApplicationPackage.for_submission(
            SubmitToLenderInput(
                deal_id=deal_id,
                lender_id=ACME,
                submission_no=1,
                deal=example_deal(),
                documents=[document],
            )
        )
        acts = DealActivities(stack.engine, stack.lenders, http, store)
        await ActivityEnvironment().run(
            acts.sign_and_send_application,
            SignAndSendApplicationInput(
                deal_id=deal_id,
                lender_id=ACME,
                submission_no=1,
                package=package,
                links_expire_at=links_expire_at,
            ),
        )
        ledger = (
            await http.get(f"{stack.sim_url}/_sim/ledger", params={"deal_id": deal_id})
        ).json()
    [request] = ledger["application_requests"]
    [sent] = request["documents"]
    assert sent["sha256"] == SHA
    return str(sent["url"])


def query(url: str) -> dict[str, Any]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_local_links_last_until_the_workflows_expiry_within_the_link_cap(
    ts_stack: Stack,
) -> None:
    """17 days (the default 15-day underwriting deadline plus 2) is past what a
    link may last (DEALFLOW_FILE_LINK_MAX_HOURS, 24): the link ends at the cap;
    an expiry below the cap wins."""
    before = datetime.now(UTC)
    url = await send(ts_stack, ts_stack.store, before + timedelta(days=17))
    assert "/api/files/" in url and query(url)["for"] == "acme-auto-finance"
    cap = before + timedelta(hours=Settings().file_link_max_hours)
    assert abs(int(query(url)["expires"]) - cap.timestamp()) <= 5
    expire_at = datetime.now(UTC) + timedelta(hours=3)
    url = await send(ts_stack, ts_stack.store, expire_at)
    assert abs(int(query(url)["expires"]) - expire_at.timestamp()) <= 2


async def test_links_are_capped_at_the_seven_days_an_s3_link_can_last(ts_stack: Stack) -> None:
    before = datetime.now(UTC)
    url = await send(ts_stack, offline_s3(), before + timedelta(days=17))
    assert query(url)["X-Amz-Expires"] == str(SEVEN_DAYS)
    # Below the cap the workflow's expiry wins on S3 too.
    url = await send(ts_stack, offline_s3(), before + timedelta(days=3))
    assert abs(int(query(url)["X-Amz-Expires"]) - 3 * 24 * 3600) <= 5


async def test_links_past_the_workflows_expiry_go_out_already_expired(ts_stack: Stack) -> None:
    """A send still retrying after its deadline and margin never signs a link
    that outlives them."""
    url = await send(ts_stack, ts_stack.store, datetime.now(UTC) - timedelta(hours=1))
    assert int(query(url)["expires"]) <= datetime.now(UTC).timestamp()
