"""Headless Chromium driven by selenium: the web tests and ``make screenshots`` use it.

Debian's ``chromium`` and ``chromium-driver`` packages provide the browser and its
driver; ``.ci/run`` installs them on a clean machine.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT = 60.0
T = TypeVar("T")

MISSING = (
    "headless Chromium is needed for the web UI tests: install Debian's chromium and "
    "chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does this)"
)


def find_browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver; RuntimeError naming the packages if absent."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError(MISSING)
    return browser, driver


def start_browser(width: int = DESKTOP[0], height: int = DESKTOP[1]) -> WebDriver:
    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(WAIT)
    return chrome


def wait_for(chrome: WebDriver, condition: Callable[[WebDriver], T], timeout: float = WAIT) -> T:
    result: T = WebDriverWait(chrome, timeout, poll_frequency=0.1).until(condition)
    return result


def follow(chrome: WebDriver, element: WebElement, confirm: bool = False) -> None:
    """Clicks a link or a form's button and waits until the next page has loaded (a click
    returns before the browser has even left the current page). ``confirm`` accepts the
    confirmation dialog the click opens first."""
    chrome.execute_script("window.darbLeaving = true;")
    element.click()
    if confirm:
        wait_for(chrome, lambda c: c.switch_to.alert).accept()

    def arrived(c: WebDriver) -> bool:
        try:
            script = "return !window.darbLeaving && document.readyState === 'complete'"
            return bool(c.execute_script(script))
        except WebDriverException:  # between the two documents
            return False

    wait_for(chrome, arrived)


def sign_in(chrome: WebDriver, base_url: str, username: str, password: str) -> None:
    chrome.get(f"{base_url}/login")
    chrome.find_element(By.ID, "username").send_keys(username)
    chrome.find_element(By.ID, "password").send_keys(password)
    follow(chrome, chrome.find_element(By.ID, "sign-in"))
    wait_for(chrome, lambda c: c.find_elements(By.ID, "current-user"))


def set_width(chrome: WebDriver, width: int, height: int) -> None:
    chrome.set_window_size(width, height)


def screenshot(chrome: WebDriver, path: Path, width: int, height: int) -> None:
    """A full-page screenshot at ``width`` (the page's whole height)."""
    chrome.set_window_size(width, height)
    full: Any = chrome.execute_script("return document.documentElement.scrollHeight")
    chrome.set_window_size(width, max(height, min(int(full) + 140, 3000)))
    path.parent.mkdir(parents=True, exist_ok=True)
    chrome.save_screenshot(str(path))
    chrome.set_window_size(width, height)
