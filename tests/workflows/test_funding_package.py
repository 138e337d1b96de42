"""The funding package (patch `funding-package`): the signed loan contract, the
insurance policy page and the vehicle invoice go to the lender as documents
with their hashes before it pays out. The loan contract waits for them; the
disbursement request carries the newest of each kind with a link signed at
every attempt (history holds keys and hashes, never a link); the lender
simulator fetches each and refuses one whose bytes are not the ones named.

On the time-skipping server, with the lender simulator and the API (which
serves the local store's links) over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from rich.console import Console
from temporalio.api.enums.v1 import EventType

import starter
from dealflow import names
from dealflow.audit.histories import RunHistory
from dealflow.audit.payloads import decode_events, first_value, walk_payloads
from dealflow.audit.timeline import build_timeline
from dealflow.config import Settings
from dealflow.models import Actor, DocumentKind, DocumentRecord, Role, Stage
from dealflow.rules import RuleError
from dealflow.samples import funding_document
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.back_office import Desk, desk_on
from tests.support.stack import TEST_CODEC_KEYS, Stack
from workflows.deal import DOCUMENT_LINK_MARGIN

KINDS = {"signed_loan_contract", "insurance_policy_page", "vehicle_invoice"}


@pytest.fixture
async def desk(ts_stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    async with desk_on(ts_stack, database_url) as d:
        yield d


async def to_loan_contract_signed(desk: Desk) -> None:
    """Every step of LOAN_CONTRACT taken, the funding documents not uploaded."""
    await desk.through_underwriting()
    await desk.do("confirm-down-payment")
    await desk.do("record-invoice")
    await desk.do("record-insurance", first_beneficiary=await desk.lender_legal_name())
    await desk.do("record-repayment-account")
    await desk.confirm_loan_terms()
    await desk.do("sign-loan-contract")


def funding_docs(documents: list[DocumentRecord]) -> dict[str, DocumentRecord]:
    """The newest document of each funding kind."""
    return {d.kind.value: d for d in documents if d.kind.value in KINDS}


def tamper(store: Any, doc: DocumentRecord) -> None:
    """Change the stored bytes behind a document, keeping their length."""
    assert isinstance(store, LocalDirectoryStore)
    path = store._path(doc.storage_key)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01
    path.write_bytes(bytes(data))


def capped_now() -> datetime:
    """When a link signed now at the longest allowed would end."""
    return datetime.now(UTC) + timedelta(hours=Settings().file_link_max_hours)


def link_expiry(url: str) -> datetime:
    expires = parse_qs(urlsplit(url).query)["expires"][0]
    return datetime.fromtimestamp(int(expires), UTC)


# --------------------------------------------------------------------------- tests


async def test_a_deal_without_the_signed_contract_document_stays_in_loan_contract(
    desk: Desk,
) -> None:
    """Contract signed, account recorded, invoice and policy page uploaded: the
    deal waits in LOAN_CONTRACT, its one pending action credit's upload of the
    signed loan contract; that upload moves it on."""
    await desk.start(script={"disbursements": [{"result": "silent"}]})
    await desk.through_underwriting()
    await desk.do("confirm-down-payment")
    await desk.do("record-invoice")
    await desk.upload_funding(DocumentKind.VEHICLE_INVOICE)
    await desk.do("record-insurance", first_beneficiary=await desk.lender_legal_name())
    await desk.upload_funding(DocumentKind.INSURANCE_POLICY_PAGE)
    await desk.do("record-repayment-account")
    await desk.confirm_loan_terms()
    await desk.do("sign-loan-contract")
    st = await desk.status()
    assert st.stage is Stage.LOAN_CONTRACT
    [pending] = st.pending
    assert (pending.action, pending.role) == ("record-document", Role.CREDIT)
    assert pending.what == (
        "upload the signed loan contract (signed_loan_contract) for the funding package"
    )
    assert [(i.kind.value, i.satisfied) for i in st.funding] == [
        ("vehicle_invoice", True),
        ("insurance_policy_page", True),
        ("signed_loan_contract", False),
    ]
    result = await desk.upload_funding(DocumentKind.SIGNED_LOAN_CONTRACT)
    assert result.status.stage is Stage.DISBURSEMENT


async def test_each_funding_document_is_taken_in_its_stages_from_its_own_team(
    desk: Desk,
) -> None:
    await desk.start()
    await desk.through_underwriting()
    await desk.do("confirm-down-payment")
    with pytest.raises(RuleError) as refused:
        await desk.upload_funding(DocumentKind.INSURANCE_POLICY_PAGE)
    assert (refused.value.kind, refused.value.message) == (
        "conflict",
        "insurance_policy_page evidences the insurance policy (record-insurance), recorded in "
        "INSURANCE; the deal is in INVOICING (accepted in INSURANCE, LOAN_CONTRACT, "
        "DISBURSEMENT)",
    )
    with pytest.raises(RuleError) as refused:
        await desk.upload(
            funding_document(desk.deal_id, DocumentKind.VEHICLE_INVOICE),
            actor=Actor(staff_id="sales-01", role=Role.SALES),
        )
    assert (refused.value.kind, refused.value.message) == (
        "forbidden",
        "role 'sales' may not record-document of vehicle_invoice; allowed: admin, finance",
    )
    # The invoice may come with record-invoice, in the same stage.
    await desk.upload_funding(DocumentKind.VEHICLE_INVOICE)
    await desk.do("record-invoice")
    with pytest.raises(RuleError) as refused:
        await desk.upload_documents()
    assert refused.value.message.startswith(
        "record-document of id_card is not allowed in stage INSURANCE (only in CONTRACT, "
    )
    st = await desk.status()
    assert [d.kind.value for d in st.documents].count("vehicle_invoice") == 1


async def test_the_disbursement_request_carries_the_documents_with_fresh_links_not_in_history(
    desk: Desk,
) -> None:
    """The lender gets each funding document's kind, sha256, size, content type
    and a link that serves exactly those bytes and lasts the stage's escalation
    plus the margin; the history holds the keys and hashes, no link. While the
    request is open at the lender no replacement is taken."""
    await desk.start(script={"disbursements": [{"result": "silent"}]})
    await to_loan_contract_signed(desk)
    await desk.upload_funding_package()
    st = await desk.wait_until(
        lambda s: bool(s.disbursements) and s.disbursements[-1].status == "requested",
        "the disbursement request",
    )
    docs = funding_docs(st.documents)
    assert st.disbursements[-1].funding_doc_ids == [
        docs[k].doc_id for k in ("vehicle_invoice", "insurance_policy_page", "signed_loan_contract")
    ]
    [request] = (await desk.ledger())["disbursement_requests"]
    sent = {d["kind"]: d for d in request["body"]["funding_package"]}
    assert sent.keys() == KINDS
    for kind, d in sent.items():
        assert (d["sha256"], d["size"], d["content_type"]) == (
            docs[kind].sha256,
            docs[kind].size,
            "application/pdf",
        )

    events = await desk.quiet_history()
    [scheduled] = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == names.REQUEST_DISBURSEMENT
    ]
    decoded, errors = decode_events(events, TEST_CODEC_KEYS)
    assert not errors
    payloads: list[bytes] = []
    for event in decoded:
        walk_payloads(event, lambda p: payloads.append(p.data))
    history = b"\n".join(payloads).decode("utf-8", "replace")
    for kind, d in sent.items():
        assert docs[kind].storage_key in history and d["sha256"] in history
        assert d["url"] not in history
    assert "/api/files/" not in history and "sig=" not in history

    [attrs] = decode_events([scheduled], TEST_CODEC_KEYS)[0]
    inp = first_value(attrs.activity_task_scheduled_event_attributes.input)
    expire_at = datetime.fromisoformat(inp["links_expire_at"])
    wanted = scheduled.event_time.ToDatetime(tzinfo=UTC) + timedelta(days=3) + DOCUMENT_LINK_MARGIN
    assert abs(expire_at - wanted) < timedelta(minutes=1)
    for d in sent.values():
        # Until then, but never longer than a link may last (DEALFLOW_FILE_LINK_MAX_HOURS).
        assert abs(link_expiry(d["url"]) - min(expire_at, capped_now())) <= timedelta(seconds=5)

    with pytest.raises(RuleError) as refused:
        await desk.upload_funding(DocumentKind.VEHICLE_INVOICE, version=2)
    assert refused.value.message.startswith(
        "a disbursement request is open at the lender; a replacement vehicle_invoice is "
        "accepted once it has stalled"
    )
    # The same file again (a retry whose answer was lost) is taken and changes nothing.
    again = await desk.upload_funding(DocumentKind.SIGNED_LOAN_CONTRACT)
    assert again.status.stage is Stage.DISBURSEMENT
    assert again.status.documents == (await desk.status()).documents
    assert len(funding_docs(again.status.documents)) == 3 and len(again.status.documents) == 11


async def test_a_tampered_document_is_refused_and_its_replacement_goes_with_the_retry(
    desk: Desk,
) -> None:
    """The invoice's stored bytes change after upload: the lender finds another
    sha256 behind the link and refuses the request (422 naming the invoice);
    finance uploads a replacement while the request is stalled and retries,
    and the new request carries the replacement, which the lender pays on."""
    await desk.start()
    await to_loan_contract_signed(desk)
    await desk.upload_funding(DocumentKind.VEHICLE_INVOICE)
    await desk.upload_funding(DocumentKind.INSURANCE_POLICY_PAGE)
    tamper(desk.store, funding_docs((await desk.status()).documents)["vehicle_invoice"])
    await desk.upload_funding(DocumentKind.SIGNED_LOAN_CONTRACT)
    st = await desk.wait_until(
        lambda s: bool(s.disbursements) and s.disbursements[-1].status == "error",
        "the lender's refusal",
    )
    reason = st.disbursements[-1].failure_reason or ""
    assert "lender answered 422" in reason
    assert "funding document vehicle_invoice: the file behind its link" in reason
    assert [p.action for p in st.pending][0] == "retry-disbursement"
    assert not (await desk.ledger())["disbursement_requests"]

    old = funding_docs(st.documents)["vehicle_invoice"]
    await desk.upload_funding(DocumentKind.VEHICLE_INVOICE, version=2)
    new = funding_docs((await desk.status()).documents)["vehicle_invoice"]
    assert new.doc_id != old.doc_id
    await desk.do("retry-disbursement", reason="invoice scanned again")
    st = await desk.wait_stage(Stage.REGISTRATION)
    assert [d.status for d in st.disbursements] == ["error", "completed"]
    assert new.doc_id in st.disbursements[-1].funding_doc_ids
    assert old.doc_id not in st.disbursements[-1].funding_doc_ids
    [request] = (await desk.ledger())["disbursement_requests"]
    sent = {d["kind"]: d["sha256"] for d in request["body"]["funding_package"]}
    assert sent["vehicle_invoice"] == new.sha256 != old.sha256


async def test_the_audit_timeline_shows_the_disbursement_request_with_its_documents(
    desk: Desk,
) -> None:
    await desk.start()
    await desk.through_disbursement()
    events = await desk.quiet_history()
    timeline = build_timeline([RunHistory(f"deal-{desk.deal_id}", events)], TEST_CODEC_KEYS)
    [requested] = [e for e in timeline.entries if e.action == "disbursement requested"]
    docs = funding_docs((await desk.status()).documents)
    for kind in ("vehicle_invoice", "insurance_policy_page", "signed_loan_contract"):
        assert f"{kind} {docs[kind].sha256[:12]}" in requested.details


async def test_starter_status_prints_the_funding_package_and_what_each_request_carried(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    await desk.start()
    await desk.through_disbursement()
    st = await desk.status()
    console = Console(record=True, width=200)
    monkeypatch.setattr(starter, "out", console)
    starter.show_status(st)
    shown = console.export_text()
    assert "Funding package" in shown
    docs = funding_docs(st.documents)
    for kind, role in (
        ("vehicle_invoice", "finance"),
        ("insurance_policy_page", "insurance"),
        ("signed_loan_contract", "credit"),
    ):
        [row] = [line for line in shown.splitlines() if f" {kind} " in f" {line} "]
        assert role in row and docs[kind].doc_id in row and docs[kind].sha256[:12] in row
    ids = ", ".join(st.disbursements[-1].funding_doc_ids)
    assert f"disbursement request 1 (completed) carried {ids}" in shown
