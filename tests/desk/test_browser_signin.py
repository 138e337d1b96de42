"""The desk's doors in a real browser: headless Chromium (tests/support/
browser.py) against the real API app, worker and lender simulator.

The app is served on this test's event loop, so every browser step runs in a
worker thread (`in_browser`): a blocking WebDriver call on the loop would
wait for a page the loop can no longer serve.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import update
from temporalio.testing import WorkflowEnvironment

from dealflow.config import DEV_JWT_SECRET
from dealflow.storage.db.engine import writing
from dealflow.storage.db.tables import DESK_SESSIONS
from tests.support.api_stack import ApiStack, HttpDesk, api_stack
from tests.support.browser import NARROW, WIDE, headless_chrome, screenshot, set_width
from tests.support.desk_clerk import WAIT_SECONDS, Desk, in_browser

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chrome() -> Iterator[WebDriver]:
    # Before the stack: without chromium the module skips (fails under CI) at once.
    with headless_chrome() as driver:
        yield driver


@pytest.fixture(scope="module")
async def stack(
    chrome: WebDriver, dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    async with api_stack(
        dev_env.client, database_url, tmp_session, secret=DEV_JWT_SECRET
    ) as running:
        yield running


@pytest.fixture
async def desk(chrome: WebDriver, stack: ApiStack) -> Desk:
    """The shared browser, signed out, at 1280 px."""

    def signed_out() -> None:
        set_width(chrome, WIDE)
        chrome.get(stack.api_url + "/desk/login")
        chrome.delete_all_cookies()

    await in_browser(signed_out)
    return Desk(chrome, stack.api_url)


async def test_development_sign_in_lands_on_my_work_with_the_staff_id(desk: Desk) -> None:
    def steps() -> None:
        desk.open("/desk/")
        assert desk.path == "/desk/login?next=/desk/"
        assert "development secret" in desk.find("section[aria-labelledby=dev-signin]").text
        screenshot(desk.driver, "signin-login")
        desk.sign_in("li.sales", "sales")
        assert desk.find("h1").text == "My work"
        assert desk.signed_in_as() == "li.sales · Sales consultant"
        screenshot(desk.driver, "signin-my-work")

    await in_browser(steps)


async def test_the_deals_table_filters_by_stage(desk: Desk, stack: ApiStack) -> None:
    office = HttpDesk(stack)
    deal_id = await office.start()
    await office.wait_stage("CONTRACT")

    def listed_after_reloads(driver: WebDriver) -> bool:
        if deal_id in desk.find("[data-testid=deals] tbody").text:
            return True
        driver.refresh()
        return False

    def steps() -> None:
        desk.sign_in("li.sales", "sales")
        desk.find("nav a[href='/desk/deals']").click()
        desk.wait_for_path("/desk/deals")
        Select(desk.find("#f-stage")).select_by_value("CONTRACT")
        desk.find("#f-q").send_keys(deal_id)
        desk.find("form.filters button[type=submit]").click()
        WebDriverWait(desk.driver, WAIT_SECONDS).until(
            lambda _: "stage=CONTRACT" in desk.path, "the filter applied"
        )
        # The read model follows the deal a moment after the workflow.
        WebDriverWait(desk.driver, WAIT_SECONDS).until(
            listed_after_reloads, "the new deal in the table"
        )
        assert "Sales contract" in desk.find("[data-testid=deals] tbody").text
        screenshot(desk.driver, "signin-deals")
        Select(desk.find("#f-stage")).select_by_value("COMPLETED")
        desk.find("form.filters button[type=submit]").click()
        WebDriverWait(desk.driver, WAIT_SECONDS).until(
            lambda _: "stage=COMPLETED" in desk.path, "the second filter applied"
        )
        assert deal_id not in desk.find("[data-testid=deals]").text

    await in_browser(steps)


async def test_keyboard_only_sign_in(desk: Desk) -> None:
    def focused() -> WebElement:
        return desk.driver.switch_to.active_element

    def tab_to(matches: Callable[[WebElement], bool], what: str) -> WebElement:
        for _ in range(30):
            ActionChains(desk.driver).send_keys(Keys.TAB).perform()
            if matches(focused()):
                return focused()
        raise AssertionError(f"the Tab key never reached {what}")

    def steps() -> None:
        desk.open("/desk/login")
        tab_to(lambda el: el.get_attribute("id") == "staff_id", "the staff id field")
        ActionChains(desk.driver).send_keys("kb.credit").perform()
        role = tab_to(lambda el: el.get_attribute("id") == "role", "the role list")
        for _ in range(len(Select(role).options)):
            if Select(role).first_selected_option.get_attribute("value") == "credit":
                break
            ActionChains(desk.driver).send_keys(Keys.ARROW_DOWN).perform()
        button = desk.development_form_button()
        tab_to(lambda el: el == button, "the sign-in button")
        ActionChains(desk.driver).send_keys(Keys.ENTER).perform()
        desk.wait_for_path("/desk/")
        assert desk.signed_in_as() == "kb.credit · Credit officer"

    await in_browser(steps)


async def test_sign_out_ends_the_session(desk: Desk) -> None:
    def steps() -> None:
        desk.sign_in("zhao.delivery", "delivery")
        desk.find("form[action='/desk/logout'] button").click()
        desk.wait_for_path("/desk/login")
        desk.open("/desk/")
        assert desk.path == "/desk/login?next=/desk/"

    await in_browser(steps)


async def test_a_form_post_without_the_csrf_token_is_refused(desk: Desk) -> None:
    def steps() -> None:
        desk.sign_in("li.sales", "sales")
        assert desk.post_without_csrf("/desk/logout") == 403
        desk.open("/desk/")
        assert desk.path == "/desk/" and desk.signed_in_as() == "li.sales · Sales consultant"

    await in_browser(steps)


async def test_an_expired_session_sends_the_browser_back_to_sign_in(
    desk: Desk, stack: ApiStack
) -> None:
    def steps() -> None:
        desk.sign_in("wang.credit", "credit")
        desk.open("/desk/deals?stage=DOCUMENTS")
        token = desk.session_cookie()
        assert token is not None
        # The row's time runs out; the browser still holds the cookie.
        with writing(stack.engine) as conn:
            conn.execute(
                update(DESK_SESSIONS)
                .where(DESK_SESSIONS.c.token_sha256 == hashlib.sha256(token.encode()).hexdigest())
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        desk.driver.refresh()
        assert desk.path == "/desk/login?next=/desk/deals%3Fstage%3DDOCUMENTS"
        assert desk.session_cookie() == token, "the server, not the browser, ended it"
        desk.find("#staff_id").send_keys("wang.credit")
        Select(desk.find("#role")).select_by_value("credit")
        desk.development_form_button().click()
        desk.wait_for_path("/desk/deals")
        assert desk.path == "/desk/deals?stage=DOCUMENTS", "back where the clerk was"

    await in_browser(steps)


async def test_the_pages_fit_a_phone(desk: Desk) -> None:
    def steps() -> None:
        desk.sign_in("li.sales", "sales")
        for path in ("/desk/login", "/desk/", "/desk/deals"):
            desk.open(path)
            set_width(desk.driver, NARROW)
            wide = desk.driver.execute_script("return document.documentElement.scrollWidth")
            assert wide <= NARROW, f"{path} scrolls sideways at {NARROW} px ({wide} px wide)"
        set_width(desk.driver, WIDE)

    await in_browser(steps)
