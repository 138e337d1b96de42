"""The deal desk as a test's browser sees it over HTTP: a client that keeps
cookies and does not follow redirects, the development sign-in, the tokens
the pages carry."""

from __future__ import annotations

import re

import httpx

from tests.support.api_stack import ApiStack


def browser(stack: ApiStack) -> httpx.AsyncClient:
    """A client that keeps cookies and does not follow redirects, as a test sees a browser."""
    client = httpx.AsyncClient(base_url=stack.api_url, timeout=30, trust_env=False)
    stack.clients.append(client)
    return client


def form_token(html: str) -> str:
    found = re.search(r'name="form_token" value="([^"]+)"', html)
    assert found, "the sign-in form carries a token"
    return found.group(1)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "a signed-in page carries the CSRF token"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, staff_id: str, role: str) -> str:
    """Sign in with the development sign-in; the session's CSRF token."""
    page = await client.get("/desk/login")
    response = await client.post(
        "/desk/login",
        data={
            "method": "development",
            "staff_id": staff_id,
            "role": role,
            "form_token": form_token(page.text),
            "next": "/desk/",
        },
    )
    assert response.status_code == 303, response.text
    return csrf_token((await client.get("/desk/")).text)
