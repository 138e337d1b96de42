"""The desk as a test sees a browser: a cookie-keeping HTTP client that does
not follow redirects, signed in with the development sign-in, and the tokens
its pages carry (the sign-in form's, the session's CSRF token)."""

from __future__ import annotations

import re

import httpx

from tests.support.api_stack import ApiStack


def browser(stack: ApiStack) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=stack.api_url, timeout=30, trust_env=False)
    stack.clients.append(client)
    return client


def hidden_value(html: str, name: str) -> str:
    found = re.search(rf'name="{re.escape(name)}" value="([^"]+)"', html)
    assert found, f"the page carries a hidden {name!r} field"
    return found.group(1)


async def signed_in(stack: ApiStack, staff_id: str, role: str) -> httpx.AsyncClient:
    """A browser signed in as `staff_id` with `role` (development sign-in)."""
    client = browser(stack)
    page = await client.get("/desk/login")
    response = await client.post(
        "/desk/login",
        data={
            "method": "development",
            "staff_id": staff_id,
            "role": role,
            "form_token": hidden_value(page.text, "form_token"),
            "next": "/desk/",
        },
    )
    assert response.status_code == 303, response.text
    return client
