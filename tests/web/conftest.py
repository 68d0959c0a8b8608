"""The web UI against the real stack, as ``make run`` starts it: PostgreSQL, an agent, the
control plane and ``python -m services.web`` as processes, driven by headless Chromium.

Without Debian's ``chromium`` and ``chromium-driver`` these tests fail (never skip) with
a message naming the packages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from testkit import browser
from testkit.agent import AgentProcess, start_agent
from testkit.channel import PackageSpec, build_channel
from testkit.control_plane import ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database
from testkit.web import WebProcess, start_web

SLOW_PACKAGE_BYTES = 24 * 1024 * 1024
PASSWORD = "password-1"


@dataclass(frozen=True)
class Stack:
    api: ApiProcess
    web: WebProcess
    database_url: str
    slow_root: Path

    @property
    def url(self) -> str:
        return self.web.url


@pytest.fixture(scope="session")
def web_database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-slow-channels")


@pytest.fixture(scope="session")
def web_agent(
    tmp_path_factory: pytest.TempPathFactory, channel_url: str, slow_root: Path
) -> Iterator[AgentProcess]:
    data_dir = tmp_path_factory.mktemp("web-agent") / "data"
    extra = {"DARB_ALLOWED_CHANNELS": f"{channel_url},{slow_root.as_uri()}"}
    with start_agent(data_dir, channel_url, token="t0ken", extra_env=extra) as agent:
        yield agent


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    web_database_url: str,
    web_agent: AgentProcess,
    channel_url: str,
    slow_root: Path,
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("web-stack")
    env = api_env(
        web_database_url,
        directory,
        web_agent.addr,
        web_agent.token,
        channel_url,
        DARB_ALLOWED_CHANNELS=f"{channel_url},{slow_root.as_uri()}",
    )
    api = start_api(env, directory / "api.log")
    web = start_web(api.addr, directory / "web.log")
    yield Stack(api, web, web_database_url, slow_root)
    web.stop()
    api.stop()


@pytest.fixture(scope="session")
def browser_available() -> None:
    missing = ""
    try:
        browser.find_browser()
    except RuntimeError as exc:
        missing = str(exc)
    if missing:  # fail, never skip: CI must have the browser
        pytest.fail(missing, pytrace=False)


@pytest.fixture
def chrome(browser_available: None) -> Iterator[WebDriver]:
    driver = browser.start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def second_chrome(browser_available: None) -> Iterator[WebDriver]:
    driver = browser.start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def user(stack: Stack) -> Client:
    """A fresh account (logged in over gRPC too), so tests never see each other's data."""
    return stack.api.new_user()


@pytest.fixture
def signed_in(chrome: WebDriver, stack: Stack, user: Client) -> WebDriver:
    browser.sign_in(chrome, stack.url, user.user.username, PASSWORD)
    return chrome


@pytest.fixture
def slow_channel(stack: Stack) -> tuple[str, str]:
    """A new channel (URL, package) of one package no agent has cached: installing it
    takes a moment, so a test can watch the job while it runs."""
    name = f"slow-{uuid.uuid4().hex[:8]}"
    package = PackageSpec(name, "1.0", size_bytes=SLOW_PACKAGE_BYTES)
    return build_channel(stack.slow_root / name, [package]), name
