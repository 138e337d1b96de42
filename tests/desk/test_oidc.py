"""Signing in to the desk through an OpenID Connect provider: the whole code
flow with PKCE over HTTP, against a real provider on a free port
(oidc-provider-mock, tests/support/oidc_provider.py) and the real API app."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import werkzeug.serving
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import KeySet, OctKey, RSAKey
from temporalio.testing import WorkflowEnvironment

from dealflow.config import DEV_JWT_SECRET, Settings
from dealflow.desk.oidc import OidcProvider, ProviderMetadata, SignInRefused
from dealflow.storage import db
from tests.support.api_stack import ApiStack, api_stack
from tests.support.oidc_provider import OidcTestProvider, oidc_provider
from tests.support.servers import free_port

pytestmark = pytest.mark.e2e

CLIENT_ID = "dealflow-desk"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcTestProvider]:
    with oidc_provider() as running:
        running.add_user(
            "u-1001",
            {"preferred_username": "chen.credit", "roles": ["credit", "payroll-admin"]},
        )
        running.add_user("u-1002", {"preferred_username": "no.role", "roles": ["payroll-admin"]})
        running.add_user("u-1003", {"preferred_username": "has spaces", "roles": ["delivery"]})
        yield running


@pytest.fixture(scope="module")
async def stack(
    provider: OidcTestProvider,
    dev_env: WorkflowEnvironment,
    database_url: str,
    tmp_session: Path,
) -> AsyncIterator[ApiStack]:
    changes = {
        "oidc_issuer": provider.issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": "desk-client-secret",
        "oidc_provider_name": "Example SSO",
    }
    async with api_stack(
        dev_env.client, database_url, tmp_session, secret=DEV_JWT_SECRET, settings_changes=changes
    ) as running:
        yield running


def browser(stack: ApiStack) -> httpx.AsyncClient:
    """Keeps cookies like a browser; the tests follow redirects where a browser would."""
    client = httpx.AsyncClient(base_url=stack.api_url, timeout=30, trust_env=False)
    stack.clients.append(client)
    return client


async def to_provider(client: httpx.AsyncClient, next_path: str = "/desk/") -> httpx.Response:
    """Press the sign-in button: the browser ends on the provider's login form."""
    form = await client.get("/desk/login/oidc", params={"next": next_path}, follow_redirects=True)
    assert form.status_code == 200 and "Authorize" in form.text, form.text
    return form


async def authorize(client: httpx.AsyncClient, form: httpx.Response, sub: str) -> httpx.Response:
    """Sign in at the provider as `sub`; the answer sends the browser back to the desk."""
    answer = await client.post(str(form.url), data={"sub": sub})
    assert answer.status_code == 302, answer.text
    return answer


def session_token(client: httpx.AsyncClient) -> str | None:
    return client.cookies.get("dealflow_desk", path="/desk")


async def test_the_code_flow_with_pkce_opens_a_session_with_the_roles_of_the_claim(
    stack: ApiStack, provider: OidcTestProvider
) -> None:
    client = browser(stack)
    login = await client.get("/desk/login")
    assert "Sign in with Example SSO" in login.text

    start = await client.get("/desk/login/oidc", params={"next": "/desk/deals"})
    assert start.status_code == 303
    asked = parse_qs(urlsplit(start.headers["location"]).query)
    assert asked["code_challenge_method"] == ["S256"] and asked["client_id"] == [CLIENT_ID]
    assert asked["redirect_uri"] == [f"{stack.api_url}/desk/login/oidc/callback"]
    pending = next(h for h in start.headers.get_list("set-cookie") if "dealflow_desk_oidc=" in h)
    assert "HttpOnly" in pending and "Path=/desk/login/oidc" in pending and "Max-Age=600" in pending

    form = await client.get(start.headers["location"])
    verified_before = provider.tap.verified_verifiers
    landed = await client.get(
        (await authorize(client, form, "u-1001")).headers["location"], follow_redirects=True
    )
    assert provider.tap.verified_verifiers == verified_before + 1, "the verifier was checked"
    assert landed.status_code == 200 and landed.url.path == "/desk/deals"
    assert "chen.credit" in landed.text
    token = session_token(client)
    assert token is not None
    row = db.live_desk_session(stack.engine, token, datetime.now(UTC))
    assert row is not None and row.staff_id == "chen.credit"
    assert list(row.role_names) == ["credit"], "roles of other applications are ignored"
    assert client.cookies.get("dealflow_desk_oidc", path="/desk/login/oidc") is None, "used once"


async def test_a_tampered_state_is_refused_and_signs_nobody_in(
    stack: ApiStack, provider: OidcTestProvider
) -> None:
    client = browser(stack)
    answer = await authorize(client, await to_provider(client), "u-1001")
    callback = urlsplit(answer.headers["location"])
    query = {key: values[0] for key, values in parse_qs(callback.query).items()}
    query["state"] = query["state"][:-1] + ("x" if query["state"][-1] != "x" else "y")
    refused = await client.get(f"{callback.path}?{urlencode(query)}")
    assert refused.status_code == 400
    assert "Nothing was signed in" in refused.text
    assert session_token(client) is None
    # The pending sign-in is spent: the genuine answer does not work after a forged one.
    genuine = await client.get(answer.headers["location"])
    assert genuine.status_code == 400 and session_token(client) is None
    forged_error = await client.get(
        "/desk/login/oidc/callback",
        params={"error": "call 555-0100 to verify", "error_description": "your account is locked"},
    )
    assert forged_error.status_code == 401 and "did not sign you in." in forged_error.text
    assert "555-0100" not in forged_error.text and "locked" not in forged_error.text


async def test_a_callback_without_the_browsers_pending_sign_in_is_refused(
    stack: ApiStack, provider: OidcTestProvider
) -> None:
    victim, attacker = browser(stack), browser(stack)
    answer = await authorize(attacker, await to_provider(attacker), "u-1001")
    # The attacker's own answer, opened in another browser (login CSRF).
    refused = await victim.get(answer.headers["location"])
    assert refused.status_code == 400 and session_token(victim) is None


async def test_an_account_without_a_dealflow_role_is_refused_with_the_reason(
    stack: ApiStack,
) -> None:
    client = browser(stack)
    answer = await authorize(client, await to_provider(client), "u-1002")
    refused = await client.get(answer.headers["location"])
    assert refused.status_code == 403
    assert "no DealFlow role" in refused.text and "&#39;roles&#39; claim" in refused.text
    assert session_token(client) is None


async def test_an_account_whose_names_are_no_staff_id_is_refused(stack: ApiStack) -> None:
    client = browser(stack)
    # preferred_username "has spaces" is no staff id, and neither is the sub
    # the mock gives a new login: "new user@example" has a space too.
    answer = await authorize(client, await to_provider(client), "u-1003")
    landed = await client.get(answer.headers["location"])
    assert landed.status_code == 303, "falls back to the sub, u-1003"
    assert "u-1003" in (await client.get("/desk/")).text
    other = browser(stack)
    answer = await authorize(other, await to_provider(other), "new user@example")
    refused = await other.get(answer.headers["location"])
    assert refused.status_code == 403 and "no usable staff id" in refused.text
    assert session_token(other) is None


async def test_provider_refusals_and_failures_show_a_clear_page_and_sign_nobody_in(
    stack: ApiStack, provider: OidcTestProvider
) -> None:
    client = browser(stack)
    form = await to_provider(client)
    # The mock leaves the state out of its error answer, so the page says the
    # registered code only.
    denied = await client.post(str(form.url), data={"action": "deny"}, follow_redirects=True)
    assert denied.status_code == 401
    assert "Example SSO did not sign you in (access_denied)" in denied.text

    provider.tap.token_endpoint_fails = True
    try:
        answer = await authorize(client, await to_provider(client), "u-1001")
        down = await client.get(answer.headers["location"])
    finally:
        provider.tap.token_endpoint_fails = False
    assert down.status_code == 502 and "Sign-in is not possible right now" in down.text
    assert "HTTP 500" in down.text

    provider.tap.tamper_id_token = True
    try:
        answer = await authorize(client, await to_provider(client), "u-1001")
        forged = await client.get(answer.headers["location"])
    finally:
        provider.tap.tamper_id_token = False
    assert forged.status_code == 401 and "ID token failed its checks" in forged.text
    assert session_token(client) is None


async def test_the_button_shows_only_when_a_provider_is_configured_and_reachable(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> None:
    async with api_stack(dev_env.client, database_url, tmp_session) as plain:
        client = browser(plain)
        page = await client.get("/desk/login")
        assert page.status_code == 200 and "/desk/login/oidc" not in page.text
        off = await client.get("/desk/login/oidc")
        assert off.status_code == 404 and "not set up" in off.text
    closed = f"http://127.0.0.1:{free_port()}"
    changes = {"oidc_issuer": closed, "oidc_client_id": CLIENT_ID}
    async with api_stack(
        dev_env.client, database_url, tmp_session, settings_changes=changes
    ) as unreachable:
        client = browser(unreachable)
        page = await client.get("/desk/login")
        assert re.search(r"Sign in with 127\.0\.0\.1", page.text)
        down = await client.get("/desk/login/oidc")
        assert down.status_code == 502 and "could not be reached" in down.text
        assert "dealflow_desk_oidc=" not in down.headers.get("set-cookie", "")


# ------------------------------------------------- the ID token checks, one by one


@pytest.fixture(scope="module")
def signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "desk-test-1", "use": "sig"})


@pytest.fixture(scope="module")
def key_server(signing_key: RSAKey) -> Iterator[str]:
    """Publishes the key set only: the checks need no more of a provider."""
    keys = json.dumps(KeySet([signing_key]).as_dict()).encode()

    def publish(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [keys]

    server = werkzeug.serving.make_server("127.0.0.1", 0, publish, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
    server.server_close()


def id_token(key: RSAKey, issuer: str, **changes: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": "u-7",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "nonce": "the-nonce",
        "roles": ["credit"],
    }
    claims.update(changes)
    header = {"alg": "RS256", "kid": key.kid}
    return joserfc_jwt.encode(header, {k: v for k, v in claims.items() if v is not None}, key)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "another-app"}, "aud"),
        ({"nonce": "another-nonce"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"iss": "http://127.0.0.1:9/other"}, "iss"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": [CLIENT_ID, "another-app"], "azp": "another-app"}, "azp"),
    ],
)
async def test_an_id_token_that_fails_a_check_is_refused(
    key_server: str, signing_key: RSAKey, changes: dict[str, object], reason: str
) -> None:
    provider = OidcProvider(Settings(oidc_issuer=key_server, oidc_client_id=CLIENT_ID))
    metadata = ProviderMetadata(key_server, "", "", f"{key_server}/jwks", ("RS256",))
    good = id_token(signing_key, key_server)
    claims = await provider.verified_claims(metadata, good, "the-nonce", None)
    assert provider.principal(claims).sub == "u-7"
    with pytest.raises(SignInRefused, match=reason):
        await provider.verified_claims(
            metadata, id_token(signing_key, key_server, **changes), "the-nonce", None
        )


async def test_an_id_token_signed_with_a_shared_secret_or_an_unknown_key_is_refused(
    key_server: str,
) -> None:
    provider = OidcProvider(
        Settings(oidc_issuer=key_server, oidc_client_id=CLIENT_ID, oidc_client_secret="s" * 32)
    )
    metadata = ProviderMetadata(key_server, "", "", f"{key_server}/jwks", ("RS256", "HS256"))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "not-published"})
    with pytest.raises(SignInRefused, match="failed its checks"):
        await provider.verified_claims(metadata, id_token(stranger, key_server), "the-nonce", None)
    secret = OctKey.import_key("s" * 32)
    forged = joserfc_jwt.encode({"alg": "HS256"}, {"iss": key_server, "aud": CLIENT_ID}, secret)
    with pytest.raises(SignInRefused, match="failed its checks"):
        await provider.verified_claims(metadata, forged, "the-nonce", None)
