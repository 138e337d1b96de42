"""New deal on the desk: the form for `POST /api/deals`, checked with the
rules' own words while the clerk types, and a submit that starts one deal
however often it is sent. Over HTTP against the real API app and worker."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow.config import DEV_JWT_SECRET
from dealflow.models import Role
from dealflow.samples import example_deal
from dealflow.storage import db
from tests.support.api_stack import ApiStack, api_stack
from tests.support.desk_browser import hidden_value, signed_in

pytestmark = pytest.mark.e2e

# examples/deal.json's applicant ID with its check digit changed.
BAD_CHECKSUM_ID = "110105198803120015"


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(
        dev_env.client, database_url, tmp_session, secret=DEV_JWT_SECRET
    ) as running:
        yield running


def form_fields(dealer_id: str, **changes: str) -> dict[str, Any]:
    """examples/deal.json as the form's flat fields (the body's dotted paths)."""
    deal = example_deal()
    applicant, spouse, vehicle = deal.customer.applicant, deal.customer.spouse, deal.vehicle
    assert spouse is not None
    fields: dict[str, Any] = {
        "dealer_id": dealer_id,
        "customer.applicant.full_name": applicant.full_name,
        "customer.applicant.id_number": applicant.id_number,
        "customer.applicant.phone": applicant.phone,
        "customer.applicant.monthly_income": "18,000.00",  # as people write it
        "customer.applicant.employer": applicant.employer,
        "customer.applicant.married": "true",
        "customer.spouse.full_name": spouse.full_name,
        "customer.spouse.id_number": spouse.id_number,
        "customer.spouse.phone": spouse.phone,
        "vehicle.vin": vehicle.vin,
        "vehicle.make": vehicle.make,
        "vehicle.model": vehicle.model,
        "vehicle.condition": vehicle.condition,
        "vehicle.price": str(vehicle.price),
        "down_payment": str(deal.down_payment),
        "term_months": str(deal.term_months),
        "product": deal.product.value,
        "lender_ids": list(deal.lender_ids),
    }
    fields.update(changes)
    return fields


async def open_form(client: httpx.AsyncClient) -> tuple[str, str]:
    """The form's CSRF token and its idempotency key."""
    page = await client.get("/desk/deals/new")
    assert page.status_code == 200, page.text
    return hidden_value(page.text, "csrf"), hidden_value(page.text, "form_key")


def errors_beside(page: str, field: str) -> str:
    """The text of the error slot of `field` (the body's dotted path)."""
    slot = "err-" + field.replace(".", "-")
    found = re.search(rf'<div id="{slot}"[^>]*>(.*?)</div>', page, re.S)
    assert found, f"the page has an error slot for {field}"
    return html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).strip()


async def deals_of(stack: ApiStack, dealer_id: str) -> list[str]:
    listed = await stack.http(Role.ADMIN).get("/api/deals", params={"dealer": dealer_id})
    assert listed.status_code == 200, listed.text
    return [deal["deal_id"] for deal in listed.json()["deals"]]


async def wait_for_deals(stack: ApiStack, dealer_id: str, count: int) -> list[str]:
    """The read model follows a started deal a moment later."""
    for _ in range(100):
        found = await deals_of(stack, dealer_id)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    return await deals_of(stack, dealer_id)


async def no_deal_started(stack: ApiStack, dealer_id: str) -> bool:
    # A refused form starts nothing; a started deal would be listed within this.
    await asyncio.sleep(1.0)
    return await deals_of(stack, dealer_id) == []


async def test_a_deal_started_through_the_form_runs(stack: ApiStack) -> None:
    sales = await signed_in(stack, "li.sales", "sales")
    csrf, form_key = await open_form(sales)
    dealer = f"dealer-form-{uuid.uuid4().hex[:6]}"
    response = await sales.post(
        "/desk/deals/new", data={**form_fields(dealer), "csrf": csrf, "form_key": form_key}
    )
    assert response.status_code == 303, response.text
    deal_id = response.headers["location"].removeprefix("/desk/deals/")
    status = await stack.http(Role.AUDITOR).get(f"/api/deals/{deal_id}")
    assert status.status_code == 200 and status.json()["stage"] == "CONTRACT"
    assert await wait_for_deals(stack, dealer, 1) == [deal_id]
    row = db.get_deal(stack.engine, deal_id)
    assert row is not None and row.customer_name == "Wang Fang"
    assert row.amount_financed == example_deal().amount_financed


async def test_a_bad_id_checksum_and_a_loan_over_the_cap_are_refused_beside_their_fields(
    stack: ApiStack,
) -> None:
    sales = await signed_in(stack, "li.sales", "sales")
    csrf, form_key = await open_form(sales)
    dealer = f"dealer-bad-{uuid.uuid4().hex[:6]}"
    typed = form_fields(
        dealer, **{"customer.applicant.id_number": BAD_CHECKSUM_ID, "down_payment": "20000.00"}
    )
    response = await sales.post(
        "/desk/deals/new", data={**typed, "csrf": csrf, "form_key": form_key}
    )
    assert response.status_code == 422
    page = response.text
    assert errors_beside(page, "customer.applicant.id_number") == (
        "applicant ID number is not valid: its check character does not match the other 17 "
        "digits (one of them is mistyped)"
    )
    assert errors_beside(page, "down_payment") == (
        "amount financed 130,000.00 exceeds 80% of the price 150,000.00 (120,000.00) allowed "
        "for new_car; the down payment must be at least 30,000.00"
    )
    assert errors_beside(page, "vehicle.vin") == ""
    # What was typed is kept, and the same key still starts the corrected deal.
    assert f'value="{BAD_CHECKSUM_ID}"' in page and 'value="20000.00"' in page
    assert 'value="18,000.00"' in page
    assert hidden_value(page, "form_key") == form_key
    assert await no_deal_started(stack, dealer)
    assert db.get_idempotency_key(stack.engine, "li.sales", f"desk:li.sales:{form_key}") is None


async def test_the_same_form_sent_twice_starts_one_deal(stack: ApiStack) -> None:
    sales = await signed_in(stack, "li.sales", "sales")
    csrf, form_key = await open_form(sales)
    dealer = f"dealer-twice-{uuid.uuid4().hex[:6]}"
    sent = {**form_fields(dealer), "csrf": csrf, "form_key": form_key}
    first, second = await asyncio.gather(
        sales.post("/desk/deals/new", data=sent), sales.post("/desk/deals/new", data=sent)
    )
    third = await sales.post("/desk/deals/new", data=sent)
    assert {first.status_code, second.status_code, third.status_code} == {303}
    locations = {r.headers["location"] for r in (first, second, third)}
    assert len(locations) == 1
    await asyncio.sleep(0.5)
    assert len(await wait_for_deals(stack, dealer, 1)) == 1

    # Back in the browser, changed, sent again: the key is spent on another body.
    changed = {**sent, "vehicle.make": "Skoda"}
    refused = await sales.post("/desk/deals/new", data=changed)
    assert refused.status_code == 422
    started = locations.pop().removeprefix("/desk/deals/")
    assert f"This form already started a deal (deal {started}) with other details" in (
        html.unescape(refused.text)
    )
    fresh_key = hidden_value(refused.text, "form_key")
    assert fresh_key != form_key
    again = await sales.post("/desk/deals/new", data={**changed, "form_key": fresh_key})
    assert again.status_code == 303 and again.headers["location"] != f"/desk/deals/{started}"


async def test_a_role_that_may_not_start_deals_sees_no_form(stack: ApiStack) -> None:
    credit = await signed_in(stack, "wang.credit", "credit")
    page = await credit.get("/desk/deals/new")
    assert page.status_code == 403
    assert "Your role may not start deals." in page.text and "Sales consultant" in page.text
    assert 'action="/desk/deals/new"' not in page.text and 'name="form_key"' not in page.text
    dealer = f"dealer-credit-{uuid.uuid4().hex[:6]}"
    csrf = hidden_value((await credit.get("/desk/")).text, "csrf")
    posted = await credit.post(
        "/desk/deals/new", data={**form_fields(dealer), "csrf": csrf, "form_key": "k" * 24}
    )
    assert posted.status_code == 403
    assert await no_deal_started(stack, dealer)


async def test_a_post_without_the_csrf_token_is_refused(stack: ApiStack) -> None:
    sales = await signed_in(stack, "li.sales", "sales")
    _, form_key = await open_form(sales)
    dealer = f"dealer-csrf-{uuid.uuid4().hex[:6]}"
    response = await sales.post(
        "/desk/deals/new", data={**form_fields(dealer), "form_key": form_key}
    )
    assert response.status_code == 403 and "Nothing was changed" in response.text
    assert await no_deal_started(stack, dealer)


async def test_the_preview_computes_the_loan_ratio_and_names_each_problem(stack: ApiStack) -> None:
    sales = await signed_in(stack, "li.sales", "sales")
    csrf, form_key = await open_form(sales)
    headers = {"HX-Request": "true"}
    typing = {
        "csrf": csrf,
        "form_key": form_key,
        "vehicle.price": "150000",
        "down_payment": "45,000",
        "product": "new_car",
        "vehicle.condition": "new",
        "lender_ids": ["acme-auto-finance"],
    }
    fine = await sales.post("/desk/deals/new/preview", data=typing, headers=headers)
    assert fine.status_code == 200, fine.text
    text = html.unescape(fine.text)
    assert re.search(r'data-testid="loan-ratio">70\.0%', text)
    assert re.search(r'data-testid="amount-financed">CN¥105,000\.00<', text)
    assert re.search(r'data-testid="max-financed">CN¥120,000\.00<', text)
    # Fields not typed yet are not nagged about; every slot is refreshed out of band.
    assert errors_beside(text, "customer.applicant.full_name") == ""
    assert 'id="err-vehicle-vin" class="field-errors" aria-live="polite" hx-swap-oob="true"' in text

    over = await sales.post(
        "/desk/deals/new/preview",
        data={
            **typing,
            "down_payment": "10000",
            "customer.applicant.id_number": BAD_CHECKSUM_ID,
            "vehicle.vin": "LFV2A2158P3012346",
        },
        headers=headers,
    )
    text = html.unescape(over.text)
    assert re.search(r'data-testid="loan-ratio" class="error">93\.3%', text)
    assert "the down payment must be at least 30,000.00" in errors_beside(text, "down_payment")
    assert "check character does not match" in errors_beside(text, "customer.applicant.id_number")
    assert errors_beside(text, "vehicle.vin") == (
        "VIN LFV2A2158P3012346 fails its check digit (position 9 should be X)"
    )
