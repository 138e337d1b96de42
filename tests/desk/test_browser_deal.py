"""A whole deal in a real browser, in the desk alone: every role signs in with
the development sign-in and does its part through the pages — the new-deal
form, the upload form's file input, the forms generated for each action — while
the lender simulator answers by webhook and the open page follows without a
reload, to COMPLETED; then the audit timeline and the reports.

Along the way: what each page shows (stage bar, money, checklist), My work
filling itself when the lender pays out, a 403 and a 409 that show their detail
and change nothing, a form in a second tab that says its action is no longer
possible once the first tab took it, pages that fit 390 px, and screenshots of
each page at 1280 and 390 px (tests/support/browser.py) for the README.

The app runs on this test's event loop: every browser step runs in a worker
thread (`in_browser`), the test's own checks over HTTP between them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from temporalio.testing import WorkflowEnvironment

from dealflow.config import DEV_JWT_SECRET
from dealflow.desk.labels import STAGE_NAMES
from dealflow.models import DocumentKind, Role, Stage
from dealflow.samples import (
    dealer_today,
    example_action,
    example_deal,
    funding_document,
    sample_documents,
)
from tests.support.api_stack import ApiStack, HttpDesk, api_stack, multipart_fields, policy_file
from tests.support.browser import NARROW, WIDE, headless_chrome, screenshot
from tests.support.desk_clerk import Desk, in_browser

pytestmark = pytest.mark.e2e

ACME = "acme-auto-finance"
# The lender takes its time, as a real one does: long enough that the page
# is seen before its answer, which must then arrive without a reload; the
# disbursement longer than My work's first poll, which must not be its last.
LENDER_SCRIPT = {"decision_delay": 2.5, "disbursements": [{"result": "completed", "delay": 3.5}]}
LIVE_SECONDS = 12
STAGE = "[data-testid=deal-stage]"
# Screenshots as the README shows them: a screenful at 1280 px, a phone's
# first screens at 390 px.
SCREEN = 1000
PHONE_SCREENS = 1500


@pytest.fixture(scope="module")
def chrome() -> Iterator[WebDriver]:
    # Before the stack: without chromium the module skips (fails under CI) at once.
    with headless_chrome() as driver:
        yield driver


@pytest.fixture(scope="module")
async def stack(
    chrome: WebDriver, dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    # Follow-up calls fall due 1 and 2 seconds after delivery, not 3 and 30 days.
    policy = policy_file(tmp_session, follow_up_first=1, follow_up_second=2)
    async with api_stack(
        dev_env.client, database_url, tmp_session, policy_file=policy, secret=DEV_JWT_SECRET
    ) as running:
        yield running


def action(name: str, **changes: Any) -> dict[str, Any]:
    """What a clerk types into `name`'s form: the example paperwork."""
    return {**example_action(name, dealer_today()), **changes}


def shoot(desk: Desk, name: str, start_at: str | None = None) -> None:
    """The page as a phone and as a desktop show it; the window left at 1280 px."""
    screenshot(desk.driver, name, (NARROW,), start_at=start_at, height=PHONE_SCREENS)
    screenshot(desk.driver, name, (WIDE,), start_at=start_at, height=SCREEN)


# --------------------------------------------------------------------------- the pages


def start_the_deal(desk: Desk) -> str:
    """Sales: the sign-in page, My work, the new-deal form; the new deal's page."""
    desk.open("/desk/")
    shoot(desk, "desk-sign-in")
    desk.sign_in("li.sales", "sales")
    desk.find("nav a[href='/desk/deals/new']").click()
    desk.wait_for_path("/desk/deals/new")
    body = example_deal().model_dump(mode="json")
    lenders = body.pop("lender_ids")
    typed = {
        "vehicle.price": body["vehicle"].pop("price"),
        "down_payment": body.pop("down_payment"),
    }
    form = desk.find("form.new-deal")
    desk.fill(form, body)
    desk.type_into(form, typed)
    for slot, lender in enumerate(lenders, start=1):
        Select(desk.find(f"#f-lender-{slot}")).select_by_value(lender)
    # Worked out as the clerk types, by the same rules as the API's.
    desk.wait_for_text("[data-testid=amount-financed]", "105,000.00")
    assert desk.text("[data-testid=loan-ratio]").startswith("70.0%")
    assert not form.find_elements(By.CSS_SELECTOR, ".field-errors small.error")
    shoot(desk, "desk-new-deal", start_at="label[for=f-vehicle-price]")
    desk.submit(form)
    deal_id = desk.path.rsplit("/", 1)[-1]
    assert desk.text(STAGE) == STAGE_NAMES[Stage.CONTRACT]
    current = desk.find("[data-testid=stage-bar] [aria-current=step]")
    assert current.text.startswith("Sales contract")
    money = desk.text("[data-testid=money]")
    for figure in ("150,000.00", "45,000.00", "105,000.00"):
        assert figure in money
    assert desk.text("[data-testid=ltv]") == "70.0%"
    assert "Wang Fang" in desk.text("[data-testid=customer]")
    return deal_id


def contract_and_documents(desk: Desk, deal_id: str, folder: Path) -> None:
    """Sales signs the contract, then uploads every document the checklist asks for."""
    desk.act("sign-sales-contract", action("sign-sales-contract"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.DOCUMENTS]
    missing = desk.driver.find_elements(By.CSS_SELECTOR, "[data-testid^=checklist-] li.missing")
    documents = sample_documents(deal_id, example_deal(), dealer_today())
    assert len(missing) == len(documents) == 8, "seven of the applicant's, the spouse's ID"
    for document in documents:
        file = folder / str(document["file_name"])
        file.write_bytes(document["data"])
        desk.upload(multipart_fields(document), file)
    desk.wait_for_text(STAGE, STAGE_NAMES[Stage.APPLICATION])
    assert not desk.driver.find_elements(By.CSS_SELECTOR, "[data-testid^=checklist-] li.missing")
    met = desk.driver.find_elements(By.CSS_SELECTOR, "[data-testid^=checklist-] li.met")
    assert len(met) == 8
    assert len(desk.driver.find_elements(By.CSS_SELECTOR, "[data-testid=download]")) == 8


def open_from_my_work(desk: Desk, deal_id: str, action_name: str, shot: str = "") -> None:
    """One click from My work to the action's form (the list refreshes by
    itself); `shot`: a screenshot of My work first."""
    link = f"a[href='/desk/deals/{deal_id}#action-{action_name}']"
    desk.wait(LIVE_SECONDS).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, link)),
        f"My work offers {action_name} on {deal_id}",
    )
    if shot:
        shoot(desk, shot)
    desk.find(link).click()
    desk.wait_for_path(f"/desk/deals/{deal_id}")
    desk.find(f"#form-{action_name}")


def underwriting_live(desk: Desk, deal_id: str) -> str:
    """Credit submits the application; the lender's webhook moves the open page on.
    The application's reference at the lender."""
    desk.sign_in("wang.credit", "credit")
    open_from_my_work(desk, deal_id, "submit-application")
    desk.act("submit-application", action("submit-application"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.UNDERWRITING]
    assert "waiting for" in desk.text("[data-testid=waiting-for]").lower()
    desk.mark_page()
    desk.wait_for_text(STAGE, STAGE_NAMES[Stage.DOWN_PAYMENT], seconds=LIVE_SECONDS)
    assert desk.same_page(), "the stage changed in the open page, not by a reload"
    terms = desk.wait_for_text("[data-testid=terms]", "105,000.00").text
    assert ACME in terms
    assert desk.text("[data-testid=schedule] summary").startswith("Repayment schedule: 36 ×")
    submission = desk.text("[data-testid=submission]")
    assert "Approved" in submission
    reference = submission.split("Application ", 1)[1].split()[0]
    assert reference
    return reference


def not_yours(desk: Desk, deal_id: str) -> str:
    """Credit sees finance's step without a form; posting it anyway is refused."""
    panel = desk.text("#action-confirm-down-payment")
    assert "it is for: Finance officer." in panel
    assert not desk.driver.find_elements(By.CSS_SELECTOR, "#form-confirm-down-payment")
    desk.mark_page()
    desk.driver.execute_script(
        """
        const [path, fields] = arguments;
        const form = document.createElement("form");
        form.method = "post";
        form.action = path;
        const values = {csrf: document.querySelector("input[name=csrf]").value, ...fields};
        for (const [name, value] of Object.entries(values)) {
          const input = document.createElement("input");
          input.type = "hidden"; input.name = name; input.value = value;
          form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """,
        f"/desk/deals/{deal_id}/actions/confirm-down-payment",
        action("confirm-down-payment"),
    )
    desk.wait().until(lambda _: desk.new_page_loaded(), "the answer to the post")
    return desk.text("#action-confirm-down-payment [data-testid=form-error]")


def upload_funding(desk: Desk, deal_id: str, kind: DocumentKind, folder: Path) -> None:
    """A funding document through the upload form, as its own team does."""
    document = funding_document(deal_id, kind)
    file = folder / str(document["file_name"])
    file.write_bytes(document["data"])
    desk.upload(multipart_fields(document), file)
    row = f"[data-testid=funding-{kind.value}] [data-testid=sha256]"
    assert desk.text(row) == hashlib.sha256(document["data"]).hexdigest()[:12] + "…"


def finance_and_insurance(desk: Desk, deal_id: str, folder: Path) -> None:
    desk.sign_in("chen.finance", "finance")
    open_from_my_work(desk, deal_id, "confirm-down-payment", shot="desk-my-work")
    shoot(desk, "desk-deal-down-payment")
    desk.act("confirm-down-payment", action("confirm-down-payment"))
    assert "45,000.00" in desk.text("[data-testid=money]")
    desk.act("record-invoice", action("record-invoice"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.INSURANCE]
    upload_funding(desk, deal_id, DocumentKind.VEHICLE_INVOICE, folder)
    desk.sign_in("sun.insurance", "insurance")
    open_from_my_work(desk, deal_id, "record-insurance")
    desk.act("record-insurance", action("record-insurance"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.LOAN_CONTRACT]
    upload_funding(desk, deal_id, DocumentKind.INSURANCE_POLICY_PAGE, folder)
    desk.sign_in("wang.credit", "credit")
    open_from_my_work(desk, deal_id, "record-repayment-account")
    desk.act("record-repayment-account", action("record-repayment-account"))
    assert "115,853.20" in desk.text("[data-testid=total-repayable]")
    desk.act("confirm-loan-terms", action("confirm-loan-terms"))
    desk.act("sign-loan-contract", action("sign-loan-contract"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.LOAN_CONTRACT], "the signed copy is not in yet"
    upload_funding(desk, deal_id, DocumentKind.SIGNED_LOAN_CONTRACT, folder)
    desk.wait_for_text(STAGE, STAGE_NAMES[Stage.DISBURSEMENT])
    # The upload refreshed the stage; the live poll brings the actions.
    desk.wait_for_text("#deal-actions", "lender moves next", seconds=LIVE_SECONDS)


def disbursed_live(desk: Desk, deal_id: str) -> None:
    """Registration waits on My work: the lender's disbursement puts the work
    there while the page stays open (its list refreshes itself)."""
    desk.sign_in("zhou.registration", "registration")
    assert deal_id not in desk.text("#work-items")
    desk.mark_page()
    desk.wait_for_text("#work-items", deal_id, seconds=LIVE_SECONDS)
    assert desk.same_page(), "My work changed in the open page, not by a reload"
    open_from_my_work(desk, deal_id, "record-certificate")


def registration_refused_plate(desk: Desk) -> str:
    """The plate before its certificate and tax: the rules' 409 beside the form."""
    plate = action("record-plate")
    detail = desk.refused("record-plate", plate)
    typed = desk.find("#form-record-plate [name=plate_no]").get_attribute("value")
    assert typed == plate["plate_no"], "the form keeps what was typed"
    return detail


def registration(desk: Desk) -> None:
    """The certificate and the tax; the plate from a second tab, while the
    first tab's plate form turns into a notice by itself; the mortgage."""
    for step in ("record-certificate", "record-purchase-tax"):
        desk.act(step, action(step))
    first = desk.driver.current_window_handle
    desk.mark_page()
    page = desk.driver.current_url
    desk.driver.switch_to.new_window("tab")
    desk.driver.get(page)
    desk.act("record-plate", action("record-plate"))
    desk.driver.close()
    desk.driver.switch_to.window(first)
    desk.wait_for_text("#action-record-plate", "no longer possible", seconds=LIVE_SECONDS)
    assert desk.same_page(), "the first tab was told without a reload"
    assert not desk.driver.find_elements(By.CSS_SELECTOR, "#form-record-plate")
    desk.act("record-mortgage", action("record-mortgage"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.DELIVERY]


def deliver(desk: Desk, deal_id: str) -> None:
    desk.sign_in("zhao.delivery", "delivery")
    open_from_my_work(desk, deal_id, "record-stock-out")
    desk.act("record-stock-out", action("record-stock-out"))
    desk.sign_in("chen.finance", "finance")
    open_from_my_work(desk, deal_id, "record-settlement")
    desk.act("record-settlement", action("record-settlement"))
    desk.sign_in("zhao.delivery", "delivery")
    open_from_my_work(desk, deal_id, "deliver")
    shoot(desk, "desk-deal-delivery")
    desk.act("deliver", action("deliver"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.FOLLOW_UP]


def follow_up_to_completion(desk: Desk, deal_id: str, reference: str) -> None:
    """Sales makes both calls; the finished deal's page and its audit timeline."""
    desk.sign_in("li.sales", "sales")
    open_from_my_work(desk, deal_id, "record-follow-up")
    desk.act("record-follow-up", action("record-follow-up", call="day3"))
    desk.act("record-follow-up", action("record-follow-up", call="day30"))
    assert desk.text(STAGE) == STAGE_NAMES[Stage.COMPLETED]
    assert "waits for nothing" in desk.text("#deal-actions")
    steps = desk.driver.find_elements(By.CSS_SELECTOR, "[data-testid=stage-bar] li")
    assert len(steps) == 12 and all(step.get_attribute("class") == "step-done" for step in steps), (
        "every working stage done"
    )
    current = desk.find(".outcomes [aria-current=step]")
    assert current.text == "Completed"
    money = desk.text("[data-testid=money]")
    assert "Disbursed" in money and money.count("105,000.00") >= 2
    timeline = desk.wait_for_text("#deal-timeline", "application submitted").text
    assert f"to {ACME} (submission 1, 8 documents); acknowledged as {reference}" in timeline
    assert f"from {ACME} application {reference}" in timeline, "the disbursement asked for"
    for step in ("sign-sales-contract", "record-follow-up", "li.sales (sales)"):
        assert step in timeline
    for width in (NARROW, WIDE):
        assert desk.overflow_at(width) == 0, f"the finished deal's page fits {width} px"
    shoot(desk, "desk-deal-completed")
    shoot(desk, "desk-deal-timeline", start_at="#deal-lenders")
    desk.open(f"/desk/deals/{deal_id}/timeline")
    assert reference in desk.text("#deal-timeline")
    assert desk.overflow_at(WIDE) == 0, "the timeline's own page fits too"


def funnel_on_the_page(desk: Desk, deal_id: str, period: dict[str, str]) -> list[list[str]]:
    """The deals table with the finished deal, and the reports' funnel as shown."""
    desk.open(f"/desk/deals?q={deal_id}")
    assert "Completed" in desk.text("[data-testid=deals] tbody")
    desk.open("/desk/deals")
    shoot(desk, "desk-deals")
    desk.open(f"/desk/reports?from={period['from']}&to={period['to']}")
    rows = desk.driver.find_elements(By.CSS_SELECTOR, "[data-testid=funnel-table] tbody tr")
    table = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in rows]
    assert desk.driver.find_elements(By.CSS_SELECTOR, "svg#chart-funnel, #chart-funnel")
    shoot(desk, "desk-reports")
    return table


# --------------------------------------------------------------------------- the test


async def test_every_role_takes_a_deal_to_completed_in_the_browser(
    chrome: WebDriver, stack: ApiStack, tmp_path: Path
) -> None:
    started = time.monotonic()
    desk = Desk(chrome, stack.api_url)
    await in_browser(lambda: chrome.delete_all_cookies())
    office = HttpDesk(stack)  # the test's own eyes on the deal, over the JSON API
    office.deal_id, _ = await asyncio.gather(
        in_browser(lambda: start_the_deal(desk)), other_clerks_deals(stack)
    )
    await stack.script(office.deal_id, LENDER_SCRIPT)
    created = await office.status()
    assert created["transitions"][0]["actor"] == "li.sales/sales"

    await in_browser(lambda: contract_and_documents(desk, office.deal_id, tmp_path))
    reference = await in_browser(lambda: underwriting_live(desk, office.deal_id))

    before = await office.status()
    detail = await in_browser(lambda: not_yours(desk, office.deal_id))
    assert "role 'credit' may not confirm-down-payment" in detail
    await assert_unchanged(office, before)

    await in_browser(lambda: finance_and_insurance(desk, office.deal_id, tmp_path))
    await in_browser(lambda: disbursed_live(desk, office.deal_id))
    assert (await office.status())["stage"] == "REGISTRATION"

    before = await office.status()
    detail = await in_browser(lambda: registration_refused_plate(desk))
    assert "a plate needs the certificate of conformity and the purchase tax first" in detail
    await assert_unchanged(office, before)

    await in_browser(lambda: registration(desk))
    await in_browser(lambda: deliver(desk, office.deal_id))
    await in_browser(lambda: follow_up_to_completion(desk, office.deal_id, reference))
    finished = await office.status()
    assert finished["stage"] == "COMPLETED" and finished["pending"] == []
    assert {"li.sales/sales", "wang.credit/credit", "zhou.registration/registration"} <= {
        move["actor"] for move in finished["transitions"]
    }

    await the_reports_show_the_read_model(desk, stack, office.deal_id)
    print(f"deal {office.deal_id} completed in the browser in {time.monotonic() - started:.1f} s")


async def other_clerks_deals(stack: ApiStack) -> None:
    """Deals other clerks started over the API meanwhile: the lists hold more than one."""
    for name, signed in (("Zhang Min", False), ("Liu Yang", True), ("Chen Jie", False)):
        office = HttpDesk(stack)
        customer = office.deal.customer.model_dump(mode="json")
        customer["applicant"]["full_name"] = name
        await office.start(customer=customer)
        if signed:
            await office.wait_stage("CONTRACT")
            await office.ok("sign-sales-contract", Role.SALES)


async def assert_unchanged(office: HttpDesk, before: dict[str, Any]) -> None:
    after = await office.status()
    assert (after["stage"], after["version"]) == (before["stage"], before["version"])


async def the_reports_show_the_read_model(desk: Desk, stack: ApiStack, deal_id: str) -> None:
    """Once the read model holds the finished deal, the reports page's funnel is
    the JSON report's for the same period."""
    today = datetime.now(UTC).date()
    period = {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}
    auditor = stack.http(Role.AUDITOR)
    deadline = time.monotonic() + 10
    while True:
        listed = await auditor.get("/api/deals", params={"stage": "COMPLETED", "limit": 200})
        if deal_id in [row["deal_id"] for row in listed.json()["deals"]]:
            break
        assert time.monotonic() < deadline, "the read model never showed the deal COMPLETED"
        await asyncio.sleep(0.1)
    for _ in range(5):
        funnel = (await auditor.get("/api/reports/funnel", params=period)).json()
        shown = await in_browser(lambda: funnel_on_the_page(desk, deal_id, period))
        again = (await auditor.get("/api/reports/funnel", params=period)).json()
        if funnel == again:
            break
    expected = [
        [STAGE_NAMES[row["stage"]], str(row["entered"]), str(row["left"])]
        for row in funnel["stages"]
    ]
    assert shown == expected
    entered = {row["stage"]: row["entered"] for row in funnel["stages"]}
    assert entered["COMPLETED"] >= 1 and entered["REGISTRATION"] >= 1
