"""The deal page over HTTP against the real API app, worker and lender
simulator: what it shows, uploads through its form, actions through the forms
generated from their models, refusals that change nothing, the live fragment
and the audit timeline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow import client as deals
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.config import DEV_JWT_SECRET
from dealflow.models import Actor, DealInput, DealPolicy, DocumentKind, Role
from dealflow.samples import (
    dealer_today,
    example_deal,
    funding_document,
    sample_documents,
    sample_pdf,
)
from tests.support.api_stack import ApiStack, HttpDesk, api_stack, multipart_fields
from tests.support.desk import browser, sign_in
from tests.support.servers import serve_async
from tests.support.stack import BIN, codec_data_converter

pytestmark = pytest.mark.e2e

# What a clerk types into the sign-sales-contract form (examples/actions/).
CONTRACT_FORM: dict[str, str | list[str]] = {
    "contract_no": "SC-2026-0001",
    "fees.0.name": "licence plate service",
    "fees.0.amount": "500.00",
    "fees.1.name": "GPS installation",
    "fees.1.amount": "1200.00",
    "fees.2.name": "",
    "fees.2.amount": "",
    "accessories": "floor mats\ndash camera",
    "copies_routed_to": ["information_clerk", "finance", "sales_consultant"],
    "down_payment": "45000.00",
}


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(
        dev_env.client, database_url, tmp_session, secret=DEV_JWT_SECRET
    ) as running:
        yield running


async def new_deal(stack: ApiStack) -> HttpDesk:
    desk = HttpDesk(stack)
    await desk.start()
    await desk.wait_stage("CONTRACT")
    return desk


async def signed_in(
    stack: ApiStack, role: str, staff_id: str | None = None
) -> tuple[httpx.AsyncClient, str]:
    client = browser(stack)
    csrf = await sign_in(client, staff_id or f"{role}.desk", role)
    return client, csrf


def section(html: str, section_id: str) -> str:
    """The HTML of the element with `section_id` (up to its closing </section>)."""
    start = html.index(f'id="{section_id}"')
    return html[start : html.index("</section>", start)]


async def test_the_page_shows_stages_money_customer_checklist_and_links(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    sales, _ = await signed_in(stack, "sales")
    page = await sales.get(f"/desk/deals/{desk.deal_id}")
    assert page.status_code == 200, page.text
    html = page.text
    bar = section(html, "deal-stage")
    assert re.search(
        r'<li class="step-current" aria-current="step">\s*<span class="stage-name">Sales contract',
        bar,
    )
    for stage in ("Documents", "Follow-up", "Completed", "Cancelled", "Declined", "Expired"):
        assert stage in bar
    assert "sign the sales contract" in bar, "what the deal waits for, and whose it is"
    money = section(html, "deal-money")
    assert "150,000.00" in money and "105,000.00" in money and "45,000.00" in money
    assert re.search(r'data-testid="ltv">70\.0%', money), "105,000 of 150,000"
    parties = section(html, "deal-parties")
    assert "Wang Fang" in parties and "Li Wei" in parties
    assert "110105198803120014" not in html and "••••••••••••••0014" in parties
    assert "LFV2A2158P3012345" in parties and "Volkswagen" in parties
    documents = section(html, "deal-documents")
    assert "Resident ID card" in documents and "Spouse" in documents
    assert 'data-testid="checklist-applicant"' in documents
    assert f"/workflows/deal-{desk.deal_id}" in html and ":8233/namespaces/default" in html
    assert f'hx-get="/desk/deals/{desk.deal_id}/timeline"' in html
    assert 'hx-trigger="every 2s"' in html
    # The action's form, generated from its model: labels, types, examples, required.
    actions = section(html, "deal-actions")
    assert 'id="form-sign-sales-contract"' in actions and 'hx-preserve="true"' in actions
    assert re.search(
        r'name="down_payment" type="number"[^>]*placeholder="45000.00"[^>]*step="0.01"', actions
    )
    assert re.search(r'name="contract_no" type="text"[^>]*required', actions)
    assert 'type="checkbox" id="f-sign-sales-contract-copies_routed_to-1"' in actions
    assert 'name="fees.2.amount"' in actions
    # My work links to the action's panel on this page (the read model follows
    # the deal a moment later).
    link = f'href="/desk/deals/{desk.deal_id}#action-sign-sales-contract"'
    for _ in range(50):
        if link in (await sales.get("/desk/")).text:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("My work links to the deal page's action")
    assert 'id="action-sign-sales-contract"' in actions

    auditor, _ = await signed_in(stack, "auditor")
    audited = (await auditor.get(f"/desk/deals/{desk.deal_id}")).text
    assert "Wang Fang" not in audited and "0014" not in audited
    assert 'data-testid="customer-hidden"' in audited
    assert 'id="form-sign-sales-contract"' not in audited, "an auditor acts on nothing"
    assert "it is for: Sales consultant." in section(audited, "deal-actions")


async def test_an_action_posted_through_its_generated_form_moves_the_deal(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    sales, csrf = await signed_in(stack, "sales")
    response = await sales.post(
        f"/desk/deals/{desk.deal_id}/actions/sign-sales-contract",
        data={"csrf": csrf, **CONTRACT_FORM},
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == (
        f"/desk/deals/{desk.deal_id}?done=sign-sales-contract#deal-actions"
    )
    status = await desk.status()
    assert status["stage"] == "DOCUMENTS"
    assert status["money"]["fees"] == "1700.00"
    page = (await sales.get(response.headers["location"])).text
    assert "sign-sales-contract: applied." in page
    assert 'data-testid="deal-stage">Documents' in page


async def test_a_wrong_role_is_refused_with_its_detail_and_nothing_changes(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    before = await desk.status()
    finance, csrf = await signed_in(stack, "finance")
    page = (await finance.get(f"/desk/deals/{desk.deal_id}")).text
    assert 'id="form-sign-sales-contract"' not in page, "finance sees the action, not a form"
    assert "sign the sales contract" in section(page, "deal-actions")
    refused = await finance.post(
        f"/desk/deals/{desk.deal_id}/actions/sign-sales-contract",
        data={"csrf": csrf, **CONTRACT_FORM},
    )
    assert refused.status_code == 403
    assert "role &#39;finance&#39; may not sign-sales-contract" in refused.text
    after = await desk.status()
    assert (after["stage"], after["version"]) == (before["stage"], before["version"])


async def test_a_wrong_stage_is_refused_with_its_detail_and_nothing_changes(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    await desk.ok("sign-sales-contract", Role.SALES)
    before = await desk.status()
    sales, csrf = await signed_in(stack, "sales")
    refused = await sales.post(
        f"/desk/deals/{desk.deal_id}/actions/sign-sales-contract",
        data={"csrf": csrf, **CONTRACT_FORM},
    )
    assert refused.status_code == 409
    actions = section(refused.text, "deal-actions")
    assert "not allowed in stage DOCUMENTS" in actions
    assert "no longer possible" in actions, "the form says so instead of posting again"
    after = await desk.status()
    assert after["version"] == before["version"]


async def test_a_field_error_is_shown_beside_its_field_with_what_was_typed(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    sales, csrf = await signed_in(stack, "sales")
    refused = await sales.post(
        f"/desk/deals/{desk.deal_id}/actions/sign-sales-contract",
        data={"csrf": csrf, **CONTRACT_FORM, "down_payment": "lots", "fees.1.amount": "-1"},
    )
    assert refused.status_code == 422
    form = section(refused.text, "deal-actions")
    assert re.search(r'data-field-error="down_payment">[^<]*decimal', form)
    assert 'data-field-error="fees.1.amount"' in form
    assert 'value="lots"' in form and 'value="SC-2026-0001"' in form, "what was typed stays"
    assert re.search(r'value="finance" checked', form)
    assert (await desk.status())["stage"] == "CONTRACT"


async def test_a_post_without_the_csrf_token_is_refused(stack: ApiStack) -> None:
    desk = await new_deal(stack)
    sales, _ = await signed_in(stack, "sales")
    refused = await sales.post(
        f"/desk/deals/{desk.deal_id}/actions/sign-sales-contract",
        data={"csrf": "forged", **CONTRACT_FORM},
    )
    assert refused.status_code == 403 and "Nothing was changed" in refused.text
    doc = sample_documents(desk.deal_id, desk.deal, dealer_today())[0]
    upload = await sales.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data=multipart_fields(doc),
        files={"file": (doc["file_name"], doc["data"], "image/jpeg")},
    )
    assert upload.status_code == 403 and "Nothing was changed" in upload.text
    status = await desk.status()
    assert status["stage"] == "CONTRACT" and status["documents"] == []


async def test_sales_uploads_through_the_desk_form_and_downloads_it(stack: ApiStack) -> None:
    desk = await new_deal(stack)
    sales, csrf = await signed_in(stack, "sales")
    page = (await sales.get(f"/desk/deals/{desk.deal_id}?kind=id_card&party=spouse")).text
    upload_section = section(page, "upload")
    assert 'enctype="multipart/form-data"' in upload_section
    assert 'hx-encoding="multipart/form-data"' in upload_section
    assert '<progress id="upload-progress"' in upload_section
    assert 'data-progress="upload-progress"' in upload_section
    assert re.search(r'<option value="spouse" selected>', upload_section), (
        "the item's link fills it"
    )
    assert '<script src="/desk/static/desk.js"' in page
    doc = sample_documents(desk.deal_id, desk.deal, dealer_today())[0]
    response = await sales.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data={"csrf": csrf, **multipart_fields(doc)},
        files={"file": (doc["file_name"], doc["data"], "image/jpeg")},
    )
    assert response.status_code == 303, response.text
    shown = (await sales.get(response.headers["location"])).text
    assert f"{doc['file_name']}: recorded as id_card (applicant)." in shown
    documents = section(shown, "deal-documents")
    link = re.search(rf'href="(/desk/deals/{desk.deal_id}/documents/[^"]+)"', documents)
    assert link and doc["file_name"] in documents
    download = await sales.get(link.group(1))
    assert download.status_code == 200 and download.content == doc["data"]
    finance, finance_csrf = await signed_in(stack, "finance")
    assert (await finance.get(link.group(1))).status_code == 403
    refused = await finance.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data={"csrf": finance_csrf, **multipart_fields(doc)},
        files={"file": (doc["file_name"], doc["data"], "image/jpeg")},
    )
    assert refused.status_code == 403
    assert "may not record-document of id_card" in section(refused.text, "upload")
    assert len((await desk.status())["documents"]) == 1


async def test_the_funding_package_is_shown_and_uploaded_by_each_team_through_the_desk(
    stack: ApiStack,
) -> None:
    """In LOAN_CONTRACT the documents region lists the funding package: what
    is missing, who uploads it (an upload link for that team only); an upload
    through the form shows its sha256 prefix, uploader and time."""
    desk = HttpDesk(stack)
    await desk.start()
    await desk.to_down_payment()
    await desk.ok("confirm-down-payment", Role.FINANCE)
    await desk.ok("record-invoice", Role.FINANCE)
    legal = stack.lenders["acme-auto-finance"].legal_name
    await desk.ok("record-insurance", Role.INSURANCE, first_beneficiary=legal)
    insurance, csrf = await signed_in(stack, "insurance", "ins.desk")
    page = (await insurance.get(f"/desk/deals/{desk.deal_id}")).text
    funding = section(page, "deal-documents")
    assert "Funding package" in funding
    policy = funding[funding.index('data-testid="funding-insurance_policy_page"') :]
    assert "kind=insurance_policy_page" in policy.split("</li>")[0]
    assert "kind=signed_loan_contract" not in funding, "credit's, not insurance's"

    doc = funding_document(desk.deal_id, DocumentKind.INSURANCE_POLICY_PAGE)
    response = await insurance.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data={"csrf": csrf, **multipart_fields(doc)},
        files={"file": (doc["file_name"], doc["data"], "application/pdf")},
    )
    assert response.status_code == 303, response.text
    shown = section((await insurance.get(response.headers["location"])).text, "deal-documents")
    [recorded] = [
        d for d in (await desk.status())["documents"] if d["kind"] == "insurance_policy_page"
    ]
    row = shown[shown.index('data-testid="funding-insurance_policy_page"') :].split("</ul>")[0]
    assert f"{recorded['sha256'][:12]}…" in row
    assert "ins.desk/insurance" in row and doc["file_name"] in row

    refused = await insurance.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data={"csrf": csrf, "kind": "vehicle_invoice", "party": "applicant"},
        files={"file": ("invoice.pdf", doc["data"], "application/pdf")},
    )
    assert refused.status_code == 403
    assert "may not record-document of vehicle_invoice" in section(refused.text, "upload")

    zh = await insurance.get(
        f"/desk/deals/{desk.deal_id}", headers={"Accept-Language": "zh-CN,zh;q=0.9"}
    )
    assert "放款资料包" in section(zh.text, "deal-documents")


async def test_a_refused_upload_says_why_beside_the_form_and_records_nothing(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    sales, csrf = await signed_in(stack, "sales")
    refused = await sales.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data={"csrf": csrf, "kind": "bank_statement", "party": "applicant"},
        files={"file": ("notes.txt", b"just some text, not a scan", "text/plain")},
    )
    assert refused.status_code == 422
    upload = section(refused.text, "upload")
    assert 'data-testid="upload-error"' in upload and "period_start" in upload
    assert re.search(r'<option value="bank_statement" selected>', upload)
    # A PDF's first bytes and HTML after them: parsed, refused, not kept.
    stored = sorted(stack.store.list("documents/"))
    polyglot = await sales.post(
        f"/desk/deals/{desk.deal_id}/documents",
        data={"csrf": csrf, "kind": "proof_of_income", "party": "applicant"},
        files={"file": ("income.pdf", b"%PDF-1.7\n<html><script></script></html>\n")},
    )
    assert polyglot.status_code == 422
    assert "income.pdf is not a readable PDF" in section(polyglot.text, "upload")
    assert sorted(stack.store.list("documents/")) == stored
    assert (await desk.status())["documents"] == []


async def test_the_live_fragment_gives_the_current_stage_and_says_when_a_form_is_stale(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    sales, _ = await signed_in(stack, "sales")
    page = (await sales.get(f"/desk/deals/{desk.deal_id}")).text
    poll = re.search(r'<div id="deal-live" hx-get="([^"]+)"', page)
    assert poll
    poll_url = poll.group(1).replace("&amp;", "&")
    fragment = await sales.get(f"/desk/deals/{desk.deal_id}/live")
    assert fragment.status_code == 200
    assert 'data-testid="deal-stage">Sales contract' in fragment.text
    unchanged = await sales.get(poll_url)
    assert unchanged.status_code == 204, "nothing new: nothing to swap"
    await desk.ok("sign-sales-contract", Role.SALES)  # another clerk, through the API
    moved = await sales.get(poll_url)
    assert moved.status_code == 200
    assert 'data-testid="deal-stage">Documents' in moved.text
    actions = section(moved.text, "deal-actions")
    assert 'hx-swap-oob="true"' in actions
    assert 'id="action-sign-sales-contract"' in actions and "no longer possible" in actions
    assert 'id="form-sign-sales-contract"' not in actions


async def test_the_timeline_names_the_lender_submission_and_the_page_the_terms(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    await desk.to_down_payment()
    credit, _ = await signed_in(stack, "credit")
    fragment = await credit.get(
        f"/desk/deals/{desk.deal_id}/timeline", headers={"HX-Request": "true"}
    )
    assert fragment.status_code == 200
    assert "application submitted" in fragment.text
    assert "to acme-auto-finance (submission 1" in fragment.text
    assert "<html" not in fragment.text, "a fragment for the page"
    assert "110105198803120014" not in fragment.text, "ID numbers are masked here too"
    assert "••••••••••••••0014" in fragment.text
    full = await credit.get(f"/desk/deals/{desk.deal_id}/timeline")
    assert "<html" in full.text and "application submitted" in full.text
    page = (await credit.get(f"/desk/deals/{desk.deal_id}")).text
    money = section(page, "deal-money")
    assert 'data-testid="terms"' in money and "acme-auto-finance" in money
    assert 'data-testid="schedule"' in money
    lenders = section(page, "deal-lenders")
    assert 'data-testid="submission"' in lenders and "Approved" in lenders


async def test_with_temporal_down_the_page_and_its_poll_show_a_banner(
    stack: ApiStack,
) -> None:
    # An API whose Temporal server has gone away after it connected.
    gone = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"), data_converter=codec_data_converter()
    )
    await gone.shutdown()
    services = Services(
        settings=stack.services.settings,
        client=gone.client,
        engine=stack.engine,
        lenders=stack.lenders,
        store=stack.store,
    )
    async with serve_async(create_app(services)) as url:
        client = httpx.AsyncClient(base_url=url, timeout=60, trust_env=False)
        stack.clients.append(client)
        await sign_in(client, "li.sales", "sales")
        deal = "/desk/deals/20261201-0badc0de"
        page = await client.get(deal)
        assert page.status_code == 200
        assert 'data-testid="banner"' in page.text and "cannot be read" in page.text
        poll = await client.get(f"{deal}/live?v=3&shown=sign-sales-contract")
        assert poll.status_code == 200 and 'hx-swap-oob="true"' in poll.text
        assert "v=-1" in poll.text, "the next poll that reads the deal refreshes everything"


async def test_a_counter_offer_is_answered_through_the_forms_the_deal_fills_in(
    stack: ApiStack,
) -> None:
    desk = await new_deal(stack)
    await stack.script(
        desk.deal_id, {"lenders": {"acme-auto-finance": [{"decision": "counter_offer"}]}}
    )
    await desk.ok("sign-sales-contract", Role.SALES)
    await desk.upload_all()
    await desk.ok("submit-application", Role.CREDIT)
    status = await desk.wait_until(
        lambda status: any(
            pending["action"] == "accept-counter-offer" for pending in status["pending"]
        ),
        "the counter-offer",
    )
    reference = status["submissions"][-1]["application_ref"]
    credit, csrf = await signed_in(stack, "credit")
    actions = section((await credit.get(f"/desk/deals/{desk.deal_id}")).text, "deal-actions")
    assert 'id="form-accept-counter-offer"' in actions
    assert 'id="form-decline-counter-offer"' in actions, "the other answer is offered too"
    assert f'name="application_ref" type="text" value="{reference}"' in actions
    assert 'name="decision_seq" type="number" value="1"' in actions
    accepted = await credit.post(
        f"/desk/deals/{desk.deal_id}/actions/accept-counter-offer",
        data={"csrf": csrf, "application_ref": reference, "decision_seq": "1"},
    )
    assert accepted.status_code == 303, accepted.text
    await desk.wait_stage("DOWN_PAYMENT")


async def test_credit_clears_and_waives_the_lenders_conditions_through_the_desk(
    stack: ApiStack,
) -> None:
    """The lender's conditions on the deal page: what each is, where it is in
    its lifecycle, what answers it and who changed it; credit's steps on them
    as forms, the condition filled in when a step fits only one; a refusal
    shown beside its form."""
    desk = await new_deal(stack)
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
    await desk.wait_until(
        lambda st: st["stage"] == "DOCUMENTS" and bool(st["stipulations"]), "the conditions"
    )
    letter = {"kind": "stipulation", "party": "applicant", "stipulation_code": "EMPLOYMENT_LETTER"}
    uploaded = await desk.upload(letter, sample_pdf("the employer's letter"))
    assert uploaded.status_code == 201, uploaded.text
    credit, csrf = await signed_in(stack, "credit", "credit.desk")
    page = (await credit.get(f"/desk/deals/{desk.deal_id}")).text
    lenders = section(page, "deal-lenders")
    assert 'data-testid="conditions"' in lenders
    row = lenders[lenders.index('data-testid="condition-EMPLOYMENT_LETTER"') :]
    assert "Answered, to clear" in row[: row.index("</tr>")]
    assert "scan.pdf" in row[: row.index("</tr>")], "what answers it"
    row = lenders[lenders.index('data-testid="condition-GUARANTOR"') :]
    assert "Other condition" in row and "Not answered yet" in row[: row.index("</tr>")]
    actions = section(page, "deal-actions")
    assert 'id="form-answer-stipulation"' in actions, "waited for: the guarantor"
    for step in ("clear-stipulation", "waive-stipulation", "reject-stipulation-document"):
        assert f'id="form-{step}"' in actions, step
    assert "clear what answers it: EMPLOYMENT_LETTER" in actions
    assert "waive, with the reason: EMPLOYMENT_LETTER, GUARANTOR" in actions
    form = actions[actions.index('id="form-clear-stipulation"') :]
    assert 'name="code" type="text" value="EMPLOYMENT_LETTER"' in form[: form.index("</form>")]

    refused = await credit.post(
        f"/desk/deals/{desk.deal_id}/actions/clear-stipulation",
        data={"csrf": csrf, "code": "GUARANTOR", "note": ""},
    )
    assert refused.status_code == 409, refused.text
    assert "GUARANTOR is open: nothing answers it yet" in section(refused.text, "deal-actions")
    cleared = await credit.post(
        f"/desk/deals/{desk.deal_id}/actions/clear-stipulation",
        data={"csrf": csrf, "code": "EMPLOYMENT_LETTER", "note": "checked by phone"},
    )
    assert cleared.status_code == 303, cleared.text
    waived = await credit.post(
        f"/desk/deals/{desk.deal_id}/actions/waive-stipulation",
        data={"csrf": csrf, "code": "GUARANTOR", "reason": "the lender waived it"},
    )
    assert waived.status_code == 303, waived.text
    await desk.wait_until(lambda st: st["stage"] != "DOCUMENTS", "the resubmission")
    lenders = section((await credit.get(f"/desk/deals/{desk.deal_id}")).text, "deal-lenders")
    row = lenders[lenders.index('data-testid="condition-GUARANTOR"') :]
    row = row[: row.index("</tr>")]
    assert "Waived" in row and "the lender waived it" in row and "credit.desk/credit" in row
    assert "sent with submission 2" in row
    row = lenders[lenders.index('data-testid="condition-EMPLOYMENT_LETTER"') :]
    assert "Cleared" in row[: row.index("</tr>")]
    # The audit timeline: the lender's conditions, credit's steps, and what the
    # resubmission told the lender.
    for _ in range(100):
        timeline = (
            await credit.get(f"/desk/deals/{desk.deal_id}/timeline", headers={"HX-Request": "true"})
        ).text
        if "(submission 2" in timeline:
            break
        await asyncio.sleep(0.1)
    assert "stipulation GUARANTOR (condition): add a guarantor" in timeline
    assert "waive-stipulation" in timeline and "clear-stipulation" in timeline
    assert "conditions: EMPLOYMENT_LETTER cleared: document" in timeline
    assert "GUARANTOR waived (the lender waived it)" in timeline


async def test_an_unwind_shows_its_steps_and_offers_each_to_its_role(stack: ApiStack) -> None:
    """A funded deal rescinded: the page lists the steps newest first with
    their state, evidence and who did them; the next step's form is the
    insurance clerk's, with the step filled in, and finance only sees whose it is."""
    desk = await new_deal(stack)
    await desk.to_registration("Acme Auto Finance Co., Ltd.")
    finance, _ = await signed_in(stack, "finance", "finance.desk")
    actions = section((await finance.get(f"/desk/deals/{desk.deal_id}")).text, "deal-actions")
    assert 'id="form-unwind"' in actions, "offered once funded, before delivery"
    await desk.ok("unwind", Role.FINANCE, reason="customer rescinded")
    await desk.wait_until(
        lambda st: st["pending"] and st["pending"][0]["action"] == "record-unwind-step",
        "the lender's repayment",
    )
    page = (await finance.get(f"/desk/deals/{desk.deal_id}")).text
    unwind = section(page, "deal-unwind")
    kinds = re.findall(r'data-testid="unwind-step-(\w+)"', unwind)
    assert kinds == [
        "repay_lender",
        "cancel_insurance",
        "reverse_invoice",
        "refund_down_payment",
        "release_vehicle",
    ]
    row = unwind[unwind.index('data-testid="unwind-step-repay_lender"') :]
    row = row[: row.index("</tr>")]
    assert "Done" in row and "rpy-" in row and "acme-auto-finance/lender" in row
    assert 'data-testid="deal-stage">Unwinding after funding' in page
    assert 'data-testid="not-yours"' in section(page, "deal-actions")
    insurance, csrf = await signed_in(stack, "insurance", "insurance.desk")
    actions = section((await insurance.get(f"/desk/deals/{desk.deal_id}")).text, "deal-actions")
    form = actions[actions.index('id="form-record-unwind-step"') :]
    assert "cancel_insurance" in form[: form.index("</form>")]
    posted = await insurance.post(
        f"/desk/deals/{desk.deal_id}/actions/record-unwind-step",
        data={"csrf": csrf, "step": "cancel_insurance", "reference": "CXL-9", "note": ""},
    )
    assert posted.status_code == 303, posted.text
    st = await desk.wait_until(
        lambda st: st["pending"] and st["pending"][0]["role"] == "finance", "the next step"
    )
    zh = (
        await insurance.get(f"/desk/deals/{desk.deal_id}", headers={"Accept-Language": "zh"})
    ).text
    unwind = section(zh, "deal-unwind")
    assert "放款后撤销" in unwind and "退保" in unwind and "CXL-9" in unwind
    assert st["stage"] == "UNWINDING"
    # The audit timeline: the rescission, the lender's repayment with its
    # ref, and the step recorded with its evidence.
    timeline = (
        await finance.get(f"/desk/deals/{desk.deal_id}/timeline", headers={"HX-Request": "true"})
    ).text
    assert "REGISTRATION → UNWINDING" in timeline
    assert "unwind</td><td>reason: customer rescinded" in timeline
    assert "repay lender" in timeline and "repaid: the lender&#39;s ref rpy-" in timeline
    assert "record-unwind-step" in timeline and "CXL-9" in timeline


async def test_an_unknown_deal_or_action_is_a_404_page(stack: ApiStack) -> None:
    sales, csrf = await signed_in(stack, "sales")
    missing = await sales.get("/desk/deals/20990101-00000000")
    assert missing.status_code == 404 and "does not exist" in missing.text
    desk = await new_deal(stack)
    unknown = await sales.post(f"/desk/deals/{desk.deal_id}/actions/<b>launch", data={"csrf": csrf})
    assert unknown.status_code == 404
    assert "<b>launch" not in unknown.text and "&lt;b&gt;launch" in unknown.text
    assert (await sales.get("/desk/deals/20990101-00000000/live")).status_code == 286


async def test_a_deal_id_started_again_shows_the_new_deals_customer(stack: ApiStack) -> None:
    """The page keeps what a deal started with, read once from its history; a
    deal id started again after its workflow closed (the CLI takes a deal id)
    is another deal, and its page shows that deal's customer and starter."""
    deal_id = deals.new_deal_id()
    client = stack.services.client
    sales, _ = await signed_in(stack, "sales")

    async def start_and_show(deal: DealInput, starter: str) -> str:
        actor = Actor(staff_id=starter, role=Role.SALES)
        inp = deals.start_input(deal_id, deal, DealPolicy(), stack.lenders, actor)
        await deals.start_deal(client, stack.task_queue, inp)
        for _ in range(100):
            page = await sales.get(f"/desk/deals/{deal_id}")
            if page.status_code == 200 and starter in page.text:
                return section(page.text, "deal-parties")
            await asyncio.sleep(0.1)
        raise AssertionError(f"the page of the deal {starter} started: {page.text[:300]}")

    first = example_deal()
    assert "Wang Fang" in await start_and_show(first, "sales.first")
    await client.get_workflow_handle(deals.workflow_id(deal_id)).terminate("started again")
    applicant = first.customer.applicant.model_copy(update={"full_name": "Zhou Xin"})
    second = first.model_copy(
        update={"customer": first.customer.model_copy(update={"applicant": applicant})}
    )
    parties = await start_and_show(second, "sales.second")
    assert "Zhou Xin" in parties and "Wang Fang" not in parties
    assert "sales.first" not in parties
