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
from testkit.channel import PackageSpec, build_channel, served_slowly
from testkit.control_plane import ApiProcess, Client, api_env, start_api
from testkit.postgres import fresh_database
from testkit.web import WebProcess, start_web

DOWNLOAD_BYTES = 12 * 1024 * 1024  # about 6 s to download at served_slowly's rate
CHATTY_BYTES = 16 * 1024 * 1024  # about 8 s
CHATTY_PARTS = 12
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
def slow_http_root(slow_root: Path) -> Iterator[str]:
    """The slow channels' folder over HTTP, served slowly (``served_slowly``)."""
    with served_slowly(slow_root) as url:
        yield url


@pytest.fixture(scope="session")
def allowed_channels(channel_url: str, slow_root: Path, slow_http_root: str) -> str:
    return f"{channel_url},{slow_root.as_uri()},{slow_http_root}"


@pytest.fixture(scope="session")
def web_agent(
    tmp_path_factory: pytest.TempPathFactory, channel_url: str, allowed_channels: str
) -> Iterator[AgentProcess]:
    data_dir = tmp_path_factory.mktemp("web-agent") / "data"
    extra = {"DARB_ALLOWED_CHANNELS": allowed_channels}
    with start_agent(data_dir, channel_url, token="t0ken", extra_env=extra) as agent:
        yield agent


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    web_database_url: str,
    web_agent: AgentProcess,
    channel_url: str,
    slow_root: Path,
    allowed_channels: str,
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("web-stack")
    env = api_env(
        web_database_url,
        directory,
        web_agent.addr,
        web_agent.token,
        channel_url,
        DARB_ALLOWED_CHANNELS=allowed_channels,
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


def csp_violations(chrome: WebDriver) -> list[str]:
    """The browser console's Content Security Policy violations since the last call
    (reading the console's log empties it)."""
    messages = [str(entry.get("message", "")) for entry in chrome.get_log("browser")]
    return [message for message in messages if "Content Security Policy" in message]


def _checked_browser() -> Iterator[WebDriver]:
    """A browser for one test; afterwards its pages must not have broken their Content
    Security Policy (a blocked script or style is a feature that silently failed)."""
    driver = browser.start_browser()
    yield driver
    try:
        violations = csp_violations(driver)
    finally:
        driver.quit()
    assert not violations, f"a page broke its Content Security Policy: {violations}"


@pytest.fixture
def chrome(browser_available: None) -> Iterator[WebDriver]:
    yield from _checked_browser()


@pytest.fixture
def second_chrome(browser_available: None) -> Iterator[WebDriver]:
    yield from _checked_browser()


@pytest.fixture
def user(stack: Stack) -> Client:
    """A fresh account (logged in over gRPC too), so tests never see each other's data."""
    return stack.api.new_user()


@pytest.fixture
def signed_in(chrome: WebDriver, stack: Stack, user: Client) -> WebDriver:
    browser.sign_in(chrome, stack.url, user.user.username, PASSWORD)
    return chrome


@pytest.fixture
def chatty_channel(stack: Stack, slow_http_root: str) -> tuple[str, str, str]:
    """A new channel over slow HTTP (URL, a package, its large dependency). Installing the
    package prints dozens of lines at once, more than the log box shows, then a line at
    every tenth of the large dependency's download, which lasts seconds: a test can watch
    the job while its lines keep arriving."""
    name = f"chatty-{uuid.uuid4().hex[:8]}"
    small = [
        PackageSpec(f"{name}-part{n}", "1.0", files={f"share/{name}/part{n}": b"part\n"})
        for n in range(CHATTY_PARTS)
    ]
    large = PackageSpec(f"{name}-large", "1.0", size_bytes=CHATTY_BYTES)
    package = PackageSpec(name, "1.0", depends=tuple(spec.name for spec in [*small, large]))
    build_channel(stack.slow_root / name, [*small, large, package])
    return f"{slow_http_root}{name}", package.name, large.name


@pytest.fixture
def download_channel(stack: Stack, slow_http_root: str) -> tuple[str, str, str]:
    """A new channel over slow HTTP (URL, a small package, a package that takes seconds
    to download, and reports its bytes as it does): a test can watch its progress."""
    name = f"download-{uuid.uuid4().hex[:8]}"
    packages = [
        PackageSpec(f"{name}-small", "1.0", files={f"share/{name}/README": b"small\n"}),
        PackageSpec(f"{name}-large", "1.0", size_bytes=DOWNLOAD_BYTES),
    ]
    build_channel(stack.slow_root / name, packages)
    return f"{slow_http_root}{name}", packages[0].name, packages[1].name
