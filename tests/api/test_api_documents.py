"""Document uploads and downloads through the API, on both document stores:
the local directory and S3 (a real moto server over HTTP, in a subprocess).

Every document rule is exercised through HTTP, each refusal with its status and
message and nothing recorded; a 30 MiB file is streamed through (the limit is
raised to 40 MiB by a policy file, DEALFLOW_POLICY_FILE, read by the API), and
a file over the limit is refused with 413 whether or not it declared its length,
leaving nothing in the store.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.config import Settings
from dealflow.models import Role
from dealflow.samples import (
    PDF_HEADER,
    dealer_today,
    pdf_ending,
    sample_documents,
    sample_jpeg,
    sample_pdf,
    sample_png,
)
from dealflow.storage.documents import LocalDirectoryStore, S3Store, make_s3_client, sign_local_url
from tests.support.api_stack import (
    FILE_LINK_SECRET,
    S3_CREDS,
    SECRET,
    ApiStack,
    HttpDesk,
    MiB,
    api_stack,
    moto_server,
    multipart_fields,
    policy_file,
)
from tests.support.memory import peak_rss
from tests.support.servers import free_port, serve_async

LIMIT = 40 * MiB
JPEG = sample_jpeg("scan of a licence")
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def local(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    policy = policy_file(tmp_session, max_document_bytes=LIMIT)
    async with api_stack(dev_env.client, database_url, tmp_session, policy_file=policy) as s:
        yield s


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
async def s3(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path, moto: str
) -> AsyncIterator[ApiStack]:
    client = make_s3_client(moto, **S3_CREDS)
    bucket = f"docs-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, "dealflow", endpoint_url=moto, client=client)
    policy = policy_file(tmp_session, max_document_bytes=LIMIT)
    async with api_stack(
        dev_env.client, database_url, tmp_session, policy_file=policy, store=store
    ) as s:
        yield s


@pytest.fixture(params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> ApiStack:
    stack: ApiStack = request.getfixturevalue(request.param)
    return stack


def problem(r: httpx.Response, status: int, fragment: str = "") -> str:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith(PROBLEM)
    detail = str(r.json()["detail"])
    assert fragment in detail, f"{fragment!r} not in {detail!r}"
    return detail


def objects(stack: ApiStack) -> set[str]:
    """Everything in the store, including uploads in progress (local .tmp, S3 multipart)."""
    store = stack.store
    if isinstance(store, LocalDirectoryStore):
        return {
            str(p.relative_to(store.root))
            for p in store.root.rglob("*")
            if p.is_file() and ".meta" not in p.parts
        }
    assert isinstance(store, S3Store)
    keys = {o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])}
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return keys | {f"multipart:{u['Key']}" for u in uploads}


async def download(stack: ApiStack, deal_id: str, doc_id: str, role: Role = Role.CREDIT) -> bytes:
    r = await stack.http(role).get(f"/api/deals/{deal_id}/documents/{doc_id}")
    if isinstance(stack.store, S3Store):
        assert r.status_code == 307, r.text
        assert r.headers["cache-control"] == "private, no-store"
        url = r.headers["location"]
        assert "X-Amz-Expires=60" in url and "X-Amz-Signature=" in url
        async with httpx.AsyncClient(trust_env=False) as raw:
            got = await raw.get(url)
        assert got.status_code == 200
        return got.content
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"
    return r.content


def pdf(text: str, size: int = 0) -> bytes:
    return sample_pdf(text, size)


# --------------------------------------------------------------------------- round trip


async def test_every_checklist_document_round_trips(stack: ApiStack) -> None:
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    docs = sample_documents(desk.deal_id, desk.deal, desk.today)
    uploaded = []
    for doc in docs:
        r = await desk.upload(multipart_fields(doc), doc["data"], doc["file_name"])
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["sha256"] == hashlib.sha256(doc["data"]).hexdigest()
        assert body["size"] == len(doc["data"])
        assert body["content_type"] == (
            "image/jpeg" if doc["file_name"].endswith(".jpg") else "application/pdf"
        )
        assert body["doc_id"] and body["doc_id"].startswith(desk.deal_id)
        uploaded.append(body)
    assert uploaded[-1]["status"]["stage"] == "APPLICATION"
    # the same file again, as the same document: the same document, nothing new
    doc = docs[0]
    again = await desk.upload(multipart_fields(doc), doc["data"], doc["file_name"])
    assert again.status_code == 201 and again.json()["doc_id"] == uploaded[0]["doc_id"]

    r = await stack.http(Role.AUDITOR).get(f"/api/deals/{desk.deal_id}/documents")
    assert r.status_code == 200
    listed = r.json()["documents"]
    assert [d["doc_id"] for d in listed] == [u["doc_id"] for u in uploaded]
    assert listed[0]["uploaded_by"] == "sales-01/sales"
    for doc, up in zip(docs, uploaded, strict=True):
        assert await download(stack, desk.deal_id, up["doc_id"]) == doc["data"]

    # the lender's package lists documents by sha256 and presigned URL, never bytes
    await desk.ok("submit-application", Role.CREDIT)
    await desk.wait_stage("DOWN_PAYMENT")
    async with httpx.AsyncClient(trust_env=False, timeout=10) as raw:
        ledger = (
            await raw.get(f"{stack.sim_url}/_sim/ledger", params={"deal_id": desk.deal_id})
        ).json()
        package = ledger["applications"][0]["body"]
        if isinstance(package, str):
            package = json.loads(package)
        assert len(package["documents"]) == len(docs)
        by_sha = {hashlib.sha256(d["data"]).hexdigest(): d["data"] for d in docs}
        for entry in package["documents"]:
            assert set(entry) == {"kind", "party", "sha256", "content_type", "url"}
            got = await raw.get(entry["url"])
            assert got.status_code == 200, got.text
            assert got.content == by_sha[entry["sha256"]]


async def test_large_file_is_streamed_through(stack: ApiStack) -> None:
    """30 MiB under a 40 MiB limit, sent chunked without Content-Length: stored
    with the right sha256 while the API process holds only a few chunks."""
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    size = 30 * MiB
    digest = hashlib.sha256()
    for chunk in _pdf_chunks(size):
        digest.update(chunk)
    fields = {"kind": "proof_of_income", "party": "applicant"}
    with peak_rss() as peak_mem:
        started = time.monotonic()
        r = await desk.as_(Role.SALES).post(
            f"/api/deals/{desk.deal_id}/documents",
            content=_multipart(fields, "income.pdf", _pdf_chunks(size)),
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        elapsed = time.monotonic() - started
    peak = peak_mem.growth
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["size"] == size and body["sha256"] == digest.hexdigest()
    # Client and server share this process: the peak covers both sides. The S3
    # store buffers one 8 MiB multipart part by design.
    # RSS also counts allocator slack of every thread; still far below 30 MiB.
    budget = 24 * MiB if isinstance(stack.store, S3Store) else 12 * MiB
    assert peak < budget, f"peak {peak / MiB:.1f} MiB for a 30 MiB upload"
    print(
        f"30 MiB upload ({type(stack.store).__name__}): {elapsed:.2f} s, peak {peak / MiB:.1f} MiB"
    )
    got = await download(stack, desk.deal_id, body["doc_id"])
    assert len(got) == size and hashlib.sha256(got).hexdigest() == body["sha256"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_over_the_limit_is_413_and_stores_nothing(stack: ApiStack, declared: bool) -> None:
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    before_objects = objects(stack)
    before = await desk.status()
    size = LIMIT + MiB
    fields = {"kind": "proof_of_income", "party": "applicant"}
    if declared:
        content: Any = b"".join(_multipart_sync(fields, "big.pdf", _pdf_chunks(size)))
    else:
        content = _multipart(fields, "big.pdf", _pdf_chunks(size))
    r = await desk.as_(Role.SALES).post(
        f"/api/deals/{desk.deal_id}/documents",
        content=content,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    problem(r, 413, f"the limit of {LIMIT:,} bytes")
    assert objects(stack) == before_objects
    after = await desk.status()
    assert after["version"] == before["version"]
    r = await desk.as_(Role.SALES).get(f"/api/deals/{desk.deal_id}/documents")
    assert r.json()["documents"] == []


# --------------------------------------------------------------------------- rules


def _doc(kind: str, party: str = "applicant", **fields: str) -> dict[str, str]:
    return {"kind": kind, "party": party, **fields}


TODAY = dealer_today()
START = (TODAY.replace(day=1) - timedelta(days=200)).isoformat()
SPOUSE_ID = "110105199007050021"
APPLICANT_ID = "110105198803120014"

# (fields, bytes, status, fragment, stored-before-refusal)
RULES: dict[str, tuple[dict[str, str], bytes, int, str, bool]] = {
    "not a PDF, JPEG or PNG": (
        _doc("proof_of_income"),
        b"plain text, not a scan",
        422,
        "income.pdf is not a PDF, JPEG or PNG file (its bytes say application/octet-stream)",
        False,
    ),
    "a GIF": (
        _doc("proof_of_income"),
        b"GIF89a\x01\x00\x01\x00",
        422,
        "is not a PDF, JPEG or PNG",
        False,
    ),
    "empty": (_doc("proof_of_income"), b"", 422, "income.pdf is empty", False),
    "ID number fails its checksum": (
        _doc("id_card", id_number="110105198803120015"),
        JPEG,
        422,
        "applicant ID number is not valid",
        False,
    ),
    "ID number is not the applicant's": (
        _doc("id_card", id_number=SPOUSE_ID),
        JPEG,
        422,
        "the ID card's number does not match the applicant's ID number on the deal",
        True,
    ),
    "ID card without its number": (
        _doc("id_card"),
        JPEG,
        422,
        "an ID card needs the id_number printed on it",
        False,
    ),
    "statement without period": (
        _doc("bank_statement"),
        pdf("st"),
        422,
        "a bank statement needs period_start and period_end",
        False,
    ),
    "statement period reversed": (
        _doc("bank_statement", period_start=TODAY.isoformat(), period_end=START),
        pdf("st"),
        422,
        "bank statement period_start is after period_end",
        False,
    ),
    "statement in the future": (
        _doc(
            "bank_statement",
            period_start=START,
            period_end=(TODAY + timedelta(days=40)).isoformat(),
        ),
        pdf("future"),
        422,
        "is in the future",
        True,
    ),
    "statement date malformed": (
        _doc("bank_statement", period_start="2026-13-01", period_end=START),
        pdf("st"),
        422,
        "period_start",
        False,
    ),
    "spouse's licence": (
        _doc("drivers_licence", party="spouse"),
        JPEG,
        422,
        "a drivers_licence is the applicant's document, not the spouse's",
        True,
    ),
    "unknown kind": (_doc("passport"), pdf("p"), 422, "kind: Input should be", False),
    "unknown party": (
        _doc("id_card", party="cousin", id_number=APPLICANT_ID),
        JPEG,
        422,
        "party: Input should be 'applicant' or 'spouse'",
        False,
    ),
    "kind missing": ({"party": "applicant"}, pdf("k"), 422, "kind is required", False),
    "party missing": ({"kind": "proof_of_income"}, pdf("k"), 422, "party is required", False),
    "stipulation not open": (
        _doc("stipulation", stipulation_code="EMPLOYMENT_LETTER"),
        pdf("stip"),
        422,
        "stipulation_code 'EMPLOYMENT_LETTER' is not an open stipulation (open: none)",
        True,
    ),
    "stipulation without code": (
        _doc("stipulation"),
        pdf("stip"),
        422,
        "needs the stipulation_code",
        False,
    ),
    "a PDF header followed by HTML": (
        _doc("proof_of_income"),
        b"%PDF-1.7\n<html><script>alert(document.cookie)</script></html>\n",
        422,
        "income.pdf is not a readable PDF",
        False,
    ),
    "a truncated PNG": (
        _doc("proof_of_income"),
        sample_png("income")[:40],
        422,
        "income.pdf is not a readable PNG image",
        False,
    ),
    "unknown field": (
        {**_doc("proof_of_income"), "colour": "red"},
        pdf("c"),
        422,
        "unknown field 'colour'",
        False,
    ),
}


async def test_every_document_rule_through_http(local: ApiStack) -> None:
    stack = local
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    # One good document first, to be duplicated below.
    r = await desk.upload(_doc("drivers_licence"), JPEG, "licence.jpg")
    assert r.status_code == 201, r.text
    before = await desk.status()
    docs_before = (await desk.as_(Role.SALES).get(f"/api/deals/{desk.deal_id}/documents")).json()[
        "documents"
    ]
    for case, (fields, data, status, fragment, stored) in RULES.items():
        objs = objects(stack)
        if data.startswith((b"%PDF", b"\xff\xd8")):
            data += case.encode()  # bytes of its own, so no case is a duplicate of another
        r = await desk.upload(fields, data, "income.pdf")
        assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
        problem(r, status, fragment)
        if not stored:
            assert objects(stack) == objs, f"{case}: bytes were stored"
    # a duplicate of another kind: the licence's bytes offered as proof of income
    r = await desk.upload(_doc("proof_of_income"), JPEG, "income.jpg")
    problem(
        r,
        422,
        "is already on file as the applicant's drivers_licence; upload the proof_of_income itself",
    )
    # the multipart itself: refused before anything reaches the store
    objs = objects(stack)
    http = desk.as_(Role.SALES)
    url = f"/api/deals/{desk.deal_id}/documents"
    problem(await http.post(url, data=_doc("proof_of_income")), 415, "multipart/form-data")
    problem(await http.post(url, json=_doc("proof_of_income")), 415, "multipart/form-data")
    parts = [("kind", "proof_of_income"), ("party", "applicant")]
    no_file = b"".join(_multipart_sync(dict(parts), None, iter(())))
    problem(await http.post(url, content=no_file, headers=_mp()), 422, "the file part is missing")
    # a bad field after a streamed file: judged before the store keeps the file
    after_file = b"".join(
        _multipart_sync(
            _doc("proof_of_income"), "x.pdf", iter([pdf("late")]), after={"id_number": "1"}
        )
    )
    problem(
        await http.post(url, content=after_file, headers=_mp()),
        422,
        "id_number: Value should have at least 15 items",
    )
    file_twice = b"".join(
        _multipart_sync(
            _doc("proof_of_income"), "x.pdf", iter([pdf("twice")]), after={"file": "again"}
        )
    )
    problem(
        await http.post(url, content=file_twice, headers=_mp()),
        422,
        "the file part is given twice",
    )
    twice = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nid_card\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nid_card\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode()
    problem(await http.post(url, content=twice, headers=_mp()), 422, "field kind is given twice")
    problem(await http.post(url, content=b"--nope\r\ngarbage", headers=_mp()), 422)
    assert objects(stack) == objs

    after = await desk.status()
    assert after["version"] == before["version"], "a refused upload changed the deal"
    docs_after = (await http.get(f"/api/deals/{desk.deal_id}/documents")).json()["documents"]
    assert docs_after == docs_before

    # The type comes from the bytes, not from the name or the header.
    r = await http.post(
        url,
        data=_doc("proof_of_income"),
        files={"file": ("income.jpg", pdf("really a pdf"), "image/jpeg")},
    )
    assert r.status_code == 201 and r.json()["content_type"] == "application/pdf"


def _ordered_multipart(parts: list[tuple[str, str | bytes]], file_name: str) -> bytes:
    """A multipart body with its parts in the order given: the part named
    "file" carries bytes, every other a field."""
    body = b""
    for name, value in parts:
        disposition = f'form-data; name="{name}"'
        if isinstance(value, bytes):
            head = f'{disposition}; filename="{file_name}"\r\nContent-Type: application/pdf'
            body += f"--{BOUNDARY}\r\nContent-Disposition: {head}\r\n\r\n".encode() + value
        else:
            body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n{value}".encode()
        body += b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _without(record: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name not in names}


# Part orders the published schema allows besides fields-first, by document kind:
# the file first of all, between the fields, and before a field its kind needs.
ORDERS: dict[str, list[str]] = {
    "id_card": ["file", "id_number", "party", "kind"],
    "bank_statement": ["kind", "file", "party", "period_start", "period_end"],
    "drivers_licence": ["kind", "party", "file"],
    "proof_of_income": ["file", "kind", "party"],
}


async def test_the_file_part_may_come_first(stack: ApiStack) -> None:
    """A file sent before the fields it needs is kept until they arrive, then
    stored and recorded exactly as the same upload sent fields first; a 3 MiB
    file is kept on disk beyond the first MiB."""
    in_order, any_order = HttpDesk(stack), HttpDesk(stack)
    for desk in (in_order, any_order):
        await desk.start()
        await desk.ok("sign-sales-contract", Role.SALES)
    docs = {
        doc["kind"].value: doc
        for doc in sample_documents(in_order.deal_id, in_order.deal, in_order.today)
    }
    docs["proof_of_income"]["data"] = pdf("income, large", 3 * MiB)
    for kind, order in ORDERS.items():
        doc = docs[kind]
        fields = multipart_fields(doc)
        expected = await in_order.upload(fields, doc["data"], doc["file_name"])
        assert expected.status_code == 201, expected.text
        parts = [(name, doc["data"] if name == "file" else fields[name]) for name in order]
        assert {name for name, _ in parts} == {*fields, "file"}
        r = await any_order.as_(Role.SALES).post(
            f"/api/deals/{any_order.deal_id}/documents",
            content=_ordered_multipart(parts, doc["file_name"]),
            headers=_mp(),
        )
        assert r.status_code == 201, f"{kind}: {r.text}"
        got = r.json()
        assert _without(got, "doc_id", "deal_id", "status") == _without(
            expected.json(), "doc_id", "deal_id", "status"
        ), kind
        assert await download(stack, any_order.deal_id, got["doc_id"]) == doc["data"]
    # The deals' own records of them, field by field.
    recorded = []
    for desk in (in_order, any_order):
        status = await desk.status()
        recorded.append([_without(d, "doc_id", "uploaded_at") for d in status["documents"]])
        listed = (await desk.as_(Role.SALES).get(f"/api/deals/{desk.deal_id}/documents")).json()
        recorded.append([_without(d, "doc_id", "uploaded_at") for d in listed["documents"]])
    assert len(recorded[0]) == len(ORDERS)
    assert recorded[0] == recorded[2] and recorded[1] == recorded[3]


async def test_a_file_sent_first_meets_every_rule_as_fields_first(local: ApiStack) -> None:
    """Each refusal of the rules' table, with the file part sent first: the same
    status and the very same detail as fields first, and nothing stored."""
    stack = local
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    http = desk.as_(Role.SALES)
    url = f"/api/deals/{desk.deal_id}/documents"
    before = await desk.status()
    for case, (fields, data, status, fragment, stored) in RULES.items():
        if data.startswith((b"%PDF", b"\xff\xd8")):
            data += f"file first: {case}".encode()
        expected = await desk.upload(fields, data, "income.pdf")
        detail = problem(expected, status, fragment)
        objs = objects(stack)
        parts: list[tuple[str, str | bytes]] = [("file", data), *fields.items()]
        r = await http.post(url, content=_ordered_multipart(parts, "income.pdf"), headers=_mp())
        assert problem(r, status, fragment) == detail, case
        if not stored:
            assert objects(stack) == objs, f"{case}: bytes were stored"
    after = await desk.status()
    assert after["version"] == before["version"], "a refused upload changed the deal"
    assert after["documents"] == []


async def test_who_may_upload_and_read(local: ApiStack) -> None:
    stack = local
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    r = await desk.upload(_doc("proof_of_income"), pdf("income"), role=Role.CREDIT)
    assert r.status_code == 201, r.text
    doc_id = r.json()["doc_id"]
    url = f"/api/deals/{desk.deal_id}/documents"
    for role in (Role.REGISTRATION, Role.DELIVERY, Role.AUDITOR):
        r = await desk.upload(_doc("proof_of_residence"), pdf("residence"), role=role)
        problem(r, 403, f"'{role.value}' may not upload documents")
    # Finance and insurance upload their funding documents, not the customer's.
    for role in (Role.FINANCE, Role.INSURANCE):
        r = await desk.upload(_doc("proof_of_residence"), pdf("residence"), role=role)
        problem(r, 403, f"'{role.value}' may not record-document of proof_of_residence")
    for role in (Role.FINANCE, Role.INSURANCE, Role.REGISTRATION, Role.DELIVERY):
        problem(await stack.http(role).get(f"{url}/{doc_id}"), 403, "may not read documents")
        problem(await stack.http(role).get(url), 403, "may not read documents")
    for role in (Role.SALES, Role.CREDIT, Role.AUDITOR, Role.ADMIN):
        assert (await stack.http(role).get(f"{url}/{doc_id}")).content == pdf("income")
    problem(
        await stack.http().post(
            url, data=_doc("proof_of_income"), files={"file": ("a.pdf", pdf("a"))}
        ),
        401,
    )
    problem(await stack.http(Role.SALES).get(f"{url}/nope"), 404, "has no document 'nope'")
    problem(
        await stack.http(Role.SALES).get("/api/deals/20990101-00000000/documents/x"),
        404,
        "does not exist",
    )
    problem(await stack.http(Role.SALES).get("/api/deals/20990101-00000000/documents"), 404)
    r = await stack.http(Role.SALES).post(
        "/api/deals/20990101-00000000/documents",
        data=_doc("proof_of_income"),
        files={"file": ("a.pdf", pdf("a"))},
    )
    problem(r, 404, "deal 20990101-00000000 does not exist")
    # a closed deal takes no documents
    assert (await desk.do("cancel", Role.SALES, reason="customer withdrew")).status_code == 200
    r = await desk.upload(_doc("proof_of_residence"), pdf("late"))
    problem(r, 409, "the deal is CANCELLED; no further actions are possible")


async def test_presigned_local_links(local: ApiStack) -> None:
    stack = local
    desk = HttpDesk(stack)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    data = pdf("residence permit")
    r = await desk.upload(_doc("proof_of_residence"), data, "residence.pdf")
    key = f"documents/{r.json()['sha256'][:2]}/{r.json()['sha256']}"
    acme = "acme-auto-finance"
    soon = int(time.time()) + 60
    async with httpx.AsyncClient(trust_env=False) as raw:
        url = stack.store.presign_get(key, expires_in=60, audience=acme)
        got = await raw.get(url)
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"] == "application/pdf"
        problem(await raw.get(url.replace("sig=", "sig=0")), 403, "invalid or has expired")
        problem(await raw.get(url.replace(acme, "beta-motor-credit")), 403, "invalid")
        expired = sign_local_url(stack.api_url, FILE_LINK_SECRET, key, int(time.time()) - 1, acme)
        problem(await raw.get(expired), 403, "invalid or has expired")
        other = sign_local_url(stack.api_url, "another-secret", key, soon, acme)
        problem(await raw.get(other), 403)
        # The staff-token secret signs no link (a JWKS deployment leaves it at its default).
        with_jwt_secret = sign_local_url(stack.api_url, SECRET, key, soon, acme)
        problem(await raw.get(with_jwt_secret), 403)
        # Only customer documents, only for a lender served, only as long as allowed.
        archive = sign_local_url(
            stack.api_url, FILE_LINK_SECRET, "archive/manifest.jsonl", soon, acme
        )
        problem(await raw.get(archive), 403, "links reach customer documents only")
        stranger = sign_local_url(stack.api_url, FILE_LINK_SECRET, key, soon, "nobody-finance")
        problem(await raw.get(stranger), 403, "not made for a lender DealFlow serves")
        nobody = sign_local_url(stack.api_url, FILE_LINK_SECRET, key, soon)
        problem(await raw.get(nobody), 403, "not made for a lender")
        week = sign_local_url(stack.api_url, FILE_LINK_SECRET, key, soon + 7 * 86400, acme)
        problem(await raw.get(week), 403, "lasts longer than this deployment allows")
        missing = sign_local_url(
            stack.api_url, FILE_LINK_SECRET, "documents/00/" + "0" * 64, soon, acme
        )
        problem(await raw.get(missing), 404, "no such file")
        problem(await raw.get(f"{stack.api_url}/api/files/{key}"), 422, "expires")


async def test_store_down_is_503_and_records_nothing(local: ApiStack) -> None:
    desk = HttpDesk(local)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    before = await desk.status()
    dead = f"http://127.0.0.1:{free_port()}"
    store = S3Store("docs", "dealflow", endpoint_url=dead, client=make_s3_client(dead, **S3_CREDS))
    services = Services(
        settings=Settings(jwt_secret=SECRET, task_queue=local.task_queue),
        client=local.services.client,
        engine=local.engine,
        lenders=local.lenders,
        store=store,
    )
    async with (
        serve_async(create_app(services)) as url,
        httpx.AsyncClient(
            base_url=url, trust_env=False, timeout=30, headers=local.headers(Role.SALES)
        ) as http,
    ):
        r = await http.post(
            f"/api/deals/{desk.deal_id}/documents",
            data=_doc("proof_of_income"),
            files={"file": ("a.pdf", pdf("a"))},
        )
    problem(r, 503, "the document store is unavailable")
    assert r.headers["retry-after"] == "5"
    # The store's address and bucket are for the log, found by the reference.
    assert dead.split("//")[1] not in r.text and "docs" not in r.json()["detail"]
    assert r.json()["reference"].startswith("err-")
    assert (await desk.status())["version"] == before["version"]


# --------------------------------------------------------------------------- multipart helpers

BOUNDARY = "dealflow-test-boundary-7f3a"


def _mp() -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def _pdf_chunks(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """A PDF of `total` bytes produced chunk by chunk (never whole in memory):
    the header, filler no parser reads, then its one page and trailer."""
    ending = pdf_ending("streamed", total)
    filler = total - len(PDF_HEADER) - len(ending)
    seed = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(chunk // 32))
    yield PDF_HEADER
    sent = 0
    while sent < filler:
        n = min(chunk, filler - sent)
        sent += n
        yield seed[:n]
    yield ending


def _multipart_sync(
    fields: dict[str, str],
    file_name: str | None,
    chunks: Iterator[bytes],
    after: dict[str, str] | None = None,
) -> Iterator[bytes]:
    def field(name: str, value: str) -> bytes:
        return (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()

    for name, value in fields.items():
        yield field(name, value)
    if file_name is not None:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{file_name}"\r\nContent-Type: application/pdf\r\n\r\n'
        ).encode()
        yield from chunks
        yield b"\r\n"
    for name, value in (after or {}).items():
        yield field(name, value)
    yield f"--{BOUNDARY}--\r\n".encode()


async def _multipart(
    fields: dict[str, str], file_name: str, chunks: Iterator[bytes]
) -> AsyncIterator[bytes]:
    for piece in _multipart_sync(fields, file_name, chunks):
        yield piece


async def test_a_deals_status_shows_documents_to_who_may_read_them_and_never_a_storage_key(
    local: ApiStack,
) -> None:
    desk = HttpDesk(local)
    await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    doc = _doc("proof_of_residence")
    uploaded = await desk.upload(doc, pdf("residence permit"), "residence.pdf")
    assert uploaded.status_code == 201
    assert "documents/" not in uploaded.text
    for reader in (Role.SALES, Role.CREDIT, Role.AUDITOR, Role.ADMIN):
        r = await local.http(reader).get(f"/api/deals/{desk.deal_id}")
        assert r.status_code == 200
        [shown] = r.json()["documents"]
        assert (shown["file_name"], shown["storage_key"]) == ("residence.pdf", ""), reader
        assert "documents/" not in r.text
    for other in (Role.FINANCE, Role.INSURANCE, Role.REGISTRATION, Role.DELIVERY):
        r = await local.http(other).get(f"/api/deals/{desk.deal_id}")
        assert r.status_code == 200
        body = r.json()
        assert body["documents"] == [], other
        assert all(item["document"] is None for item in body["funding"])
        assert "residence.pdf" not in r.text
    # An action's answer is the status as its taker may see it.
    r = await desk.do("cancel", Role.SALES)
    assert r.status_code == 200, r.text
    assert [d["file_name"] for d in r.json()["status"]["documents"]] == ["residence.pdf"]
    assert "documents/" not in r.text
    schema = (await local.http().get("/openapi.json")).json()["components"]["schemas"]
    assert schema["StatusDocument"]["properties"]["storage_key"]["deprecated"] is True
