"""A hostile-input corpus against the live API: every request gets its documented
4xx, none a 5xx, and the deal they aim at is exactly as it was.

Tokens, roles, traversal, forged and expired links, uploads (polyglots,
empty, wrong types), filter injection, huge and deep JSON, wrong content
types, idempotency across subjects, the codec endpoints, CORS, and stale,
forged and cross-lender webhooks. The slow trickles and the webhook answer
time while they run are `tests/api/test_bounded.py`'s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from standardwebhooks.webhooks import Webhook
from temporalio.testing import WorkflowEnvironment

from dealflow.api.routes.deals import ACTION_ROUTES
from dealflow.models import Role
from dealflow.rules import ACTION_ROLES
from dealflow.samples import sample_pdf
from dealflow.storage.documents import sign_local_url
from tests.api.test_bounded import IDLE, slow_upload, trickle
from tests.support.api_stack import (
    FILE_LINK_SECRET,
    SECRET,
    ApiStack,
    HttpDesk,
    action_body,
    api_stack,
    deal_body,
)

NO_DEAL = "20990101-00000000"
ACME = "acme-auto-finance"
BETA = "beta-motor-credit"
# Not among the deal's lenders (deal_body routes to acme and beta).
CATHAY = "cathay-car-loans"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, database_url, tmp_session) as s:
        yield s


@dataclass(frozen=True)
class Hostile:
    what: str
    method: str
    path: str
    status: int | tuple[int, ...]
    role: Role | None = Role.ADMIN
    token: str | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    # An oversized body may also be answered by closing the connection on it.
    may_cut: bool = False


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "li", "roles": ["admin"], "iat": now, "exp": now + 600, **changes}


def _token(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def token_cases() -> list[Hostile]:
    now = int(time.time())
    bad = {
        "no header": None,
        "garbage": "not-a-jwt",
        "wrong secret": _token(_claims(), "another-secret-0123456789abcdef0123"),
        "expired": _token(_claims(exp=now - 60)),
        "alg none": jwt.encode(_claims(), None, algorithm="none"),  # type: ignore[arg-type]
        "HS512": _token(_claims(), alg="HS512"),
        "no exp": _token({"sub": "li", "roles": ["admin"], "iat": now}),
        "no iat": _token({"sub": "li", "roles": ["admin"], "exp": now + 600}),
        "13 hours": _token(_claims(exp=now + 13 * 3600)),
        "issued later": _token(_claims(iat=now + 3600, exp=now + 7200)),
        "roles a string": _token(_claims(roles="admin")),
        "sub with spaces": _token(_claims(sub="li wei")),
        "sub too long": _token(_claims(sub="x" * 200)),
    }
    cases = []
    for name, token in bad.items():
        for method, path in (("GET", "/api/deals"), ("GET", "/api/deals/{deal}")):
            cases.append(Hostile(f"token {name}: {method} {path}", method, path, 401, None, token))
    for method, path in (("GET", "/api/deals"), ("GET", "/api/deals/{deal}")):
        unknown = _token(_claims(roles=["root"]))
        cases.append(Hostile(f"token of an unknown role: {path}", method, path, 403, None, unknown))
    cases.append(
        Hostile(
            "basic scheme",
            "GET",
            "/api/deals",
            401,
            None,
            None,
            headers={"Authorization": "Basic bGk6cHc="},
        )
    )
    cases.append(
        Hostile(
            "empty bearer",
            "GET",
            "/api/deals",
            401,
            None,
            None,
            headers={"Authorization": "Bearer"},
        )
    )
    return cases


def role_cases() -> list[Hostile]:
    """Each action by a role it is not for (the auditor only reads)."""
    cases = []
    for action in ACTION_ROUTES:
        outsider = next(r for r in (Role.AUDITOR, Role.DELIVERY) if r not in ACTION_ROLES[action])
        cases.append(
            Hostile(
                f"{action.value} as {outsider.value}",
                "POST",
                f"/api/deals/{{deal}}/actions/{action.value}",
                403,
                outsider,
                json=action_body(action.value),
            )
        )
    cases += [
        Hostile(
            "start a deal as auditor", "POST", "/api/deals", 403, Role.AUDITOR, json=deal_body()
        ),
        Hostile("documents as finance", "GET", "/api/deals/{deal}/documents", 403, Role.FINANCE),
        Hostile(
            "upload as auditor",
            "POST",
            "/api/deals/{deal}/documents",
            403,
            Role.AUDITOR,
            files={"file": ("a.pdf", sample_pdf("a"), "application/pdf")},
            data={"kind": "proof_of_income", "party": "applicant"},
        ),
    ]
    return cases


def traversal_cases() -> list[Hostile]:
    ids = [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2f",
        "20261128-3f9a0c1e%00",
        "<script>alert(1)</script>",
        "' OR '1'='1",
        "20261128-3F9A0C1E",
        "x" * 300,
        "deal-20261128-3f9a0c1e",
    ]
    cases = [Hostile(f"deal id {i!r}", "GET", f"/api/deals/{i}", (404, 422)) for i in ids]
    cases += [
        Hostile(f"document id {d!r}", "GET", f"/api/deals/{{deal}}/documents/{d}", (404, 422))
        for d in ("..%2F..%2Fsecret", "d1%00", "x" * 300, "{deal}-d999")
    ]
    cases += [
        Hostile(
            f"action {a!r}",
            "POST",
            f"/api/deals/{{deal}}/actions/{a}",
            (404, 422),
            json={"reason": "x"},
        )
        for a in ("..%2Fcancel", "CANCEL", "cancel%00", "record-document", "x" * 200)
    ]
    return cases


def link_cases(key: str) -> list[Hostile]:
    soon = int(time.time()) + 60
    base = ""

    def link(k: str, expires: int, audience: str = ACME, secret: str = FILE_LINK_SECRET) -> str:
        return sign_local_url(base, secret, k, expires, audience)

    forged = link(key, soon).replace("sig=", "sig=0")
    cases: list[tuple[str, str, int | tuple[int, ...]]] = [
        ("forged signature", forged, 403),
        ("expired", link(key, int(time.time()) - 5), 403),
        ("another secret", link(key, soon, secret="x" * 40), 403),
        ("the JWT secret", link(key, soon, secret=SECRET), 403),
        ("another lender swapped in", link(key, soon).replace(ACME, BETA), 403),
        ("no lender", link(key, soon, audience=""), 403),
        ("a lender not served", link(key, soon, audience="nobody-finance"), 403),
        ("the archive", link("archive/manifest.jsonl", soon), 403),
        ("a week long", link(key, soon + 7 * 86400), 403),
        ("no signature", f"/api/files/{key}?expires={soon}", 422),
        ("expiry not a number", f"/api/files/{key}?expires=soon&sig=00", 422),
        ("traversal", link("documents/../../etc/passwd", soon), (403, 404, 422)),
        ("a missing file", link("documents/00/" + "0" * 64, soon), 404),
    ]
    return [Hostile(f"link: {what}", "GET", url, status, None) for what, url, status in cases]


def filter_cases() -> list[Hostile]:
    queries = [
        "stage=DROP%20TABLE",
        "stage=contract",
        "sort=price",
        "sort=updated;--",
        "limit=-1",
        "limit=0",
        "limit=100000",
        "limit=ten",
        "cursor=not-a-cursor",
        "cursor=" + "A" * 600,
        "overdue=maybe",
        "dealer=" + "d" * 300,
    ]
    return [Hostile(f"filter {q}", "GET", f"/api/deals?{q}", 422) for q in queries]


def _deal_with(**vehicle: Any) -> dict[str, Any]:
    body = deal_body()
    return {**body, "vehicle": {**body["vehicle"], **vehicle}}


def _applicant_with(**changes: Any) -> dict[str, Any]:
    body = deal_body()
    customer = body["customer"]
    return {**body, "customer": {**customer, "applicant": {**customer["applicant"], **changes}}}


def body_cases() -> list[Hostile]:
    deep = b"[" * 20000 + b"]" * 20000
    huge = json.dumps({**deal_body(), "padding": "x" * 200_000}).encode()
    cancel = "/api/deals/{deal}/actions/cancel"
    return [
        Hostile(
            "deep JSON deal",
            "POST",
            "/api/deals",
            (413, 422),
            content=deep,
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "deep JSON action",
            "POST",
            cancel,
            (413, 422),
            content=deep,
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "huge JSON deal",
            "POST",
            "/api/deals",
            413,
            content=huge,
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "huge JSON action",
            "POST",
            cancel,
            413,
            content=huge,
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "not JSON",
            "POST",
            "/api/deals",
            422,
            content=b"{nope",
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "not UTF-8",
            "POST",
            cancel,
            (400, 422),
            content=b"\xff\xfe\x00",
            headers={"content-type": "application/json"},
        ),
        Hostile("a JSON list", "POST", cancel, 422, json=[1, 2, 3]),
        Hostile("a JSON string", "POST", cancel, 422, json="cancel"),
        Hostile(
            "empty body",
            "POST",
            cancel,
            422,
            content=b"",
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "text/plain deal",
            "POST",
            "/api/deals",
            (415, 422),
            content=b"deal",
            headers={"content-type": "text/plain"},
        ),
        Hostile("form action", "POST", cancel, (415, 422), data={"reason": "x"}),
        Hostile("extra field", "POST", cancel, 422, json={"reason": "x", "actor": "admin"}),
        Hostile("reason too long", "POST", cancel, 422, json={"reason": "x" * 5000}),
        Hostile("negative price", "POST", "/api/deals", 422, json=_deal_with(price="-1.00")),
        Hostile("tiny price", "POST", "/api/deals", 422, json=_deal_with(price="5e-324")),
        Hostile(
            "price with 3 decimals",
            "POST",
            "/api/deals",
            422,
            json=_deal_with(price="150000.001"),
        ),
        Hostile("price NaN", "POST", "/api/deals", 422, json=_deal_with(price="NaN")),
        Hostile("price Infinity", "POST", "/api/deals", 422, json=_deal_with(price="Infinity")),
        Hostile(
            "down payment over price",
            "POST",
            "/api/deals",
            422,
            json=deal_body(down_payment="999999999.00"),
        ),
        Hostile(
            "bad ID number",
            "POST",
            "/api/deals",
            422,
            json=_applicant_with(id_number="110105198803120015"),
        ),
        Hostile(
            "new_energy as 0",
            "POST",
            "/api/deals",
            422,
            json=_deal_with(new_energy=0),
        ),
        Hostile(
            "phone as HTML",
            "POST",
            "/api/deals",
            422,
            json=_applicant_with(phone="<b>1</b>"),
        ),
        Hostile(
            "dealer id injection",
            "POST",
            "/api/deals",
            422,
            json=deal_body(dealer_id="d'; DROP TABLE deals;--"),
        ),
        Hostile("term of 0 months", "POST", "/api/deals", 422, json=deal_body(term_months=0)),
        Hostile("unknown product", "POST", "/api/deals", 422, json=deal_body(product="rocket")),
        Hostile(
            "idempotency key too long",
            "POST",
            "/api/deals",
            (400, 422),
            json=deal_body(),
            headers={"Idempotency-Key": "k" * 500},
        ),
        Hostile(
            "idempotency key with newline",
            "POST",
            "/api/deals",
            (400, 422),
            json=deal_body(),
            headers={"Idempotency-Key": "a\tb"},
        ),
        Hostile("wrong method", "DELETE", "/api/deals/{deal}", 405),
        Hostile("PUT an action", "PUT", cancel, 405, json={"reason": "x"}),
        Hostile("unknown route", "GET", "/api/admin", 404),
    ]


def upload_cases() -> list[Hostile]:
    path = "/api/deals/{deal}/documents"
    fields = {"kind": "proof_of_income", "party": "applicant"}

    def upload(
        what: str,
        name: str,
        data: bytes,
        status: int | tuple[int, ...],
        form: dict[str, str] | None = None,
    ) -> Hostile:
        return Hostile(
            f"upload {what}",
            "POST",
            path,
            status,
            Role.SALES,
            files={"file": (name, data, "application/pdf")},
            data=fields if form is None else form,
        )

    return [
        upload("PDF header then HTML", "x.pdf", b"%PDF-1.7\n<html><script>1</script></html>", 422),
        upload("HTML", "x.pdf", b"<html><body>hi</body></html>", 422),
        upload("empty file", "x.pdf", b"", 422),
        upload("an executable", "x.pdf", b"MZ\x90\x00" + b"\x00" * 200, 422),
        upload("a truncated PNG", "x.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 422),
        upload("a zip", "x.pdf", b"PK\x03\x04" + b"\x00" * 100, 422),
        upload("no kind", "x.pdf", sample_pdf("a"), 422, {"party": "applicant"}),
        upload(
            "an unknown kind",
            "x.pdf",
            sample_pdf("a"),
            422,
            {"kind": "passport", "party": "applicant"},
        ),
        upload(
            "an unknown party",
            "x.pdf",
            sample_pdf("a"),
            422,
            {"kind": "proof_of_income", "party": "cousin"},
        ),
        upload(
            "a bad ID number",
            "x.pdf",
            sample_pdf("a"),
            422,
            {"kind": "id_card", "party": "applicant", "id_number": "123"},
        ),
        Hostile("upload as JSON", "POST", path, 415, Role.SALES, json={"file": "x"}),
        Hostile(
            "upload to no deal",
            "POST",
            f"/api/deals/{NO_DEAL}/documents",
            404,
            Role.SALES,
            files={"file": ("a.pdf", sample_pdf("a"), "application/pdf")},
            data=fields,
        ),
    ]


def codec_cases() -> list[Hostile]:
    body: dict[str, list[Any]] = {"payloads": []}
    evil = {"Origin": "https://evil.example"}
    return [
        Hostile("codec encode as auditor", "POST", "/codec/encode", 403, Role.AUDITOR, json=body),
        Hostile("codec decode as sales", "POST", "/codec/decode", 403, Role.SALES, json=body),
        Hostile("codec decode without token", "POST", "/codec/decode", 401, None, json=body),
        Hostile(
            "codec decode as text",
            "POST",
            "/codec/decode",
            415,
            Role.AUDITOR,
            content=b"{}",
            headers={"content-type": "text/plain"},
        ),
        Hostile(
            "codec decode from elsewhere",
            "POST",
            "/codec/decode",
            403,
            Role.AUDITOR,
            json=body,
            headers=evil,
        ),
        Hostile(
            "codec login from elsewhere",
            "POST",
            "/codec/login",
            403,
            None,
            data={"token": "x"},
            headers=evil,
        ),
        Hostile(
            "codec decode not JSON",
            "POST",
            "/codec/decode",
            (400, 422),
            Role.AUDITOR,
            content=b"{nope",
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "codec decode of 5 MiB",
            "POST",
            "/codec/decode",
            413,
            Role.AUDITOR,
            content=b"{" + b" " * (5 << 20) + b"}",
            headers={"content-type": "application/json"},
            may_cut=True,
        ),
        Hostile("codec keys as sales", "GET", "/codec/keys", 403, Role.SALES),
    ]


def webhook_cases(stack: ApiStack, deal_id: str) -> list[Hostile]:
    def signed(
        body: bytes,
        lender: str = ACME,
        secret: str | None = None,
        at: datetime | None = None,
        webhook_id: str = "msg_hostile",
    ) -> dict[str, str]:
        at = at or datetime.now(UTC)
        hook = Webhook(secret or stack.lenders[lender].webhook_secret)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": hook.sign(webhook_id, at, body.decode()),
            "content-type": "application/json",
        }

    decided = json.dumps(
        {
            "type": "application.decided",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "deal_id": deal_id,
                "application_ref": "app-1",
                "decision_seq": 1,
                "decision": "approved",
                "approved_amount": "105000.00",
            },
        }
    ).encode()
    url = f"/webhooks/lenders/{ACME}"
    beta_secret = stack.lenders[BETA].webhook_secret
    stale = datetime.now(UTC) - timedelta(hours=1)
    return [
        Hostile(
            "webhook unsigned",
            "POST",
            url,
            401,
            None,
            content=decided,
            headers={"content-type": "application/json"},
        ),
        Hostile(
            "webhook another lender's secret",
            "POST",
            url,
            401,
            None,
            content=decided,
            headers=signed(decided, secret=beta_secret),
        ),
        Hostile(
            "webhook an hour old",
            "POST",
            url,
            401,
            None,
            content=decided,
            headers=signed(decided, at=stale),
        ),
        Hostile(
            "webhook tampered",
            "POST",
            url,
            401,
            None,
            content=decided + b" ",
            headers=signed(decided),
        ),
        Hostile(
            "webhook unknown lender",
            "POST",
            "/webhooks/lenders/nobody-finance",
            404,
            None,
            content=decided,
            headers=signed(decided),
        ),
        Hostile(
            "webhook cross-lender (not on the deal)",
            "POST",
            f"/webhooks/lenders/{CATHAY}",
            422,
            None,
            content=decided,
            headers=signed(decided, lender=CATHAY, webhook_id="msg_cross"),
        ),
        Hostile(
            "webhook bad reference",
            "POST",
            url,
            422,
            None,
            content=decided.replace(b"app-1", b"../x?y#z"),
            headers=signed(decided.replace(b"app-1", b"../x?y#z"), webhook_id="msg_ref"),
        ),
        Hostile(
            "webhook not JSON",
            "POST",
            url,
            (400, 422),
            None,
            content=b"{nope",
            headers=signed(b"{nope", webhook_id="msg_nojson"),
        ),
    ]


async def _send(http: httpx.AsyncClient, stack: ApiStack, case: Hostile, deal: str) -> int:
    headers = dict(case.headers)
    if case.token is not None:
        headers["Authorization"] = f"Bearer {case.token}"
    elif case.role is not None and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {stack.token(case.role)}"
    path = case.path.replace("{deal}", deal)
    response = await http.request(
        case.method,
        path,
        headers=headers,
        json=case.json,
        content=case.content,
        files=case.files,
        data=case.data,
    )
    return response.status_code


async def webhook_seconds(stack: ApiStack, http: httpx.AsyncClient, deal: str) -> float:
    """One signed webhook's round trip: verified, stored, refused (its lender is
    not on the deal) — the path every lender event takes before the deal."""
    body = json.dumps(
        {
            "type": "application.decided",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "deal_id": deal,
                "application_ref": "app-1",
                "decision_seq": 1,
                "decision": "declined",
            },
        }
    ).encode()
    webhook_id = f"msg_{time.monotonic_ns()}"
    at = datetime.now(UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(stack.lenders[CATHAY].webhook_secret).sign(
            webhook_id, at, body.decode()
        ),
        "content-type": "application/json",
    }
    started = time.monotonic()
    r = await http.post(f"/webhooks/lenders/{CATHAY}", content=body, headers=headers)
    assert r.status_code == 422, r.text
    return time.monotonic() - started


def p99(samples: list[float]) -> float:
    return sorted(samples)[max(0, round(len(samples) * 0.99) - 1)]


async def test_a_hostile_corpus_gets_its_4xx_and_changes_nothing(stack: ApiStack) -> None:
    desk = HttpDesk(stack)
    deal = await desk.start()
    await desk.ok("sign-sales-contract", Role.SALES)
    before = await desk.status()
    async with httpx.AsyncClient(base_url=stack.api_url, trust_env=False, timeout=30) as http:
        normal = [await webhook_seconds(stack, http, deal) for _ in range(20)]
    # Six uploads trickle a byte at a time through the whole corpus: as many as
    # the default executor's threads, which they once froze.
    slow = [await slow_upload(stack, deal, f"trickler-{n}") for n in range(6)]
    trickles = [asyncio.create_task(trickle(c, IDLE / 4, time.monotonic() + 90)) for c in slow]
    try:
        await asyncio.sleep(0.5)
        wrong, during = await _run_corpus(stack, deal)
    finally:
        for task in trickles:
            task.cancel()
        for client in slow:
            client.close()
    assert not wrong, "\n".join(wrong)
    assert p99(during) <= max(3 * p99(normal), 0.5), (
        f"webhooks took p99 {p99(during) * 1000:.0f} ms during the corpus, "
        f"{p99(normal) * 1000:.0f} ms before"
    )
    await _unchanged(desk, before)
    await _keys_are_per_subject(stack, deal)


async def _run_corpus(stack: ApiStack, deal: str) -> tuple[list[str], list[float]]:
    """Every case, with a webhook's round trip timed after each tenth."""
    key = "documents/00/" + "1" * 64
    cases = (
        token_cases()
        + role_cases()
        + traversal_cases()
        + link_cases(key)
        + filter_cases()
        + body_cases()
        + upload_cases()
        + codec_cases()
        + webhook_cases(stack, deal)
    )
    assert len({case.what for case in cases}) >= 150, len(cases)
    wrong: list[str] = []
    during: list[float] = []
    async with httpx.AsyncClient(base_url=stack.api_url, trust_env=False, timeout=30) as http:
        for number, case in enumerate(cases):
            if number % 10 == 0:
                during.append(await webhook_seconds(stack, http, deal))
            try:
                status = await _send(http, stack, case, deal)
            except httpx.TransportError as e:
                if not case.may_cut:
                    wrong.append(f"{case.what}: {type(e).__name__}")
                continue
            expected = case.status if isinstance(case.status, tuple) else (case.status,)
            if status not in expected or status >= 500:
                wrong.append(f"{case.what}: {status}, expected {expected}")
    return wrong, during


async def _unchanged(desk: HttpDesk, before: dict[str, Any]) -> None:
    after = await desk.status()
    assert (after["version"], after["stage"], after["documents"]) == (
        before["version"],
        before["stage"],
        before["documents"],
    )


async def _keys_are_per_subject(stack: ApiStack, deal: str) -> None:
    """Idempotency across subjects: another person's key is not theirs to replay."""
    key_header = {"Idempotency-Key": f"hostile-{deal}"}
    first = await stack.http(Role.SALES, stack.token(Role.SALES, "li")).post(
        "/api/deals", json=deal_body(), headers=key_header
    )
    other = await stack.http(Role.SALES, stack.token(Role.SALES, "wang")).post(
        "/api/deals", json=deal_body(), headers=key_header
    )
    assert first.status_code == other.status_code == 201
    assert first.json()["deal_id"] != other.json()["deal_id"]
    assert first.json()["deal_id"] not in other.text
