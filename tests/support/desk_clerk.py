"""The desk as a clerk drives it in a real browser (tests/support/browser.py):
open pages, sign in with the development form, fill in the forms the desk
generates, upload through the file input, wait for what the page shows.

Every method blocks on the WebDriver: a test whose app runs on its own event
loop calls them in a worker thread (`in_browser`), or the loop could not serve
the page the browser waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.browser import set_width

T = TypeVar("T")
WAIT_SECONDS = 10
# How often a wait looks again: Selenium's half-second default would add up
# to seconds over a deal's steps.
POLL_SECONDS = 0.05


async def in_browser(steps: Callable[[], T]) -> T:
    return await asyncio.to_thread(steps)


def flat_fields(payload: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A payload as the generated form names its fields: dotted paths
    (`fees.0.amount`); a list of plain values stays one field."""
    fields: dict[str, Any] = {}
    for name, value in payload.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            fields.update(flat_fields(value, f"{path}."))
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            for index, row in enumerate(value):
                fields.update(flat_fields(row, f"{path}.{index}."))
        else:
            fields[path] = value
    return fields


# Fills a form: text and number inputs, text areas (a list: one line each),
# selects, checkboxes (a boolean, or the list of values to check), dates (the
# ISO value a date picker sets). Answers the names it found no field for.
FILL_FORM = """
const [form, values] = arguments;
const missing = [];
for (const [name, value] of Object.entries(values)) {
  const inputs = Array.from(form.elements).filter((element) => element.name === name);
  if (!inputs.length) { missing.push(name); continue; }
  if (inputs[0].type === "checkbox") {
    const wanted = value === true ? ["true"] : value === false ? [] : value;
    for (const box of inputs) box.checked = wanted.includes(box.value);
  } else {
    inputs[0].value = Array.isArray(value) ? value.join("\\n") : String(value);
  }
  for (const kind of ["input", "change"]) {
    inputs[0].dispatchEvent(new Event(kind, {bubbles: true}));
  }
}
return missing;
"""


@dataclass
class Desk:
    """The browser on the desk, as a clerk uses it."""

    driver: WebDriver
    base_url: str

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url = urlsplit(self.driver.current_url)
        return url.path + (f"?{url.query}" if url.query else "")

    def wait(self, seconds: float = WAIT_SECONDS) -> WebDriverWait[WebDriver]:
        return WebDriverWait(self.driver, seconds, poll_frequency=POLL_SECONDS)

    def wait_for_path(self, path: str) -> None:
        self.wait().until(
            lambda _: urlsplit(self.driver.current_url).path == path,
            f"the browser reached {path}",
        )

    def wait_for_text(self, css: str, text: str, seconds: float = WAIT_SECONDS) -> WebElement:
        """The element at `css` once it shows `text` (swapped in by htmx, or a new page)."""

        def showing(_: WebDriver) -> WebElement | Literal[False]:
            try:
                found = self.driver.find_elements(By.CSS_SELECTOR, css)
                return found[0] if found and text in found[0].text else False
            except WebDriverException:  # replaced while read: look again
                return False

        return self.wait(seconds).until(showing, f"{css} showing {text!r}")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def signed_in_as(self) -> str:
        return self.text("[data-testid=signed-in-as]")

    def sign_in(self, staff_id: str, role: str) -> None:
        """The development form, as a clerk fills it in with the mouse."""
        self.open("/desk/login")
        self.find("#staff_id").send_keys(staff_id)
        Select(self.find("#role")).select_by_value(role)
        self.development_form_button().click()
        self.wait_for_path("/desk/")

    def development_form_button(self) -> WebElement:
        return self.find("section[aria-labelledby=dev-signin] button[type=submit]")

    def post_without_csrf(self, path: str) -> int:
        """What another page's script could send: a same-origin POST with no token."""
        status = self.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch(arguments[0], {method: "POST", body: new URLSearchParams({note: "x"}),
                                 credentials: "same-origin", redirect: "manual"})
              .then(response => done(response.status), error => done(String(error)));
            """,
            path,
        )
        assert isinstance(status, int), status
        return status

    def session_cookie(self) -> str | None:
        cookie = self.driver.get_cookie("dealflow_desk")
        return None if cookie is None else str(cookie["value"])

    # ----------------------------------------------------------------- forms

    def fill(self, form: WebElement, values: Mapping[str, Any]) -> None:
        """Put `values` (a payload, or dotted field names) into a generated form.

        In one script call per form, not keystrokes per field: a whole deal's
        forms typed key by key cost more time than the rest of the test. The
        form is still the page's own, sent by its button, with the events a
        clerk's input raises (htmx listens to them)."""
        fields = flat_fields(values)
        missing = self.driver.execute_script(FILL_FORM, form, fields)
        assert not missing, f"the form has no fields {missing}"

    def type_into(self, form: WebElement, values: Mapping[str, str]) -> None:
        """Type `values` key by key into text inputs, as a clerk does."""
        for name, value in values.items():
            field = form.find_element(By.CSS_SELECTOR, f'[name="{name}"]')
            field.clear()
            field.send_keys(value)

    def submit(self, form: WebElement) -> None:
        """Send `form` with its button; back once the page its post answers with is in."""
        self.mark_page()
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.wait().until(lambda _: self.new_page_loaded(), "the answer to the post")

    def new_page_loaded(self) -> bool:
        """Whether a page other than the marked one has loaded (`mark_page`)."""
        try:
            return bool(
                self.driver.execute_script(
                    "return window.dealflowSamePage !== true && document.readyState === 'complete'"
                )
            )
        except WebDriverException:  # between two pages: neither answers
            return False

    def act(self, action: str, values: Mapping[str, Any]) -> None:
        """Fill in the deal page's form for `action` and send it; back on the
        page once the desk says it was applied."""
        form = self.find(f"#form-{action}")
        self.fill(form, values)
        self.submit(form)
        assert self.text("[data-testid=notice]") == f"{action}: applied."

    def refused(self, action: str, values: Mapping[str, Any]) -> str:
        """Send `action`'s form expecting a refusal: the detail shown beside it."""
        form = self.find(f"#form-{action}")
        self.fill(form, values)
        self.submit(form)
        return self.text(f"#action-{action} [data-testid=form-error]")

    def upload(self, fields: Mapping[str, str], file: Path) -> None:
        """One document through the deal page's upload form and its file input."""
        form = self.find("#upload-form")
        self.fill(form, fields)
        self.find("#upload-file").send_keys(str(file))
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.wait_for_text("[data-testid=upload-notice]", f"{file.name}: recorded as")

    def overflow_at(self, width: int) -> int:
        """How many CSS pixels the page is wider than a `width`-pixel window
        (0: it fits, nothing scrolls sideways)."""
        set_width(self.driver, width)
        wide = int(self.driver.execute_script("return document.documentElement.scrollWidth"))
        return max(wide - width, 0)

    def mark_page(self) -> None:
        """Tag this page's window: a reload would lose the tag (`same_page`)."""
        self.driver.execute_script("window.dealflowSamePage = true;")

    def same_page(self) -> bool:
        return bool(self.driver.execute_script("return window.dealflowSamePage === true;"))
