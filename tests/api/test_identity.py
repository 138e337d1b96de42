"""Who a staff token says the caller is, and what it may do with a key
(issue 14, items 4-6), over real HTTP against the real app:

- item 4: with the identity provider's keys (JWKS), a token issued for
  another application (its `aud`) or by another issuer (`iss`) is refused,
  whatever roles it carries, and the process will not start without both
  settings;
- item 5: `exp` and `iat` are required, a token may live at most the
  configured hours, the key set is fetched with a short deadline and fetched
  again for an unknown key id at most once per configured interval (counted
  at a real HTTP key endpoint);
- item 6: an `Idempotency-Key` belongs to the token's subject: another
  subject's same key is an independent request that learns nothing of the
  first, and a key expires.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from temporalio.testing import WorkflowEnvironment

from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.api.jwks import JwksCache
from dealflow.api.operations import request_digest
from dealflow.api.security import Authenticator, AuthError, TokenPolicy, mint_token
from dealflow.config import Settings, load_lenders
from dealflow.models import DealInput, Role
from dealflow.startup import StartupError, settings_from_env
from dealflow.storage import db
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.api_stack import SECRET, deal_body
from tests.support.jwks_provider import AUDIENCE, ISSUER, JwksProvider, jwks_provider
from tests.support.servers import free_port, serve_async
from tests.support.stack import ROOT

PROBLEM = "application/problem+json"
# Short, so the tests can wait it out.
REFETCH_SECONDS = 1.0


@pytest.fixture
def provider() -> Iterator[JwksProvider]:
    """A provider of one's own, for the tests that count fetches or make it hang."""
    with jwks_provider() as running:
        yield running


@pytest.fixture(scope="module")
def idp() -> Iterator[JwksProvider]:
    """A provider shared by the tests that only present tokens."""
    with jwks_provider() as running:
        yield running


@asynccontextmanager
async def api(
    dev_env: WorkflowEnvironment, database_url: str, tmp: Path, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with `changes` to its settings, served over HTTP; no worker
    (deals are started, not run)."""
    port = free_port()
    settings = Settings(
        jwt_secret=SECRET,
        task_queue=f"identity-{uuid.uuid4().hex[:8]}",
        database_url=database_url,
        api_port=port,
        **changes,
    )
    services = Services(
        settings=settings,
        client=dev_env.client,
        engine=db.make_engine(database_url),
        lenders=load_lenders(ROOT / "examples" / "lenders.toml"),
        store=LocalDirectoryStore(
            tmp / f"documents-{port}", signing_secret=SECRET, api_base_url=settings.api_url
        ),
    )
    async with (
        serve_async(create_app(services), port=port) as url,
        httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http,
    ):
        yield http


def jwks_settings(provider: JwksProvider) -> dict[str, Any]:
    return {
        "jwks_url": provider.url,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        # Short, as in production, but not so short that a loaded CI machine
        # (the suite runs chaos and benchmarks beside it) misses a healthy fetch.
        "jwks_timeout_seconds": 2.0,
        "jwks_refetch_seconds": REFETCH_SECONDS,
    }


@pytest.fixture
async def jwks_api(
    provider: JwksProvider, dev_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with api(dev_env, database_url, tmp_path, **jwks_settings(provider)) as http:
        yield http


@pytest.fixture(scope="module")
async def idp_api(
    idp: JwksProvider, dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with api(dev_env, database_url, tmp_session, **jwks_settings(idp)) as http:
        yield http


def refused(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith(PROBLEM)
    detail = str(r.json()["detail"])
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"
    return detail


async def get_deals(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/api/deals", headers={"Authorization": f"Bearer {token}"})


# --------------------------------------------------------------------------- item 4


async def test_jwks_token_for_this_api_is_accepted_and_hs256_refused(
    idp_api: httpx.AsyncClient, idp: JwksProvider
) -> None:
    r = await get_deals(idp_api, idp.token())
    assert r.status_code == 200, r.text
    hs256 = mint_token(SECRET, "li", [Role.ADMIN], audience=AUDIENCE, issuer=ISSUER)
    refused(await get_deals(idp_api, hs256), 401, "algorithm 'HS256' is not accepted")
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = idp.token(key=forger, roles=["admin"])
    refused(await get_deals(idp_api, forged), 401, "Signature verification failed")


@pytest.mark.parametrize("aud", ["payroll-app", ["payroll-app", "hr-portal"], None])
async def test_jwks_token_of_a_foreign_audience_is_401(
    idp_api: httpx.AsyncClient, idp: JwksProvider, aud: Any
) -> None:
    """The same provider, the same keys, an admin role: but issued for another
    application (or for none). The answer names neither audience."""
    token = idp.token(aud=aud, roles=["admin"])
    detail = refused(await get_deals(idp_api, token), 401)
    expected = "issued for another application" if aud else 'missing the "aud" claim'
    assert expected in detail
    assert AUDIENCE not in detail and "payroll" not in detail


@pytest.mark.parametrize("iss", ["https://other-idp.example.test/", ISSUER + "/", None])
async def test_jwks_token_of_another_issuer_is_401(
    idp_api: httpx.AsyncClient, idp: JwksProvider, iss: str | None
) -> None:
    detail = refused(await get_deals(idp_api, idp.token(iss=iss, roles=["admin"])), 401)
    expected = "issuer this API does not trust" if iss else 'missing the "iss" claim'
    assert expected in detail
    assert ISSUER not in detail and "other-idp" not in detail


def test_authenticator_will_not_use_jwks_without_audience_and_issuer() -> None:
    jwks = JwksCache("http://127.0.0.1:9/jwks.json")
    for policy in (TokenPolicy(), TokenPolicy(audience=AUDIENCE), TokenPolicy(issuer=ISSUER)):
        with pytest.raises(ValueError, match="DEALFLOW_JWT_AUDIENCE and DEALFLOW_JWT_ISSUER"):
            Authenticator("", jwks, policy)


def test_api_will_not_start_with_jwks_but_no_audience(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "TEMPORAL_"))}
    env.update(
        DEALFLOW_DATA_DIR=str(tmp_path),
        DEALFLOW_JWKS_URL="http://127.0.0.1:9/jwks.json",
        DEALFLOW_JWT_ISSUER=ISSUER,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dealflow.api"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "api: configuration error: DEALFLOW_JWT_AUDIENCE: Value error, "
        "required when DEALFLOW_JWKS_URL is set"
    ]


def test_settings_with_jwks_name_each_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEALFLOW_JWKS_URL", "https://idp.example.test/jwks.json")
    monkeypatch.setenv("DEALFLOW_JWT_AUDIENCE", AUDIENCE)
    with pytest.raises(StartupError) as caught:
        settings_from_env()
    assert str(caught.value) == (
        "configuration error: DEALFLOW_JWT_ISSUER: Value error, "
        "required when DEALFLOW_JWKS_URL is set"
    )
    monkeypatch.setenv("DEALFLOW_JWT_ISSUER", ISSUER)
    assert settings_from_env().jwt_issuer == ISSUER


# --------------------------------------------------------------------------- item 5


def _lifetime(hours: float) -> dict[str, Any]:
    now = int(time.time())
    return {"iat": now - 60, "exp": now - 60 + int(hours * 3600)}


JWKS_HYGIENE: dict[str, tuple[dict[str, Any], str]] = {
    "no iat": ({"iat": None}, 'missing the "iat" claim'),
    "no exp": ({"exp": None}, 'missing the "exp" claim'),
    "13 h": (_lifetime(13), "accepts tokens of at most 12 h"),
    "a year": (_lifetime(24 * 365), "accepts tokens of at most 12 h"),
    "iat in the future": ({"iat": int(time.time()) + 3600}, "not yet valid"),
    "expired": ({"exp": int(time.time()) - 120}, "expired"),
}


@pytest.mark.parametrize("case", list(JWKS_HYGIENE))
async def test_jwks_token_hygiene(idp_api: httpx.AsyncClient, idp: JwksProvider, case: str) -> None:
    claims, fragment = JWKS_HYGIENE[case]
    token = idp.token(roles=["admin"], **claims)
    refused(await get_deals(idp_api, token), 401, fragment)


async def test_a_token_of_exactly_the_longest_lifetime_is_accepted(
    idp_api: httpx.AsyncClient, idp: JwksProvider
) -> None:
    r = await get_deals(idp_api, idp.token(**_lifetime(12)))
    assert r.status_code == 200, r.text


def _hs256(**claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "li", "roles": ["sales"], "iat": now, "exp": now + 600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, "HS256")


async def test_development_tokens_need_iat_and_a_bounded_lifetime(
    dev_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    async with api(dev_env, database_url, tmp_path, jwt_max_lifetime_hours=2) as http:
        refused(await get_deals(http, _hs256(iat=None)), 401, 'missing the "iat" claim')
        refused(await get_deals(http, _hs256(**_lifetime(3))), 401, "at most 2 h")
        assert (await get_deals(http, _hs256(**_lifetime(2)))).status_code == 200
        # the minting command's tokens pass; aud and iss are checked once set
        assert (await get_deals(http, mint_token(SECRET, "li", ["sales"]))).status_code == 200
        with_aud = mint_token(SECRET, "li", ["sales"], audience="x", issuer="y")
        assert (await get_deals(http, with_aud)).status_code == 200
    async with api(
        dev_env, database_url, tmp_path, jwt_audience=AUDIENCE, jwt_issuer=ISSUER
    ) as http:
        refused(await get_deals(http, mint_token(SECRET, "li", ["sales"])), 401, "aud")
        good = mint_token(SECRET, "li", ["sales"], audience=AUDIENCE, issuer=ISSUER)
        assert (await get_deals(http, good)).status_code == 200


async def test_unknown_key_ids_refetch_the_key_set_at_most_once_per_interval(
    jwks_api: httpx.AsyncClient, provider: JwksProvider
) -> None:
    def made_up(n: int) -> list[str]:
        return [
            provider.token(kid=f"k-{uuid.uuid4().hex}", key=provider.keys["k1"]) for _ in range(n)
        ]

    async def all_refused(tokens: list[str]) -> None:
        for r in await asyncio.gather(*(get_deals(jwks_api, token) for token in tokens)):
            refused(r, 401, "not among the identity provider's signing keys")

    assert (await get_deals(jwks_api, provider.token())).status_code == 200
    assert provider.fetches == 1
    # Within the interval of that fetch, made-up key ids fetch nothing.
    await all_refused(made_up(10))
    assert provider.fetches == 1
    # Once it passed, many at once: one refetch between them, then none.
    await asyncio.sleep(REFETCH_SECONDS + 0.1)
    await all_refused(made_up(20))
    assert provider.fetches == 2
    await all_refused(made_up(10))
    assert provider.fetches == 2
    # A key rotated in within the interval waits for it; the known key still works.
    provider.add_key("k2")
    refused(await get_deals(jwks_api, provider.token(kid="k2")), 401, "key id")
    assert (await get_deals(jwks_api, provider.token())).status_code == 200
    assert provider.fetches == 2
    await asyncio.sleep(REFETCH_SECONDS + 0.1)
    assert (await get_deals(jwks_api, provider.token(kid="k2"))).status_code == 200
    assert provider.fetches == 3


async def test_a_rotated_key_is_fetched_once_the_interval_passed(provider: JwksProvider) -> None:
    now = [1000.0]
    cache = JwksCache(provider.url, refetch_seconds=30, clock=lambda: now[0])
    auth = Authenticator("", cache, TokenPolicy(audience=AUDIENCE, issuer=ISSUER))
    assert (await auth.verify(provider.token())).roles == (Role.CREDIT,)
    provider.add_key("k2")
    for step in (1, 10, 18):
        now[0] += step
        with pytest.raises(AuthError, match="key id"):
            await auth.verify(provider.token(kid="k2"))
    assert provider.fetches == 1
    now[0] += 2
    assert (await auth.verify(provider.token(kid="k2", sub="wu"))).sub == "wu"
    assert provider.fetches == 2
    # the set is fetched again once it is old (a withdrawn key stops working)
    del provider.keys["k1"]
    now[0] += 301
    with pytest.raises(AuthError, match="key id"):
        await auth.verify(provider.token(kid="k1", key=provider.keys["k2"]))
    assert provider.fetches == 3


async def test_a_hanging_key_endpoint_times_out_fast_and_the_api_stays_responsive(
    jwks_api: httpx.AsyncClient, provider: JwksProvider
) -> None:
    provider.hang.set()
    started = time.monotonic()
    answers = await asyncio.gather(
        *(get_deals(jwks_api, provider.token()) for _ in range(8)),
        jwks_api.get("/healthz"),
    )
    health = answers.pop()
    assert health.status_code == 200
    for r in answers:
        detail = refused(r, 503, "signing keys cannot be fetched")
        assert provider.url not in detail and "127.0.0.1" not in detail
    # one fetch, under a 2 s deadline, for all eight requests
    assert time.monotonic() - started < 6
    assert provider.fetches == 1


async def test_the_key_set_serves_once_the_provider_answers_again(provider: JwksProvider) -> None:
    now = [1000.0]
    cache = JwksCache(provider.url, timeout_seconds=0.3, clock=lambda: now[0])
    auth = Authenticator("", cache, TokenPolicy(audience=AUDIENCE, issuer=ISSUER))
    provider.hang.set()
    with pytest.raises(Exception, match="cannot be fetched"):
        await auth.verify(provider.token())
    provider.hang.clear()
    # right after a failure the API does not wait on the provider again...
    with pytest.raises(Exception, match="cannot be fetched"):
        await auth.verify(provider.token())
    assert provider.fetches == 1
    # ...but a moment later it does
    now[0] += 3
    assert (await auth.verify(provider.token())).sub == "li.credit"
    assert provider.fetches == 2


# --------------------------------------------------------------------------- item 6


@pytest.fixture
async def hs_api(
    dev_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with api(dev_env, database_url, tmp_path) as http:
        yield http


def as_sales(sub: str, key: str) -> dict[str, str]:
    token = mint_token(SECRET, sub, [Role.SALES])
    return {"Authorization": f"Bearer {token}", "Idempotency-Key": key}


async def test_idempotency_key_of_another_subject_is_an_independent_request(
    hs_api: httpx.AsyncClient,
) -> None:
    key = f"shared-{uuid.uuid4().hex}"
    body = deal_body(dealer_id="dealer-keys")
    ann = await hs_api.post("/api/deals", json=body, headers=as_sales("ann", key))
    assert ann.status_code == 201, ann.text
    ann_deal = ann.json()["deal_id"]
    # bob, with ann's key and body: his own deal, not ann's
    bob = await hs_api.post("/api/deals", json=body, headers=as_sales("bob", key))
    assert bob.status_code == 201, bob.text
    assert bob.json()["deal_id"] != ann_deal
    assert "idempotent-replayed" not in bob.headers
    # cy, with ann's key and another body: a deal too, and no word of ann's
    other = deal_body(dealer_id="dealer-keys", term_months=48)
    cy = await hs_api.post("/api/deals", json=other, headers=as_sales("cy", key))
    assert cy.status_code == 201, cy.text
    assert ann_deal not in cy.text
    # each subject's retry still gets its own deal; ann's misuse names only hers
    again = await hs_api.post("/api/deals", json=body, headers=as_sales("bob", key))
    assert again.json()["deal_id"] == bob.json()["deal_id"]
    assert again.headers["idempotent-replayed"] == "true"
    misuse = await hs_api.post("/api/deals", json=other, headers=as_sales("ann", key))
    detail = refused(misuse, 422, f"already used to start deal {ann_deal}")
    assert bob.json()["deal_id"] not in detail and cy.json()["deal_id"] not in detail


async def test_an_expired_idempotency_key_is_free_again(
    hs_api: httpx.AsyncClient, database_url: str
) -> None:
    """ann used the key 25 hours ago (the default lifetime is 24): using it
    again, with the same body or another, starts a new deal."""
    key = f"old-{uuid.uuid4().hex}"
    body = deal_body(dealer_id="dealer-old-key")
    old_deal = f"20261101-{uuid.uuid4().hex[:8]}"
    engine = db.make_engine(database_url)
    db.remember_idempotency_key(
        engine,
        subject="ann",
        key=key,
        request_sha256=request_digest(DealInput.model_validate(body)),
        deal_id=old_deal,
        response_status=201,
        created_at=datetime.now(UTC) - timedelta(hours=25),
    )
    r = await hs_api.post("/api/deals", json=body, headers=as_sales("ann", key))
    assert r.status_code == 201, r.text
    assert r.json()["deal_id"] != old_deal and "idempotent-replayed" not in r.headers
    row = db.get_idempotency_key(engine, "ann", key)
    assert row is not None and row.deal_id == r.json()["deal_id"]
    # and the renewed key holds as any key does
    again = await hs_api.post("/api/deals", json=body, headers=as_sales("ann", key))
    assert again.json()["deal_id"] == r.json()["deal_id"]
