"""A real browser for the desk's tests: Debian's `chromium` and
`chromium-driver`, headless, driven by Selenium.

Never a downloaded browser: the driver's path is given to Selenium, so its
Selenium Manager (which would fetch one) is never asked. Without chromium
the browser tests skip with the install command; under `CI=true` that is a
failure instead, so CI cannot go green without having run them (`.ci/run`
installs both packages).

Screenshots go to `DEALFLOW_SCREENSHOTS` (default `.data/screenshots/` of
the checkout), one PNG per page and width (the whole page, or a screenful),
to pick the ones the README shows from (docs/screenshots/).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.stack import ROOT

INSTALL_COMMAND = "apt-get install chromium chromium-driver"
WIDE = 1280
NARROW = 390
WINDOW_HEIGHT = 900
# The most of a window's width its frame may take.
MAX_FRAME = 100
# Pages are short; a runaway layout must not make a giant PNG.
MAX_SCREENSHOT_HEIGHT = 4000


def chromium_paths() -> tuple[str, str] | None:
    """Debian's chromium and its driver, when both are installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    """The browser's and the driver's paths, or skip (fail under CI) naming the install."""
    found = chromium_paths()
    if found is None:
        message = f"no chromium and chromium-driver here: {INSTALL_COMMAND}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the browser tests cannot run: {message}", pytrace=False)
        pytest.skip(message)
    return found


@contextmanager
def headless_chrome() -> Iterator[WebDriver]:
    """A headless Chrome, 1280 px wide, English pages, closed when the block ends."""
    browser, driver_path = require_chromium()
    options = Options()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        # The tests run as root in CI, where Chrome's sandbox cannot start.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--lang=en-GB",
        f"--window-size={WIDE},{WINDOW_HEIGHT}",
    ):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-GB,en"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


def set_width(driver: WebDriver, width: int) -> None:
    """Make the page `width` CSS pixels wide (390: a phone at the delivery bay)."""
    driver.set_window_size(width, WINDOW_HEIGHT)

    def resized(_: WebDriver) -> int | bool:
        # The page learns of the resize a moment later (at once, on an idle
        # machine): a width read before would be the old one.
        inner = int(driver.execute_script("return window.innerWidth"))
        return inner if width - MAX_FRAME <= inner <= width else False

    inner = WebDriverWait(driver, 5, poll_frequency=0.02).until(resized, f"{width} px wide")
    # The window's frame takes some of its width in some builds: make it up.
    if inner != width:
        driver.set_window_size(2 * width - inner, WINDOW_HEIGHT)


def screenshots_dir() -> Path:
    configured = os.environ.get("DEALFLOW_SCREENSHOTS")
    folder = Path(configured) if configured else ROOT / ".data" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(
    driver: WebDriver,
    name: str,
    widths: tuple[int, ...] = (WIDE, NARROW),
    *,
    start_at: str | None = None,
    height: int | None = None,
) -> list[Path]:
    """PNGs of the current page at each width: `<name>-<width>.png`, the whole
    page, or from the top of the element `start_at` (a CSS selector) down,
    at most `height` CSS pixels (a screenful, as the README shows it).

    The window is left at the first width again."""
    saved = []
    for width in widths:
        set_width(driver, width)
        page_height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        top = 0
        if start_at is not None:
            top = int(
                driver.execute_script(
                    "return document.querySelector(arguments[0]).getBoundingClientRect().top"
                    " + window.scrollY",
                    start_at,
                )
            )
        tall = min(page_height - top, height or MAX_SCREENSHOT_HEIGHT, MAX_SCREENSHOT_HEIGHT)
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": top, "width": width, "height": tall, "scale": 1},
            },
        )
        path = screenshots_dir() / f"{name}-{width}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        saved.append(path)
    set_width(driver, widths[0])
    return saved
