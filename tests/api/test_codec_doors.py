"""Issue 14 items 8 and 9: who may use the codec endpoint, and how a browser may.

The real API over HTTP (tests/support/api_stack.py) on the dev server, whose
client carries the test codec. Encoding is admin only; the Temporal UI's
sign-in is an opaque server-side session; browsers' cross-site posts and
bodies of any type but JSON never reach the codec."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow.models import Role
from dealflow.storage import db
from tests.support.api_stack import ApiStack, api_stack

UI_ORIGIN = "http://localhost:8233"
EVIL = "https://evil.example"
CLEAR = {
    "payloads": [
        {
            "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
            "data": base64.b64encode(b'"hello"').decode(),
        }
    ]
}
JSON = {"Content-Type": "application/json"}
COOKIE = "dealflow_codec_session"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, database_url, tmp_session) as s:
        yield s


def bearer(stack: ApiStack, role: Role) -> dict[str, str]:
    return {**JSON, **stack.headers(role)}


async def encrypted(stack: ApiStack) -> dict[str, Any]:
    async with stack.http() as http:
        r = await http.post("/codec/encode", json=CLEAR, headers=bearer(stack, Role.ADMIN))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def signed_in(stack: ApiStack, http: httpx.AsyncClient, role: Role) -> str:
    r = await http.post("/codec/login", data={"token": stack.token(role)})
    assert r.status_code == 200, r.text
    return str(http.cookies[COOKIE])


# --------------------------------------------------------------------------- item 8


async def test_encode_is_admin_only_decode_stays_open_to_auditors(stack: ApiStack) -> None:
    """An auditor reads payloads but cannot make ciphertext under the production key."""
    async with stack.http() as http:
        for role in (Role.AUDITOR, Role.SALES, Role.CREDIT):
            r = await http.post("/codec/encode", json=CLEAR, headers=bearer(stack, role))
            assert r.status_code == 403, (role, r.text)
            assert "admin" in r.json()["detail"]
        enc = await encrypted(stack)
        for role in (Role.AUDITOR, Role.ADMIN):
            r = await http.post("/codec/decode", json=enc, headers=bearer(stack, role))
            assert r.status_code == 200 and r.json() == CLEAR, (role, r.text)
        # Signed in through the UI's cookie, an auditor still may not encode.
        await signed_in(stack, http, Role.AUDITOR)
        r = await http.post("/codec/encode", json=CLEAR, headers={**JSON, "Origin": UI_ORIGIN})
        assert r.status_code == 403
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN


# --------------------------------------------------------------------------- item 9


async def test_ui_sign_in_is_an_opaque_server_side_session(stack: ApiStack) -> None:
    enc = await encrypted(stack)
    async with stack.http() as browser:
        token = stack.token(Role.AUDITOR)
        r = await browser.post("/codec/login", data={"token": token})
        assert r.status_code == 200, r.text
        session_id = browser.cookies[COOKIE]
        assert token not in r.headers["set-cookie"] and "." not in session_id
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/codec" in cookie
        assert "secure" not in cookie  # a development stack: the UI is on http://localhost
        row = db.live_desk_session(stack.engine, session_id, datetime.now(UTC))
        assert row is not None and row.staff_id == "auditor-01"
        ui = {**JSON, "Origin": UI_ORIGIN, "X-Namespace": "default"}
        r = await browser.post("/codec/decode", json=enc, headers=ui)
        assert r.status_code == 200 and r.json() == CLEAR, r.text
        assert r.headers["access-control-allow-credentials"] == "true"
        await browser.post("/codec/logout")
    assert db.live_desk_session(stack.engine, session_id, datetime.now(UTC)) is None
    # The cookie replayed after sign-out (or stolen before it) is worth nothing.
    async with stack.http() as replayed:
        r = await replayed.post(
            "/codec/decode", json=enc, headers={**ui, "Cookie": f"{COOKIE}={session_id}"}
        )
        assert r.status_code == 401 and "sign in" in r.json()["detail"]
        # Nor is a raw JWT in the cookie the sign-in once set.
        r = await replayed.post(
            "/codec/decode", json=enc, headers={**ui, "Cookie": f"{COOKIE}={token}"}
        )
        assert r.status_code == 401


CROSS_SITE: dict[str, dict[str, str]] = {
    "foreign-origin": {"Origin": EVIL},
    "foreign-origin-same-site-claim": {"Origin": EVIL, "Sec-Fetch-Site": "same-site"},
    "null-origin": {"Origin": "null"},
    "cross-site-without-origin": {"Sec-Fetch-Site": "cross-site"},
}


@pytest.mark.parametrize("case", list(CROSS_SITE))
async def test_cross_site_posts_are_refused(stack: ApiStack, case: str) -> None:
    """Another site's page can neither sign a browser in or out nor make the
    signed-in browser encode or decode."""
    enc = await encrypted(stack)
    hostile = CROSS_SITE[case]
    async with stack.http() as browser:
        session_id = await signed_in(stack, browser, Role.ADMIN)
        r = await browser.post(
            "/codec/login", data={"token": stack.token(Role.AUDITOR)}, headers=hostile
        )
        assert r.status_code == 403 and "cross-site" in r.text
        assert browser.cookies[COOKIE] == session_id
        for op, body in (("decode", enc), ("encode", CLEAR)):
            r = await browser.post(f"/codec/{op}", json=body, headers={**JSON, **hostile})
            assert r.status_code == 403, (op, r.text)
            assert "cross-site" in r.json()["detail"]
        r = await browser.post("/codec/logout", headers=hostile)
        assert r.status_code == 403
        assert db.live_desk_session(stack.engine, session_id, datetime.now(UTC)) is not None


async def test_same_origin_and_ui_origins_are_let_through(stack: ApiStack) -> None:
    enc = await encrypted(stack)
    async with stack.http() as browser:
        for headers in (
            {"Origin": stack.api_url},
            {"Origin": UI_ORIGIN, "Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "same-origin"},
            {},  # no browser: the CLI, curl
        ):
            r = await browser.post(
                "/codec/login", data={"token": stack.token(Role.ADMIN)}, headers=headers
            )
            assert r.status_code == 200, (headers, r.text)
            r = await browser.post("/codec/decode", json=enc, headers={**JSON, **headers})
            assert r.status_code == 200, (headers, r.text)
            assert (await browser.post("/codec/logout", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_encode_and_decode_take_json_only(stack: ApiStack, content_type: str | None) -> None:
    """A "simple" cross-site request (no preflight) cannot carry a JSON body:
    refusing every other type keeps forms and text/plain posts out."""
    enc = await encrypted(stack)
    headers = {**stack.headers(Role.ADMIN), "Origin": UI_ORIGIN}
    if content_type:
        headers["Content-Type"] = content_type
    async with stack.http() as http:
        for op, body in (("decode", enc), ("encode", CLEAR)):
            r = await http.post(f"/codec/{op}", content=as_json(body), headers=headers)
            assert r.status_code == 415, (op, r.text)
            assert r.headers["access-control-allow-origin"] == UI_ORIGIN
        charset = {**headers, "Content-Type": "application/json; charset=utf-8"}
        r = await http.post("/codec/decode", content=as_json(enc), headers=charset)
        assert r.status_code == 200, r.text


async def test_the_session_cookie_is_secure_outside_development(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> None:
    async with (
        api_stack(
            dev_env.client, database_url, tmp_session, settings_changes={"env": "production"}
        ) as prod,
        prod.http() as browser,
    ):
        r = await browser.post("/codec/login", data={"token": prod.token(Role.AUDITOR)})
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def as_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
