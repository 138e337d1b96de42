"""Contract tests of the back-office API (docs/architecture.md §3.3), endpoint by endpoint,
over real HTTP against the real app, a real Temporal dev server and a worker:
success, 401, 403 at every role boundary of the permission table, 404, 409,
422 per rule, idempotent creation and pagination. Every refusal is
application/problem+json with a detail a clerk can act on, and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import starter
from dealflow import rules
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.api.operations import request_digest
from dealflow.api.ops import create_ops_app
from dealflow.api.routes.deals import ACTION_ROUTES
from dealflow.api.security import Authenticator, mint_token
from dealflow.config import Settings, get_settings
from dealflow.models import Action, DealInput, ProjectionInput, Role, Stage
from dealflow.samples import EXAMPLES, sample_pdf
from dealflow.storage import db
from tests.support.api_stack import SECRET, ApiStack, HttpDesk, action_body, api_stack, deal_body
from tests.support.servers import free_port, serve_async

NO_DEAL = "20990101-00000000"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, database_url, tmp_session) as s:
        yield s


def problem(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    for fragment in fragments:
        assert fragment in body["detail"], f"{fragment!r} not in {body['detail']!r}"
    return str(body["detail"])


# --------------------------------------------------------------------------- auth


def _tok(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _claims(**kw: Any) -> dict[str, Any]:
    # Made when the module is collected: valid for hours, however long the suite runs.
    now = int(time.time())
    return {"sub": "li", "roles": ["sales"], "iat": now, "exp": now + 6 * 3600, **kw}


BAD_AUTH = {
    "no header": (None, "missing Authorization header"),
    "basic scheme": ("Basic bGk6cHc=", "must be 'Bearer <token>'"),
    "empty bearer": ("Bearer", "must be 'Bearer <token>'"),
    "not a jwt": ("Bearer not-a-jwt", "malformed token"),
    "wrong secret": (
        "Bearer " + _tok(_claims(), "another-secret-0123456789abcdef0123"),
        "invalid token: Signature verification failed",
    ),
    "expired": ("Bearer " + _tok(_claims(exp=int(time.time()) - 3600)), "expired"),
    "alg none": (
        "Bearer " + jwt.encode(_claims(), None, algorithm="none"),  # type: ignore[arg-type]
        "algorithm 'none' is not accepted",
    ),
    "HS512": ("Bearer " + _tok(_claims(), alg="HS512"), "algorithm 'HS512' is not accepted"),
    "no exp": ("Bearer " + _tok({"sub": "li", "roles": ["sales"]}), 'missing the "exp" claim'),
    "no iat": (
        "Bearer " + _tok({"sub": "li", "roles": ["sales"], "exp": int(time.time()) + 600}),
        'missing the "iat" claim',
    ),
    "roles not a list": ("Bearer " + _tok(_claims(roles="sales")), "roles claim must be a list"),
    "bad sub": ("Bearer " + _tok(_claims(sub="li wei")), "sub claim"),
}


@pytest.mark.parametrize("case", list(BAD_AUTH))
async def test_bad_or_missing_token_is_401(stack: ApiStack, case: str) -> None:
    header, fragment = BAD_AUTH[case]
    headers = {"Authorization": header} if header else {}
    http = stack.http()
    for method, path, body in (
        ("GET", "/api/deals", None),
        ("GET", f"/api/deals/{NO_DEAL}", None),
        ("POST", "/api/deals", deal_body()),
        ("POST", f"/api/deals/{NO_DEAL}/actions/cancel", {"reason": "x"}),
        ("GET", f"/api/deals/{NO_DEAL}/documents/d1", None),
    ):
        r = await http.request(method, path, json=body, headers=headers)
        problem(r, 401, fragment)
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_401_comes_before_body_validation(stack: ApiStack) -> None:
    http = stack.http()
    r = await http.post(
        "/api/deals", content=b"{not json", headers={"content-type": "application/json"}
    )
    problem(r, 401, "missing Authorization")
    r = await http.post(f"/api/deals/{NO_DEAL}/actions/cancel", json={"nope": 1})
    problem(r, 401)
    # ...and a wrong role is 403 even when the body is broken too.
    r = await stack.http(Role.FINANCE).post(
        "/api/deals", content=b"{", headers={"content-type": "application/json"}
    )
    problem(r, 403, "may not start a deal")


async def test_token_without_a_dealflow_role_is_403(stack: ApiStack) -> None:
    token = _tok(_claims(roles=["manager", "viewer"]))
    r = await stack.http(token=token).get("/api/deals")
    problem(r, 403, "grants no DealFlow role")


def test_mint_token_round_trip() -> None:
    auth = Authenticator(SECRET)
    p = auth.decode(mint_token(SECRET, "li", [Role.SALES, "credit"], ttl=60))
    assert p.sub == "li" and p.roles == (Role.SALES, Role.CREDIT)
    with pytest.raises(ValueError):
        mint_token(SECRET, "li", [], ttl=60)
    with pytest.raises(ValueError):
        mint_token(SECRET, "li", ["nope"], ttl=60)


# --------------------------------------------------------------------------- POST /api/deals


async def test_create_deal(stack: ApiStack) -> None:
    r = await stack.http(token=stack.token(Role.SALES, "li")).post("/api/deals", json=deal_body())
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["workflow_id"] == f"deal-{created['deal_id']}"
    r = await stack.http(Role.AUDITOR).get(f"/api/deals/{created['deal_id']}")
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["stage"] == "CONTRACT"
    assert st["transitions"][0]["actor"] == "li/sales"
    assert st["pending"][0]["action"] == "sign-sales-contract"
    assert st["money"]["amount_financed"] == "105000.00"
    # admin may start deals too
    r = await stack.http(Role.ADMIN).post("/api/deals", json=deal_body())
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("role", sorted(set(Role) - rules.START_DEAL_ROLES))
async def test_only_sales_start_deals(stack: ApiStack, role: Role) -> None:
    r = await stack.http(role).post("/api/deals", json=deal_body(dealer_id="dealer-forbidden"))
    problem(r, 403, f"'{role.value}' may not start a deal", "allowed: admin, sales")


def _mutate(path: str, value: Any) -> dict[str, Any]:
    body = deal_body()
    node = body
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return body


_DELETE = object()
INVALID_DEALS: dict[str, tuple[Any, str]] = {
    "not JSON": (b'{"dealer_id": ', "the body is not valid JSON"),
    "not an object": ([1, 2], "Input should be a valid dictionary"),
    "missing vehicle": (_mutate("vehicle", _DELETE), "vehicle: Field required"),
    "unknown field": (_mutate("colour", "red"), "colour: Extra inputs are not permitted"),
    "float-ish price": (_mutate("vehicle.price", "1e400"), "vehicle.price"),
    "price negative": (
        _mutate("vehicle.price", "-1.00"),
        "vehicle.price: Input should be greater than 0",
    ),
    "term too long": (_mutate("term_months", 120), "term_months"),
    "VIN check digit": (_mutate("vehicle.vin", "LFV2A2159P3012345"), "fails its check digit"),
    "ID checksum": (
        _mutate("customer.applicant.id_number", "110105198803120015"),
        "applicant ID number is not valid",
    ),
    "down payment too small": (
        _mutate("down_payment", "10000.00"),
        "exceeds 80% of the price 150,000.00",
    ),
    "unknown lender": (
        _mutate("lender_ids", ["acme-auto-finance", "zeta"]),
        "unknown lender 'zeta'",
    ),
    "lender twice": (
        _mutate("lender_ids", ["acme-auto-finance", "acme-auto-finance"]),
        "appears twice",
    ),
    "married without spouse": (_mutate("customer.spouse", None), "needs the spouse's details"),
    "used product new car": (
        _mutate("product", "used_car"),
        "needs a vehicle with condition 'used'",
    ),
    # The published contract (issue 14): what the schema forbids is refused.
    "boolean as 0": (_mutate("vehicle.new_energy", 0), "vehicle.new_energy"),
    "boolean as a string": (_mutate("customer.applicant.married", "true"), "married"),
    "price tiny float": (_mutate("vehicle.price", 5e-324), "write amounts as decimal strings"),
    "price with a fraction as a number": (
        _mutate("vehicle.price", 150000.5),
        "write amounts as decimal strings",
    ),
    "price empty": (_mutate("vehicle.price", ""), "not an amount as the API takes it"),
    "price in exponent form": (_mutate("vehicle.price", "5e-324"), "vehicle.price"),
    "price with leading zeros": (_mutate("vehicle.price", "0150000"), "vehicle.price"),
    "count as a string": (_mutate("term_months", "36"), "term_months"),
}


@pytest.mark.parametrize("case", list(INVALID_DEALS))
async def test_invalid_deal_is_422_and_starts_nothing(stack: ApiStack, case: str) -> None:
    body, fragment = INVALID_DEALS[case]
    key = f"bad-{uuid.uuid4().hex}"
    headers = {"Idempotency-Key": key, "content-type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await stack.http(Role.SALES).post("/api/deals", content=content, headers=headers)
    problem(r, 422, fragment)
    # nothing stored under the key: a corrected body with it starts one deal
    assert db.get_idempotency_key(stack.engine, "sales-01", key) is None


async def test_money_as_a_json_integer_still_starts_a_deal(stack: ApiStack) -> None:
    """Older clients send whole amounts as JSON numbers; the schema allows an
    integer in range, and so does the API."""
    body = _mutate("vehicle.price", 150000)
    body["down_payment"] = 45000
    r = await stack.http(Role.SALES).post("/api/deals", json=body)
    assert r.status_code == 201, r.text
    st = (await stack.http(Role.SALES).get(f"/api/deals/{r.json()['deal_id']}")).json()
    assert st["money"]["amount_financed"] == "105000.00"


async def test_schema_states_money_as_a_decimal_string_and_links_the_new_deal(
    stack: ApiStack,
) -> None:
    schema = (await stack.http().get("/openapi.json")).json()
    vehicle = schema["components"]["schemas"]["Vehicle"]["properties"]
    string, integer = vehicle["price"]["anyOf"]
    assert string["type"] == "string" and string["pattern"].startswith("^")
    assert integer == {"type": "integer", "minimum": 1, "maximum": 999_999_999_999}
    assert vehicle["new_energy"]["type"] == "boolean"
    links = schema["paths"]["/api/deals"]["post"]["responses"]["201"]["links"]
    assert links["GetDeal"]["parameters"] == {"deal_id": "$response.body#/deal_id"}
    assert {"UploadDocument", "ListDocuments", "sign-sales-contract", "cancel"} <= set(links)


async def test_405_allow_names_every_method_of_the_path(stack: ApiStack) -> None:
    r = await stack.http(Role.ADMIN).request("OPTIONS", f"/api/deals/{NO_DEAL}/documents")
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}


async def test_report_dates_are_iso_only(stack: ApiStack) -> None:
    r = await stack.http(Role.ADMIN).get("/api/reports/funnel", params={"to": "0"})
    problem(r, 422, "YYYY-MM-DD")


async def test_several_rules_broken_are_all_named(stack: ApiStack) -> None:
    body = _mutate("vehicle.vin", "LFV2A2159P3012345")
    body["down_payment"] = "1.00"
    r = await stack.http(Role.SALES).post("/api/deals", json=body)
    detail = problem(r, 422, "check digit", "exceeds 80%")
    assert detail.count(";") >= 1


async def test_idempotent_create(stack: ApiStack) -> None:
    http = stack.http(Role.SALES)
    key = f"key-{uuid.uuid4().hex}"
    body = deal_body(dealer_id="dealer-idem")
    first = await http.post("/api/deals", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # the same body, spelled differently (order, spacing): the same deal, the same status
    respelled = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
    again = await http.post(
        "/api/deals",
        content=respelled,
        headers={"Idempotency-Key": key, "content-type": "application/json"},
    )
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    row = db.get_idempotency_key(stack.engine, "sales-01", key)
    assert row is not None and row.deal_id == first.json()["deal_id"]
    assert row.response_status == 201
    assert row.request_sha256 == request_digest(DealInput.model_validate(body))
    # the same key with another body: refused, naming the deal it started
    other = deal_body(dealer_id="dealer-idem", term_months=48)
    r = await http.post("/api/deals", json=other, headers={"Idempotency-Key": key})
    problem(r, 422, f"already used to start deal {first.json()['deal_id']}", "new key")
    # without a key, every POST is a new deal
    a = await http.post("/api/deals", json=body)
    b = await http.post("/api/deals", json=body)
    assert a.json()["deal_id"] != b.json()["deal_id"]
    # a bad key is refused
    r = await http.post("/api/deals", json=body, headers={"Idempotency-Key": "has space"})
    problem(r, 422, "Idempotency-Key")


async def test_concurrent_retries_with_one_key_start_one_deal(stack: ApiStack) -> None:
    http = stack.http(Role.SALES)
    key = f"race-{uuid.uuid4().hex}"
    body = deal_body(dealer_id="dealer-race")
    answers = await asyncio.gather(
        *(http.post("/api/deals", json=body, headers={"Idempotency-Key": key}) for _ in range(6))
    )
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
    assert len({r.json()["deal_id"] for r in answers}) == 1
    deal_id = answers[0].json()["deal_id"]
    assert (await http.get(f"/api/deals/{deal_id}")).status_code == 200
    assert db.get_idempotency_key(stack.engine, "sales-01", key) is not None


async def test_key_stored_by_a_request_that_died_is_repaired(stack: ApiStack) -> None:
    """The key was stored but the process died before the deal started: the retry
    starts that very deal instead of pointing at nothing."""
    key = f"died-{uuid.uuid4().hex}"
    body = deal_body(dealer_id="dealer-repair")
    deal_id = f"20261128-{uuid.uuid4().hex[:8]}"
    db.remember_idempotency_key(
        stack.engine,
        subject="sales-01",
        key=key,
        request_sha256=request_digest(DealInput.model_validate(body)),
        deal_id=deal_id,
        response_status=201,
        created_at=datetime.now(UTC),
    )
    http = stack.http(Role.SALES)
    assert (await http.get(f"/api/deals/{deal_id}")).status_code == 404
    r = await http.post("/api/deals", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 201, r.text
    assert r.json()["deal_id"] == deal_id
    assert (await http.get(f"/api/deals/{deal_id}")).status_code == 200
    # and once more: still the same deal, not a second start
    r = await http.post("/api/deals", json=body, headers={"Idempotency-Key": key})
    assert r.json()["deal_id"] == deal_id


async def test_failed_start_leaves_no_key(
    stack: ApiStack, dev_env: WorkflowEnvironment, database_url: str
) -> None:
    """Temporal refuses the start (here: a namespace that does not exist): the
    answer is an error, and the key is not left pointing at a deal that never was."""
    broken = Client(
        dev_env.client.service_client,
        namespace=f"missing-{uuid.uuid4().hex[:6]}",
        data_converter=dev_env.client.data_converter,
    )
    services = Services(
        settings=Settings(jwt_secret=SECRET, task_queue=stack.task_queue),
        client=broken,
        engine=stack.engine,
        lenders=stack.lenders,
        store=stack.store,
    )
    key = f"fail-{uuid.uuid4().hex}"
    async with (
        serve_async(create_app(services)) as url,
        httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http,
    ):
        r = await http.post(
            "/api/deals",
            json=deal_body(),
            headers={**stack.headers(Role.SALES), "Idempotency-Key": key},
        )
    assert r.status_code in (502, 503), r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert db.get_idempotency_key(stack.engine, "sales-01", key) is None


# --------------------------------------------------------------------------- GET /api/deals


def _projection(
    deal_id: str, dealer: str, stage: Stage, lender: str, updated: datetime, due: datetime | None
) -> ProjectionInput:
    return ProjectionInput(
        deal_id=deal_id,
        workflow_id=f"deal-{deal_id}",
        version=1,
        dealer_id=dealer,
        stage=stage,
        stage_entered_at=updated,
        lender_id=lender,
        vehicle_price=Decimal("150000.00"),
        amount_financed=Decimal("105000.00"),
        approved_amount=None,
        created_at=updated,
        updated_at=updated,
        next_due_at=due,
        pending_roles=["sales"],
    )


async def test_list_filters_and_pagination(stack: ApiStack) -> None:
    dealer = f"dealer-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    ids = [f"20261128-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    rows = [
        _projection(
            ids[0],
            dealer,
            Stage.DOCUMENTS,
            "acme-auto-finance",
            now - timedelta(1),
            now - timedelta(hours=2),
        ),
        _projection(
            ids[1],
            dealer,
            Stage.DOCUMENTS,
            "beta-motor-credit",
            now - timedelta(2),
            now + timedelta(days=3),
        ),
        _projection(
            ids[2],
            dealer,
            Stage.UNDERWRITING,
            "acme-auto-finance",
            now - timedelta(3),
            now - timedelta(days=1),
        ),
        _projection(ids[3], dealer, Stage.COMPLETED, "acme-auto-finance", now - timedelta(4), None),
        _projection(
            ids[4],
            dealer,
            Stage.CONTRACT,
            "beta-motor-credit",
            now - timedelta(5),
            now + timedelta(days=7),
        ),
    ]
    for p in rows:
        db.upsert_deal(stack.engine, p)
    http = stack.http(Role.AUDITOR)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"dealer": dealer, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await http.get("/api/deals", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        assert len(page["deals"]) <= 2
        seen += [d["deal_id"] for d in page["deals"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids  # newest change first, each exactly once

    async def ids_of(**params: Any) -> list[str]:
        r = await http.get("/api/deals", params={"dealer": dealer, **params})
        assert r.status_code == 200, r.text
        return [d["deal_id"] for d in r.json()["deals"]]

    assert await ids_of(stage="DOCUMENTS") == ids[:2]
    assert await ids_of(lender="beta-motor-credit") == [ids[1], ids[4]]
    assert await ids_of(overdue="true") == [ids[0], ids[2]]
    assert await ids_of(stage="UNDERWRITING", overdue="true") == [ids[2]]
    r = await http.get("/api/deals", params={"dealer": dealer, "limit": 1})
    first = r.json()["deals"][0]
    assert first["overdue"] is True and first["pending_roles"] == ["sales"]
    assert first["amount_financed"] == "105000.00"
    # Soonest deadline first, deals without one last.
    assert await ids_of(sort="due") == [ids[2], ids[0], ids[1], ids[4], ids[3]]


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"cursor": "garbage!"}, "invalid cursor"),
        ({"cursor": "WyJub3QgYSBkYXRlIiwgIngiXQ"}, "invalid cursor"),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"limit": 201}, "limit: Input should be less than or equal to 200"),
        ({"limit": "ten"}, "limit"),
        ({"stage": "NOPE"}, "stage: Input should be"),
        ({"overdue": "maybe"}, "overdue"),
        ({"sort": "customer_name"}, "sort: Input should be"),
    ],
)
async def test_list_bad_parameters_are_422(
    stack: ApiStack, params: dict[str, Any], fragment: str
) -> None:
    r = await stack.http(Role.SALES).get("/api/deals", params=params)
    problem(r, 422, fragment)


# --------------------------------------------------------------------------- GET /api/deals/{id}


@pytest.mark.parametrize("deal_id", [NO_DEAL, "no such deal", "x" * 300, "ü-deal", "-1", "a..b"])
async def test_unknown_deal_is_404(stack: ApiStack, deal_id: str) -> None:
    r = await stack.http(Role.SALES).get(f"/api/deals/{deal_id}")
    problem(r, 404, "does not exist")


# --------------------------------------------------------------------------- actions


async def test_every_role_boundary_of_the_permission_table(stack: ApiStack) -> None:
    """Each action × each role: a role outside the table is 403 before anything
    else; a role inside it gets past the check (to the unknown deal: 404)."""
    tokens = {role: stack.http(role) for role in Role}
    checked = 0
    for action in ACTION_ROUTES:
        allowed = rules.ACTION_ROLES[action] | {Role.ADMIN}
        for role, http in tokens.items():
            r = await http.post(
                f"/api/deals/{NO_DEAL}/actions/{action.value}", json=action_body(action.value)
            )
            if role in allowed:
                problem(r, 404, f"deal {NO_DEAL} does not exist")
            else:
                problem(r, 403, f"'{role.value}' may not {action.value}")
            checked += 1
    assert checked == len(ACTION_ROUTES) * len(Role)
    # auditors only read
    auditor = tokens[Role.AUDITOR]
    assert (await auditor.get("/api/deals")).status_code == 200
    problem(await auditor.post("/api/deals", json=deal_body()), 403)


async def test_a_token_with_several_roles_acts_with_the_one_that_may(stack: ApiStack) -> None:
    desk = HttpDesk(stack)
    await desk.start()
    token = mint_token(SECRET, "zhang", [Role.FINANCE, Role.SALES])
    r = await stack.http(token=token).post(
        f"/api/deals/{desk.deal_id}/actions/sign-sales-contract",
        json=action_body("sign-sales-contract"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"]["transitions"][-1]["actor"] == "zhang/sales"


async def test_action_success_records_the_token_actor(stack: ApiStack) -> None:
    desk = HttpDesk(stack)
    await desk.start()
    before = await desk.status()
    # an actor in the body is refused, not used
    r = await stack.http(token=stack.token(Role.SALES, "li")).post(
        f"/api/deals/{desk.deal_id}/actions/sign-sales-contract",
        json={**action_body("sign-sales-contract"), "actor": {"staff_id": "boss", "role": "admin"}},
    )
    problem(r, 422, "who acted comes from the bearer token")
    assert (await desk.status())["version"] == before["version"]
    r = await stack.http(token=stack.token(Role.SALES, "li")).post(
        f"/api/deals/{desk.deal_id}/actions/sign-sales-contract",
        json=action_body("sign-sales-contract"),
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["action"] == "sign-sales-contract" and result["accepted"] is True
    assert result["status"]["stage"] == "DOCUMENTS"
    assert result["status"]["transitions"][-1]["actor"] == "li/sales"
    # signing twice: the stage moved on
    r = await desk.do("sign-sales-contract", Role.SALES)
    problem(r, 409, "sign-sales-contract is not allowed in stage DOCUMENTS (only in CONTRACT)")


async def test_wrong_stage_409_and_invalid_422_change_nothing(stack: ApiStack) -> None:
    desk = HttpDesk(stack)
    await desk.start()
    before = await desk.status()
    cases: list[tuple[str, Role, dict[str, Any], int, str]] = [
        (
            "confirm-down-payment",
            Role.FINANCE,
            {},
            409,
            "confirm-down-payment is not allowed in stage CONTRACT (only in DOWN_PAYMENT)",
        ),
        ("record-plate", Role.REGISTRATION, {}, 409, "not allowed in stage CONTRACT"),
        (
            "sign-sales-contract",
            Role.SALES,
            {"down_payment": "30000.00"},
            422,
            "the contract's down payment 30,000.00 does not match 45,000.00",
        ),
        (
            "sign-sales-contract",
            Role.SALES,
            {"copies_routed_to": ["finance"]},
            422,
            "the three contract copies must be routed; missing: information_clerk, "
            "sales_consultant",
        ),
        ("sign-sales-contract", Role.SALES, {"contract_no": ""}, 422, "contract_no"),
        (
            "sign-sales-contract",
            Role.SALES,
            {"fees": [{"name": "x", "amount": "-1"}]},
            422,
            "fees.0.amount",
        ),
        ("cancel", Role.SALES, {"reason": ""}, 422, "reason: String should have at least 1"),
    ]
    for action, role, changes, status, fragment in cases:
        r = await desk.do(action, role, **changes)
        problem(r, status, fragment)
    r = await stack.http(Role.SALES).post(
        f"/api/deals/{desk.deal_id}/actions/sign-sales-contract", json={"contract_no": "C1"}
    )
    problem(r, 422, "copies_routed_to: Field required", "down_payment: Field required")
    r = await stack.http(Role.SALES).post(
        f"/api/deals/{desk.deal_id}/actions/cancel",
        content=b"[",
        headers={"content-type": "application/json"},
    )
    problem(r, 422, "not valid JSON")
    after = await desk.status()
    assert after["version"] == before["version"] and after["stage"] == "CONTRACT"
    assert after["transitions"] == before["transitions"]


async def test_steps_on_the_lenders_conditions_over_http(stack: ApiStack) -> None:
    """answer-, clear-, waive-stipulation and reject-stipulation-document: 200
    with the new status (the conditions in it), 403 for a role other than
    credit, 409 for a step that does not fit where the condition is, 422 for
    an unknown condition or a missing reason; a refusal changes nothing."""
    desk = HttpDesk(stack)
    await desk.start()
    conditional = {
        "decision": "conditional",
        "stipulations": [
            {"code": "EMPLOYMENT_LETTER", "description": "employer's letter"},
            {"code": "GUARANTOR", "description": "add a guarantor", "kind": "condition"},
        ],
    }
    await stack.script(desk.deal_id, {"lenders": {"acme-auto-finance": [conditional]}})
    await desk.ok("sign-sales-contract", Role.SALES)
    await desk.upload_all()
    await desk.ok("submit-application", Role.CREDIT)
    before = await desk.wait_until(
        lambda st: st["stage"] == "DOCUMENTS" and bool(st["stipulations"]), "the conditions"
    )
    assert [(i["code"], i["kind"], i["status"]) for i in before["stipulations"]] == [
        ("EMPLOYMENT_LETTER", "document", "open"),
        ("GUARANTOR", "condition", "open"),
    ]
    problem(
        await desk.do("waive-stipulation", Role.SALES, code="GUARANTOR"),
        403,
        "role 'sales' may not waive-stipulation; allowed: admin, credit",
    )
    problem(
        await desk.do("clear-stipulation", Role.CREDIT, code="GUARANTOR"),
        409,
        "GUARANTOR is open: nothing answers it yet",
    )
    problem(
        await desk.do("reject-stipulation-document", Role.CREDIT, code="PAYSLIPS"),
        422,
        "PAYSLIPS is not a condition of the lender's decision on submission 1 "
        "(conditions: EMPLOYMENT_LETTER, GUARANTOR)",
    )
    r = await stack.http(Role.CREDIT).post(
        f"/api/deals/{desk.deal_id}/actions/waive-stipulation", json={"code": "GUARANTOR"}
    )
    problem(r, 422, "reason: Field required")
    assert (await desk.status())["version"] == before["version"], "nothing applied"

    # The CLI, through the API, with the example payload: the status it prints
    # lists the conditions.
    credit = ("--api", stack.api_url, "--token", stack.token(Role.CREDIT))
    payload = str(EXAMPLES / "actions" / "answer-stipulation.json")
    code, out, err = await _cli(*credit, "act", desk.deal_id, "answer-stipulation", payload)
    assert code == 0, err
    assert "answer-stipulation: done" in out and "Conditions" in out
    assert "GUARANTOR" in out and "received" in out
    answered = await desk.status()
    guarantor = answered["stipulations"][1]
    assert (guarantor["status"], guarantor["note"]) == (
        "received",
        action_body("answer-stipulation")["note"],
    )
    assert [c["by"] for c in guarantor["changes"]] == [
        "acme-auto-finance/lender",
        "credit-01/credit",
    ]
    waived = await desk.ok("waive-stipulation", Role.CREDIT, code="EMPLOYMENT_LETTER")
    assert waived["stage"] == "UNDERWRITING", "nothing open: resubmitted"
    assert waived["stipulations"][0]["status"] == "waived"
    assert {i["answered_in"] for i in waived["stipulations"]} == {2}


async def test_money_rules_speak_the_clerks_language(stack: ApiStack) -> None:
    desk = HttpDesk(stack)
    await desk.start()
    st = await desk.to_down_payment()
    version = st["version"]
    r = await desk.do("confirm-down-payment", Role.FINANCE, amount="30000.00")
    assert problem(r, 422) == "down payment 30,000.00 does not match the contract's 45,000.00"
    problem(await desk.do("record-invoice", Role.FINANCE), 409, "only in INVOICING")
    problem(
        await desk.do("accept-counter-offer", Role.CREDIT),
        409,
        "accept-counter-offer is not allowed in stage DOWN_PAYMENT",
    )
    assert (await desk.status())["version"] == version
    st = await desk.ok("confirm-down-payment", Role.FINANCE)
    assert st["stage"] == "INVOICING"
    problem(
        await desk.do("record-invoice", Role.FINANCE, amount="149000.00"),
        422,
        "invoice amount 149,000.00 does not match 150,000.00",
    )
    st = await desk.ok("record-invoice", Role.FINANCE)
    assert st["stage"] == "INSURANCE"
    problem(
        await desk.do("record-insurance", Role.INSURANCE, first_beneficiary="Someone"),
        422,
        "first beneficiary must be the lender 'Acme Auto Finance Co., Ltd.'",
    )
    problem(
        await desk.do("record-insurance", Role.INSURANCE, cover_amount="1000.00"),
        422,
        "cover 1,000.00 is below the amount financed 105,000.00",
    )
    r = await desk.do("cancel", Role.SALES, reason="customer withdrew")
    assert r.status_code == 200 and r.json()["status"]["stage"] == "CANCELLED"
    # "the deal is CANCELLED; ..." while it undoes its steps, "deal … is
    # closed; ..." once it has: its bookkeeping is quick enough for either.
    problem(
        await desk.do("record-insurance", Role.INSURANCE), 409, "no further actions are possible"
    )


async def test_unknown_deal_and_unknown_action(stack: ApiStack) -> None:
    http = stack.http(Role.ADMIN)
    problem(
        await http.post(f"/api/deals/{NO_DEAL}/actions/cancel", json={"reason": "x"}),
        404,
        f"deal {NO_DEAL} does not exist",
    )
    problem(
        await http.post(f"/api/deals/{NO_DEAL}/actions/approve-everything", json={}),
        404,
        "unknown action 'approve-everything'",
        "sign-sales-contract",
    )
    problem(
        await http.post(
            f"/api/deals/{NO_DEAL}/actions/record-document", json=action_body("record-document")
        ),
        404,
        f"POST /api/deals/{NO_DEAL}/documents",
    )
    problem(await stack.http().post(f"/api/deals/{NO_DEAL}/actions/nope", json={}), 401)


# --------------------------------------------------------------------------- operations, docs


async def test_ready_only_while_temporal_the_database_and_the_store_answer(
    stack: ApiStack, tmp_path: Path
) -> None:
    ready = await stack.http().get("/readyz")
    assert (ready.status_code, ready.json()) == (
        200,
        {
            "status": "ready",
            "checks": {"temporal": "ok", "database": "ok", "document_store": "ok"},
        },
    )
    # The database gone (a server nobody listens on): 503 naming it, and only it.
    gone = db.make_engine(f"postgresql+psycopg://dealflow@127.0.0.1:{free_port()}/dealflow")
    services = dataclasses.replace(stack.services, engine=gone)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        unready = await http.get("/readyz")
        alive = await http.get("/healthz")
    assert unready.status_code == 503
    assert unready.json()["checks"] == {
        "temporal": "ok",
        "database": "unavailable",
        "document_store": "ok",
    }
    assert "127.0.0.1" not in unready.text  # which, never why: the log has the reason
    assert alive.status_code == 200


async def test_health_metrics_and_openapi(stack: ApiStack) -> None:
    http = stack.http()
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    # A deal read (this test's own: tests may run in any order), labelled by its template.
    await stack.http(Role.SALES).get("/api/deals/20261128-3f9a0c1e")
    r = await http.get("/metrics")
    assert r.status_code == 200 and "dealflow_actions_total" in r.text
    assert 'route="/api/deals/{deal_id}"' in r.text  # templates, never concrete ids
    spec = (await http.get("/openapi.json")).json()
    for action in ACTION_ROUTES:
        op = spec["paths"][f"/api/deals/{{deal_id}}/actions/{action.value}"]["post"]
        assert {"200", "401", "403", "404", "409", "422"} <= set(op["responses"])
        example = json.loads((EXAMPLES / "actions" / f"{action.value}.json").read_text())
        body = op["requestBody"]["content"]["application/json"]
        assert body["examples"]["example"]["value"] == example
        assert "actor" not in json.dumps(
            spec["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"]
        )
        for code in ("401", "403", "404", "409", "422"):
            assert "application/problem+json" in op["responses"][code]["content"]
    create = spec["paths"]["/api/deals"]["post"]
    example = create["requestBody"]["content"]["application/json"]["examples"]["deal"]["value"]
    assert example == json.loads((EXAMPLES / "deal.json").read_text())
    assert "ProblemDetail" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "staffToken" in spec["components"]["securitySchemes"]
    upload = spec["paths"]["/api/deals/{deal_id}/documents"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Swagger UI from the vendored package: the docs work offline, no CDN.
    assert "https://" not in docs.text
    bundle = await http.get("/docs/static/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert (await http.get("/docs/openapi.json")).json()["info"]["title"] == "DealFlow API"


async def test_production_keeps_metrics_and_docs_off_the_public_listener(stack: ApiStack) -> None:
    production = dataclasses.replace(
        stack.services,
        settings=stack.services.settings.model_copy(update={"env": "production"}),
    )
    public = create_app(production)
    async with (
        serve_async(public) as public_url,
        serve_async(create_ops_app(production, public)) as ops_url,
        httpx.AsyncClient(trust_env=False, timeout=10) as http,
    ):
        for path in ("/metrics", "/docs", "/docs/static/swagger-ui.css"):
            assert (await http.get(public_url + path)).status_code == 404, path
        assert (await http.get(public_url + "/openapi.json")).status_code == 200
        assert (await http.get(public_url + "/healthz")).status_code == 200
        scrape = await http.get(ops_url + "/metrics")
        assert scrape.status_code == 200 and "dealflow_actions_total" in scrape.text
        docs = await http.get(ops_url + "/docs")
        assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
        schema = (await http.get(ops_url + "/docs/openapi.json")).json()
        assert "/api/deals" in schema["paths"]


async def test_unknown_path_is_a_problem(stack: ApiStack) -> None:
    problem(await stack.http(Role.SALES).get("/api/nothing-here"), 404, "no such endpoint")
    action = Action.CANCEL
    assert action in ACTION_ROUTES


# --------------------------------------------------------------------------- starter.py --api


async def _cli(*argv: str) -> tuple[int, str, str]:
    """`starter.main(argv)` in a thread: in API mode it makes blocking HTTP calls
    to the app served on this loop."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return starter.main(list(argv))

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), " ".join(err.getvalue().split())


async def test_starter_as_a_thin_client_of_the_api(stack: ApiStack, tmp_path: Path) -> None:
    code, out, _ = await _cli(
        "--json", "token", "--sub", "li", "--role", "sales", "--role", "credit", "--ttl", "60"
    )
    assert code == 0
    minted = json.loads(out)
    principal = Authenticator(get_settings().jwt_secret).decode(minted["token"])
    assert principal.sub == "li" and principal.roles == (Role.SALES, Role.CREDIT)
    code, _, err = await _cli("token", "--sub", "li", "--role", "boss")
    assert code == 2 and "boss" in err

    api = ("--api", stack.api_url)
    sales = (*api, "--token", stack.token(Role.SALES, "li"))
    code, out, err = await _cli(
        *sales,
        "--json",
        "start",
        str(EXAMPLES / "deal.json"),
        "--idempotency-key",
        f"cli-{uuid.uuid4().hex}",
    )
    assert code == 0, err
    deal_id = json.loads(out)["deal_id"]
    code, out, err = await _cli(
        *sales,
        "act",
        deal_id,
        "sign-sales-contract",
        str(EXAMPLES / "actions" / "sign-sales-contract.json"),
    )
    assert code == 0, err
    assert "sign-sales-contract: done" in out and "DOCUMENTS" in out
    scan = tmp_path / "income.pdf"
    scan.write_bytes(sample_pdf("income statement"))
    code, out, err = await _cli(*sales, "upload", deal_id, "proof_of_income", str(scan))
    assert code == 0, err
    assert f"as {deal_id}-d1" in out
    code, out, err = await _cli(*sales, "--json", "status", deal_id)
    assert code == 0 and json.loads(out)["stage"] == "DOCUMENTS"
    code, out, err = await _cli(*sales, "list", "--limit", "5")
    assert code == 0 and "deal" in out and "stage" in out
    code, out, err = await _cli(*sales, "--json", "list", "--stage", "DOCUMENTS", "--limit", "200")
    assert code == 0 and deal_id in [d["deal_id"] for d in json.loads(out)["deals"]]

    # refusals: the API's status picks the exit code, its detail is printed as is
    finance = (*api, "--token", stack.token(Role.FINANCE))
    code, _, err = await _cli(*finance, "cancel", deal_id, "--reason", "x")
    assert code == 5 and "rejected (403): role 'finance' may not cancel" in err
    code, _, err = await _cli(
        *finance,
        "act",
        deal_id,
        "confirm-down-payment",
        str(EXAMPLES / "actions" / "confirm-down-payment.json"),
    )
    assert code == 3 and "not allowed in stage DOCUMENTS" in err
    code, _, err = await _cli(
        *sales, "act", NO_DEAL, "cancel", str(EXAMPLES / "actions" / "cancel.json")
    )
    assert code == 4 and "does not exist" in err
    code, _, err = await _cli(
        *sales, "upload", deal_id, "id_card", str(scan), "--id-number", "110105198803120015"
    )
    assert code == 2 and "applicant ID number is not valid" in err
    code, _, err = await _cli(*api, "--token", "not-a-token", "status", deal_id)
    assert code == 6 and "rejected (401)" in err
    code, out, err = await _cli(
        *sales, "--json", "cancel", deal_id, "--reason", "customer withdrew"
    )
    assert code == 0 and json.loads(out)["status"]["stage"] == "CANCELLED"
