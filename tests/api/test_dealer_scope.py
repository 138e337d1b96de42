"""Dealer scoping (issue 14, item 19): a token's dealers claim
(DEALFLOW_DEALERS_CLAIM) limits what a person sees and touches to those
dealers' deals; without it, every dealer (the group's back office).

Over real HTTP against the real app, a Temporal dev server and a worker: a
clerk of dealer A lists only A's deals, is answered 404 for B's deal and
everything on it (actions, documents) in the words an unknown deal gets,
counts only A's deals in the reports and cannot start a deal for B; the desk
signed in with the same token shows the same. Each dealer id is new to this
run, so the deals of other modules in the shared database count for neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from temporalio.testing import WorkflowEnvironment

import starter
from dealflow.api.security import Authenticator
from dealflow.config import Settings, get_settings
from dealflow.desk.oidc import OidcProvider, SignInRefused
from dealflow.models import Role
from dealflow.rules import check_start_dealer, in_dealer_scope
from dealflow.rules.errors import RuleError
from dealflow.samples import example_deal, sample_documents
from tests.desk.test_new_deal import form_fields, open_form
from tests.support.api_stack import (
    SECRET,
    ApiStack,
    action_body,
    api_stack,
    deal_body,
    dealer_today,
    multipart_fields,
)
from tests.support.desk import browser, form_token

PROBLEM = "application/problem+json"
NO_DEAL = "20990101-00000000"


@dataclass
class Dealers:
    """Two showrooms of one group: A with two deals, B with one (and a document)."""

    stack: ApiStack
    a: str
    b: str
    a_deals: list[str]
    b_deal: str
    b_doc: str

    def clerk(self, role: Role = Role.SALES, *dealers: str) -> httpx.AsyncClient:
        """A client whose token is scoped to `dealers` (A's when none are named)."""
        scope = list(dealers) or [self.a]
        return self.stack.http(token=self.stack.token(role, f"{role.value}.a", dealers=scope))


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, database_url, tmp_session) as s:
        yield s


async def _start(http: httpx.AsyncClient, dealer_id: str) -> str:
    r = await http.post("/api/deals", json=deal_body(dealer_id=dealer_id))
    assert r.status_code == 201, r.text
    return str(r.json()["deal_id"])


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def dealers(stack: ApiStack) -> Dealers:
    run = uuid.uuid4().hex[:8]
    a, b = f"dealer-a-{run}", f"dealer-b-{run}"
    sales = stack.http(Role.SALES)  # unscoped: the group's back office
    a_deals = [await _start(sales, a), await _start(sales, a)]
    b_deal = await _start(sales, b)
    doc = sample_documents(b_deal, example_deal(), dealer_today())[0]
    r = await sales.post(
        f"/api/deals/{b_deal}/documents",
        data=multipart_fields(doc),
        files={"file": (doc["file_name"], doc["data"], "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    admin = stack.http(Role.ADMIN)

    async def projected() -> bool:
        listed = set()
        for dealer in (a, b):
            page = (await admin.get("/api/deals", params={"dealer": dealer})).json()
            listed |= {deal["deal_id"] for deal in page["deals"]}
        return listed == {*a_deals, b_deal}

    await _until(projected, "the read model to list the three deals")
    return Dealers(stack, a, b, a_deals, b_deal, str(r.json()["doc_id"]))


def _problem(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith(PROBLEM)
    detail = str(r.json()["detail"])
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"
    return detail


# --------------------------------------------------------------------------- the rule


def test_the_scope_rule_is_pure() -> None:
    assert in_dealer_scope("D1", None)
    assert in_dealer_scope("D1", frozenset({"D1", "D2"}))
    assert not in_dealer_scope("D3", frozenset({"D1", "D2"}))
    assert not in_dealer_scope("D1", frozenset())
    check_start_dealer("D1", frozenset({"D1"}))
    with pytest.raises(RuleError) as refused:
        check_start_dealer("D9", frozenset({"D1"}))
    assert refused.value.kind == "forbidden" and "D9" in refused.value.message


def test_the_claim_is_read_from_the_token() -> None:
    auth = Authenticator(SECRET)
    now = int(time.time())
    claims = {"sub": "li", "roles": ["sales"], "iat": now, "exp": now + 60}
    assert auth.decode(jwt.encode(claims, SECRET)).dealers is None
    scoped = auth.decode(jwt.encode({**claims, "dealers": ["D1", "D2"]}, SECRET))
    assert scoped.dealers == frozenset({"D1", "D2"})
    assert auth.decode(jwt.encode({**claims, "dealers": []}, SECRET)).dealers == frozenset()


@pytest.mark.parametrize("bad", ["not a list!", [1, 2], ["D1", "no spaces please"], {"D1": 1}])
async def test_a_malformed_dealers_claim_is_401(stack: ApiStack, bad: object) -> None:
    now = int(time.time())
    claims = {"sub": "li", "roles": ["sales"], "iat": now, "exp": now + 60, "dealers": bad}
    r = await stack.http(token=jwt.encode(claims, SECRET)).get("/api/deals")
    _problem(r, 401, "dealers claim must be a list of dealer ids")


def test_the_desk_oidc_sign_in_reads_the_dealers_claim() -> None:
    settings = Settings(
        oidc_issuer="https://idp.example", oidc_client_id="desk", dealers_claim="org.dealers"
    )
    provider = OidcProvider(settings)
    claims: dict[str, Any] = {"sub": "li", "roles": ["sales"]}
    assert provider.principal(claims).dealers is None
    scoped = provider.principal({**claims, "org": {"dealers": ["D1", "D2"]}})
    assert scoped.dealers == frozenset({"D1", "D2"})
    with pytest.raises(SignInRefused, match="dealers claim must be a list of dealer ids"):
        provider.principal({**claims, "org": {"dealers": [7]}})


def test_starter_mints_scoped_tokens() -> None:
    out = io.StringIO()
    argv = ["--json", "token", "--sub", "li", "--role", "sales", "--dealer", "D1", "--dealer", "D2"]
    with contextlib.redirect_stdout(out):
        assert starter.main(argv) == 0
    minted = json.loads(out.getvalue())
    principal = Authenticator(get_settings().jwt_secret).decode(minted["token"])
    assert principal.dealers == frozenset({"D1", "D2"}) and minted["dealers"] == ["D1", "D2"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert starter.main(["token", "--sub", "li", "--role", "sales"]) == 0
    assert Authenticator(get_settings().jwt_secret).decode(out.getvalue().strip()).dealers is None


# --------------------------------------------------------------------------- the API


async def test_a_scoped_clerk_lists_only_their_dealers_deals(dealers: Dealers) -> None:
    clerk = dealers.clerk()
    listed: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await clerk.get("/api/deals", params=params)).json()
        assert {deal["dealer_id"] for deal in page["deals"]} <= {dealers.a}
        listed |= {deal["deal_id"] for deal in page["deals"]}
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert listed == set(dealers.a_deals)
    # Asking for B's deals by name finds none.
    page = (await clerk.get("/api/deals", params={"dealer": dealers.b})).json()
    assert page["deals"] == []


async def test_an_unscoped_token_sees_every_dealer(dealers: Dealers) -> None:
    for role in (Role.SALES, Role.AUDITOR, Role.ADMIN):
        http = dealers.stack.http(role)
        for dealer, deals in ((dealers.a, dealers.a_deals), (dealers.b, [dealers.b_deal])):
            page = (await http.get("/api/deals", params={"dealer": dealer})).json()
            assert {deal["deal_id"] for deal in page["deals"]} == set(deals)
        assert (await http.get(f"/api/deals/{dealers.b_deal}")).status_code == 200


async def test_another_dealers_deal_is_404_like_an_unknown_one(dealers: Dealers) -> None:
    for role in (Role.SALES, Role.CREDIT, Role.AUDITOR, Role.ADMIN):
        clerk = dealers.clerk(role)
        assert (await clerk.get(f"/api/deals/{dealers.a_deals[0]}")).status_code == 200
        detail = _problem(await clerk.get(f"/api/deals/{dealers.b_deal}"), 404)
        unknown = _problem(await clerk.get(f"/api/deals/{NO_DEAL}"), 404)
        assert detail == unknown.replace(NO_DEAL, dealers.b_deal)


async def test_actions_on_another_dealers_deal_are_404_and_change_nothing(
    dealers: Dealers,
) -> None:
    admin = dealers.stack.http(Role.ADMIN)
    before = (await admin.get(f"/api/deals/{dealers.b_deal}")).json()
    for action, role in (
        ("cancel", Role.SALES),
        ("sign-sales-contract", Role.SALES),
        ("cancel", Role.ADMIN),
    ):
        r = await dealers.clerk(role).post(
            f"/api/deals/{dealers.b_deal}/actions/{action}", json=action_body(action)
        )
        _problem(r, 404, f"deal {dealers.b_deal} does not exist")
    after = (await admin.get(f"/api/deals/{dealers.b_deal}")).json()
    assert after["version"] == before["version"] and after["stage"] == before["stage"]


async def test_documents_of_another_dealers_deal_are_404(dealers: Dealers) -> None:
    base = f"/api/deals/{dealers.b_deal}/documents"
    unscoped = dealers.stack.http(Role.SALES)
    assert (await unscoped.get(f"{base}/{dealers.b_doc}")).status_code == 200
    assert (await unscoped.get(base)).status_code == 200
    clerk = dealers.clerk(Role.SALES)
    _problem(await clerk.get(f"{base}/{dealers.b_doc}"), 404, "does not exist")
    _problem(await clerk.get(base), 404, "does not exist")
    doc = sample_documents(dealers.b_deal, example_deal(), dealer_today())[1]
    r = await clerk.post(
        base,
        data=multipart_fields(doc),
        files={"file": (doc["file_name"], doc["data"], "application/octet-stream")},
    )
    _problem(r, 404, "does not exist")
    status = (await unscoped.get(f"/api/deals/{dealers.b_deal}")).json()
    assert [d["doc_id"] for d in status["documents"]] == [dealers.b_doc]


async def test_a_scoped_clerk_starts_deals_for_their_dealers_only(dealers: Dealers) -> None:
    clerk = dealers.clerk(Role.SALES)
    r = await clerk.post("/api/deals", json=deal_body(dealer_id=dealers.b))
    _problem(r, 403, "only for your dealers", dealers.b)
    r = await clerk.post("/api/deals", json=deal_body(dealer_id=dealers.a))
    assert r.status_code == 201, r.text
    dealers.a_deals.append(r.json()["deal_id"])


async def _entered(http: httpx.AsyncClient) -> int:
    r = await http.get("/api/reports/funnel")
    assert r.status_code == 200, r.text
    return sum(int(row["entered"]) for row in r.json()["stages"])


async def _stage_changes(dealers: Dealers, deal_ids: list[str]) -> int:
    admin = dealers.stack.http(Role.ADMIN)
    statuses = [(await admin.get(f"/api/deals/{deal_id}")).json() for deal_id in deal_ids]
    return sum(len(status["transitions"]) for status in statuses)


async def test_reports_count_only_the_scoped_dealers_deals(dealers: Dealers) -> None:
    a_clerk, b_clerk = dealers.clerk(Role.SALES), dealers.clerk(Role.SALES, dealers.b)
    both = dealers.clerk(Role.SALES, dealers.a, dealers.b)
    expected: dict[str, int] = {}

    async def counted() -> bool:
        expected["a"] = await _stage_changes(dealers, dealers.a_deals)
        expected["b"] = await _stage_changes(dealers, [dealers.b_deal])
        return (await _entered(a_clerk), await _entered(b_clerk)) == (
            expected["a"],
            expected["b"],
        )

    await _until(counted, "the funnel of each dealer to count its own deals")
    assert expected["a"] > 0 and expected["b"] > 0
    assert await _entered(both) == expected["a"] + expected["b"]
    assert await _entered(dealers.stack.http(Role.SALES)) >= expected["a"] + expected["b"]
    for report in ("time-in-stage", "overdue", "lenders", "close-reasons"):
        assert (await a_clerk.get(f"/api/reports/{report}")).status_code == 200


async def test_a_scoped_token_may_not_use_the_codec(dealers: Dealers) -> None:
    body: dict[str, list[Any]] = {"payloads": []}
    for path in ("/codec/decode", "/codec/keys"):
        scoped = dealers.clerk(Role.AUDITOR)
        r = await (scoped.post(path, json=body) if path.endswith("decode") else scoped.get(path))
        _problem(r, 403, "scoped to dealers may not use the codec")
    assert (await dealers.stack.http(Role.AUDITOR).post("/codec/decode", json=body)).is_success


# --------------------------------------------------------------------------- the desk


async def _desk_signed_in(dealers: Dealers, token: str) -> httpx.AsyncClient:
    client = browser(dealers.stack)
    page = await client.get("/desk/login")
    r = await client.post(
        "/desk/login",
        data={
            "method": "token",
            "token": token,
            "form_token": form_token(page.text),
            "next": "/desk/",
        },
    )
    assert r.status_code == 303, r.text
    return client


async def test_the_desk_shows_a_scoped_session_only_its_dealers(dealers: Dealers) -> None:
    stack = dealers.stack
    desk = await _desk_signed_in(dealers, stack.token(Role.SALES, "sales.a", dealers=[dealers.a]))
    table = await desk.get("/desk/deals", params={"sort": "created"})
    assert table.status_code == 200
    assert all(deal_id in table.text for deal_id in dealers.a_deals)
    assert dealers.b_deal not in table.text
    search = await desk.get("/desk/deals", params={"q": dealers.b_deal})
    assert f"/desk/deals/{dealers.a_deals[0]}" in table.text
    assert f"/desk/deals/{dealers.b_deal}" not in search.text
    assert dealers.b_deal not in (await desk.get("/desk/")).text
    assert (await desk.get(f"/desk/deals/{dealers.a_deals[0]}")).status_code == 200
    for path in ("", "/timeline", f"/documents/{dealers.b_doc}"):
        r = await desk.get(f"/desk/deals/{dealers.b_deal}{path}")
        assert r.status_code == 404, (path, r.status_code)
        assert "does not exist" in r.text
    live = await desk.get(f"/desk/deals/{dealers.b_deal}/live")
    assert live.status_code == 286 and "does not exist" in live.text

    everyone = await _desk_signed_in(dealers, stack.token(Role.SALES, "sales.group"))
    assert (await everyone.get(f"/desk/deals/{dealers.b_deal}")).status_code == 200
    search = await everyone.get("/desk/deals", params={"q": dealers.b_deal})
    assert f"/desk/deals/{dealers.b_deal}" in search.text


async def test_the_desk_starts_deals_for_the_sessions_dealers_only(dealers: Dealers) -> None:
    stack = dealers.stack
    desk = await _desk_signed_in(dealers, stack.token(Role.SALES, "sales.a", dealers=[dealers.a]))
    csrf, form_key = await open_form(desk)
    refused = await desk.post(
        "/desk/deals/new", data={**form_fields(dealers.b), "csrf": csrf, "form_key": form_key}
    )
    assert refused.status_code == 403, refused.text
    assert "only for your dealers" in html.unescape(refused.text)
    csrf, form_key = await open_form(desk)
    started = await desk.post(
        "/desk/deals/new", data={**form_fields(dealers.a), "csrf": csrf, "form_key": form_key}
    )
    assert started.status_code == 303, started.text
    dealers.a_deals.append(started.headers["location"].removeprefix("/desk/deals/"))
