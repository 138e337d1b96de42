"""The desk's doors: who gets in, how the session is kept, what a form post
needs. Over HTTP against the real API app, worker and lender simulator."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow.config import DEV_JWT_SECRET
from dealflow.models import Role
from dealflow.samples import example_deal
from tests.support.api_stack import ApiStack, HttpDesk, api_stack
from tests.support.desk import browser, csrf_token, form_token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(
        dev_env.client, database_url, tmp_session, secret=DEV_JWT_SECRET
    ) as running:
        yield running


async def sign_in(client: httpx.AsyncClient, staff_id: str, role: str) -> httpx.Response:
    page = await client.get("/desk/login")
    return await client.post(
        "/desk/login",
        data={
            "method": "development",
            "staff_id": staff_id,
            "role": role,
            "form_token": form_token(page.text),
            "next": "/desk/deals",
        },
    )


async def test_a_page_without_a_session_sends_the_browser_to_sign_in(stack: ApiStack) -> None:
    response = await browser(stack).get("/desk/deals?stage=DOCUMENTS")
    assert response.status_code == 303
    assert response.headers["location"] == "/desk/login?next=/desk/deals%3Fstage%3DDOCUMENTS"


async def test_development_sign_in_opens_an_httponly_session_and_says_it_is_development(
    stack: ApiStack,
) -> None:
    client = browser(stack)
    page = await client.get("/desk/login")
    assert page.status_code == 200 and "Development sign-in" in page.text
    assert "public development secret" in page.text
    response = await sign_in(client, "li.na", "sales")
    assert response.status_code == 303 and response.headers["location"] == "/desk/deals"
    cookie = next(
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith("dealflow_desk=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/desk" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert token.count(".") == 0, "the cookie is an opaque id, not a JWT"
    work = await client.get("/desk/")
    assert work.status_code == 200
    assert "li.na" in work.text and "My work" in work.text
    assert work.headers["cache-control"] == "no-store"


async def test_a_sign_in_form_from_elsewhere_is_refused(stack: ApiStack) -> None:
    client = browser(stack)
    response = await client.post(
        "/desk/login",
        data={"method": "development", "staff_id": "x", "role": "admin", "form_token": "forged"},
    )
    assert response.status_code == 401
    assert "expired" in response.text
    assert "dealflow_desk=" not in response.headers.get("set-cookie", "")


async def test_token_sign_in_takes_the_api_token_and_names_a_bad_one(stack: ApiStack) -> None:
    client = browser(stack)
    page = await client.get("/desk/login")
    bad = await client.post(
        "/desk/login",
        data={"method": "token", "token": "not-a-jwt", "form_token": form_token(page.text)},
    )
    assert bad.status_code == 401 and "malformed token" in bad.text
    good = await client.post(
        "/desk/login",
        data={
            "method": "token",
            "token": stack.token(Role.CREDIT, sub="wang.credit"),
            "form_token": form_token(bad.text),
        },
    )
    assert good.status_code == 303
    assert "wang.credit" in (await client.get("/desk/")).text


async def test_sign_out_needs_the_csrf_token_and_ends_the_session_on_the_server(
    stack: ApiStack,
) -> None:
    client = browser(stack)
    await sign_in(client, "zhao.delivery", "delivery")
    page = await client.get("/desk/")
    stolen = dict(client.cookies)
    refused = await client.post("/desk/logout", data={})
    assert refused.status_code == 403 and "Nothing was changed" in refused.text
    assert (await client.get("/desk/")).status_code == 200
    signed_out = await client.post("/desk/logout", data={"csrf": csrf_token(page.text)})
    assert signed_out.status_code == 303
    replay = browser(stack)
    replay.cookies.update(stolen)
    assert (await replay.get("/desk/")).status_code == 303, "the old cookie is worth nothing"


async def test_my_work_lists_the_roles_pending_actions_and_the_deals_table_its_names(
    stack: ApiStack,
) -> None:
    desk = HttpDesk(stack)
    # A name of its own: the suite's other deals are all Wang Fang's, and a
    # search for that name fills more than the first page.
    customer = example_deal().customer.model_dump(mode="json")
    surname = f"Wang{uuid.uuid4().hex[:8]}"
    customer["applicant"]["full_name"] = f"{surname} Fang"
    deal_id = await desk.start(customer=customer)
    await desk.wait_until(lambda status: status["stage"] == "CONTRACT", "the deal started")
    sales = browser(stack)
    await sign_in(sales, "li.sales", "sales")
    # The read model follows the deal a moment later.
    for _ in range(50):
        work = (await sales.get("/desk/")).text
        if deal_id in work:
            break
        await asyncio.sleep(0.1)
    assert deal_id in work and "sign the sales contract" in work
    credit = browser(stack)
    await sign_in(credit, "wang.credit", "credit")
    assert deal_id not in (await credit.get("/desk/")).text

    named = await sales.get("/desk/deals", params={"q": surname.lower()})
    assert deal_id in named.text and "Customer" in named.text
    auditor = browser(stack)
    await sign_in(auditor, "audit.01", "auditor")
    unnamed = await auditor.get("/desk/deals", params={"q": deal_id})
    assert deal_id in unnamed.text and "Customer" not in unnamed.text


async def test_my_work_polls_on_after_its_list_is_refreshed(stack: ApiStack) -> None:
    """The poll's answer replaces the list inside the poller, never the poller
    itself: swapped out by its own first answer, it would refresh once and stop."""
    sales = browser(stack)
    await sign_in(sales, "li.poll", "sales")
    page = (await sales.get("/desk/")).text
    assert len(re.findall(r'\sid="work-items"', page)) == 1, "one list, one id"
    poller = re.search(r"<div ([^>]*hx-trigger=\"every 2s\"[^>]*)>", page)
    assert poller, "My work refreshes itself"
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', poller.group(1)))
    assert attributes["hx-get"] == "/desk/" and attributes["hx-swap"] == "outerHTML"
    assert attributes.get("id") != "work-items"
    answer = (await sales.get("/desk/", headers={"HX-Request": "true"})).text
    replaced = re.match(r'\s*<div id="([\w-]+)">', answer)
    assert replaced and f"#{replaced.group(1)}" == attributes["hx-target"]
    assert "hx-trigger" not in answer, "the answer holds the list alone"
    assert 'data-testid="stage-counts"' in answer, "the counts per stage refresh with it"


async def test_development_sign_in_is_off_with_a_real_secret(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> None:
    async with api_stack(dev_env.client, database_url, tmp_session) as production_like:
        client = browser(production_like)
        page = await client.get("/desk/login")
        assert "Development sign-in" not in page.text
        response = await client.post(
            "/desk/login",
            data={
                "method": "development",
                "staff_id": "x",
                "role": "admin",
                "form_token": form_token(page.text),
            },
        )
        assert response.status_code == 401 and "off on this deployment" in response.text


async def test_the_browser_language_or_the_switch_chooses_chinese(stack: ApiStack) -> None:
    client = browser(stack)
    chinese = await client.get("/desk/login", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "登录业务柜台" in chinese.text and '<option value="zh" selected>' in chinese.text
    switched = await client.post("/desk/language", data={"language": "zh", "next": "/desk/login"})
    assert switched.status_code == 303 and switched.headers["location"] == "/desk/login"
    assert "登录业务柜台" in (await client.get("/desk/login")).text
    elsewhere = await client.post(
        "/desk/language", data={"language": "en", "next": "https://evil.example/"}
    )
    assert elsewhere.headers["location"] == "/desk/", "the switch only goes back into the desk"
    assert "Sign in to the deal desk" in (await client.get("/desk/login")).text


async def test_the_deals_table_sorts_and_a_foreign_cursor_is_named_not_crashed(
    stack: ApiStack,
) -> None:
    client = browser(stack)
    await sign_in(client, "li.sales", "sales")
    by_due = await client.get("/desk/deals", params={"sort": "due"})
    assert by_due.status_code == 200 and '<option value="due" selected>' in by_due.text
    unknown = await client.get("/desk/deals", params={"sort": "customer_name"})
    assert '<option value="updated" selected>' in unknown.text
    foreign = await client.get("/desk/deals", params={"sort": "due", "cursor": "WyJ4IiwieSJd"})
    assert foreign.status_code == 200 and "invalid cursor" in foreign.text
