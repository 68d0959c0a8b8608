"""The web UI in a real headless Chromium against the real stack (see conftest.py)."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

import grpc
import psycopg
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from darb.v1 import common_pb2, users_pb2
from testkit import browser
from testkit.control_plane import Client
from testkit.postgres import libpq_url
from tests.web.conftest import PASSWORD, Stack

XSS = "<img src=x onerror=alert(1)>"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _ready_env(user: Client, packages: list[str]) -> common_pb2.Environment:
    created = user.create(_name("env"), packages)
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    return user.get_env(created.environment.id)


def _wait_job_done(chrome: WebDriver, status: str = "completed") -> None:
    """On a job page: waits until the live page (no reload) shows the job's end."""
    browser.wait_for(
        chrome, lambda c: c.find_element(By.ID, "job").get_attribute("data-stream") == "ended"
    )
    assert chrome.find_element(By.ID, "job-status").text == status


def _log_lines(chrome: WebDriver) -> list[str]:
    return [line.text for line in chrome.find_elements(By.CSS_SELECTOR, "#log .line")]


def _installed(chrome: WebDriver) -> set[str]:
    rows = chrome.find_elements(By.CSS_SELECTOR, "#packages tbody tr")
    return {row.get_attribute("data-name") or "" for row in rows}


def test_sign_in_shows_the_user_everywhere_and_sign_out(
    chrome: WebDriver, stack: Stack, user: Client
) -> None:
    chrome.get(f"{stack.url}/environments")
    assert "/login" in chrome.current_url  # not signed in: the sign-in page
    chrome.find_element(By.ID, "username").send_keys(user.user.username)
    chrome.find_element(By.ID, "password").send_keys("wrong-password")
    browser.follow(chrome, chrome.find_element(By.ID, "sign-in"))
    assert "Wrong username or password" in chrome.find_element(By.ID, "error").text

    browser.sign_in(chrome, stack.url, user.user.username, PASSWORD)
    cookie = chrome.get_cookie("darb_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    for path in ("/environments", "/jobs", "/groups", "/environments/new"):
        chrome.get(stack.url + path)
        assert chrome.find_element(By.ID, "current-user").text == user.user.username
    session = stack.api.own_connection(cookie["value"])
    me = users_pb2.GetCurrentUserRequest()
    assert session.call(session.users.GetCurrentUser, me).user.id == user.user.id
    browser.follow(chrome, chrome.find_element(By.ID, "sign-out"))
    browser.wait_for(chrome, lambda c: "/login" in c.current_url)
    chrome.get(f"{stack.url}/environments")
    assert "/login" in chrome.current_url
    # The session ended on the control plane too: a copy of the cookie is worth nothing.
    with pytest.raises(grpc.RpcError) as refused:
        session.call(session.users.GetCurrentUser, me)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_create_from_the_form_and_watch_the_job_live(
    signed_in: WebDriver, stack: Stack, slow_channel: tuple[str, str]
) -> None:
    chrome = signed_in
    channel, package = slow_channel
    chrome.get(f"{stack.url}/environments")
    browser.follow(chrome, chrome.find_element(By.ID, "new-environment"))

    # The server's refusal is shown next to the form, as text.
    chrome.find_element(By.ID, "name").send_keys("Not<Valid>")
    chrome.find_element(By.ID, "packages").send_keys("acme-core")
    browser.follow(chrome, chrome.find_element(By.ID, "create"))
    error = chrome.find_element(By.ID, "create-error").text
    assert "Not<Valid>" in error and "a-z" in error

    name = _name("live")
    field = chrome.find_element(By.ID, "name")
    field.clear()
    field.send_keys(name)
    chrome.find_element(By.ID, "channels").send_keys(channel)
    packages = chrome.find_element(By.ID, "packages")
    packages.clear()
    packages.send_keys(package)
    browser.follow(chrome, chrome.find_element(By.ID, "create"))
    browser.wait_for(chrome, lambda c: "/jobs/" in c.current_url)
    # A marker in the page's window: it survives only if the page is never reloaded.
    chrome.execute_script("window.darbMarker = 'same page';")
    first_status = chrome.find_element(By.ID, "job").get_attribute("data-status")

    _wait_job_done(chrome)
    assert chrome.execute_script("return window.darbMarker") == "same page"
    assert first_status in ("pending", "running"), first_status  # it ran while we watched
    lines = _log_lines(chrome)
    assert any(f"linking {package}" in line for line in lines), lines
    assert chrome.find_element(By.ID, "elapsed").text.endswith("s")
    assert not chrome.find_element(By.ID, "cancel-form").is_displayed()

    browser.follow(chrome, chrome.find_element(By.LINK_TEXT, name))
    assert chrome.find_element(By.ID, "env-status").text == "ready"
    assert package in _installed(chrome)


def test_install_and_remove_packages(signed_in: WebDriver, stack: Stack, user: Client) -> None:
    chrome = signed_in
    environment = _ready_env(user, ["acme-core"])
    chrome.get(f"{stack.url}/environments/{environment.id}")
    chrome.find_element(By.ID, "install-packages").send_keys("acme-extras")
    browser.follow(chrome, chrome.find_element(By.ID, "install"))
    _wait_job_done(chrome)
    chrome.get(f"{stack.url}/environments/{environment.id}")
    assert {"acme-core", "acme-utils", "acme-extras"} <= _installed(chrome)

    # The installed table is searchable and sortable in the page.
    chrome.find_element(By.ID, "package-search").send_keys("extras")
    visible = [
        r for r in chrome.find_elements(By.CSS_SELECTOR, "#packages tbody tr") if r.is_displayed()
    ]
    assert [row.get_attribute("data-name") for row in visible] == ["acme-extras"]
    chrome.find_element(By.ID, "package-search").clear()
    chrome.find_element(By.ID, "package-search").send_keys(" ")
    chrome.find_element(By.CSS_SELECTOR, "#packages th:nth-child(1)").click()
    chrome.find_element(By.CSS_SELECTOR, "#packages th:nth-child(1)").click()  # descending
    names = [
        row.get_attribute("data-name")
        for row in chrome.find_elements(By.CSS_SELECTOR, "#packages tbody tr")
    ]
    assert names == sorted(names, reverse=True)

    browser.follow(
        chrome, chrome.find_element(By.CSS_SELECTOR, "button.remove[data-package='acme-extras']")
    )
    _wait_job_done(chrome)
    chrome.get(f"{stack.url}/environments/{environment.id}")
    assert "acme-extras" not in _installed(chrome)
    assert [
        row.get_attribute("data-name")
        for row in chrome.find_elements(By.CSS_SELECTOR, "#specs tbody tr")
    ] == ["acme-core"]


def test_diff_of_two_versions_and_rollback(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome = signed_in
    environment = _ready_env(user, ["acme-core"])
    job = user.install(environment.id, ["acme-utils"])
    assert user.wait(job.id).status == common_pb2.JOB_STATUS_COMPLETED

    chrome.get(f"{stack.url}/environments/{environment.id}/history")
    rows = chrome.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    assert [row.get_attribute("data-version") for row in rows] == ["2", "1"]
    assert user.user.username in rows[0].text and "acme-utils" in rows[0].text
    Select(chrome.find_element(By.ID, "diff-from")).select_by_value("1")
    Select(chrome.find_element(By.ID, "diff-to")).select_by_value("2")
    browser.follow(chrome, chrome.find_element(By.ID, "compare"))
    added = chrome.find_elements(By.CSS_SELECTOR, "#diff-packages li.added")
    assert [item.get_attribute("data-name") for item in added] == ["acme-utils"]
    assert "acme-utils" in chrome.find_element(By.ID, "diff").text

    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "tr[data-version='1'] a.rollback"))
    assert "version 1" in chrome.find_element(By.TAG_NAME, "h1").text  # the confirmation
    browser.follow(chrome, chrome.find_element(By.ID, "confirm-rollback"))
    browser.wait_for(chrome, lambda c: "/jobs/" in c.current_url)
    _wait_job_done(chrome)
    assert "rollback" in chrome.find_element(By.TAG_NAME, "h1").text
    chrome.get(f"{stack.url}/environments/{environment.id}")
    assert "acme-utils" not in _installed(chrome)
    chrome.get(f"{stack.url}/environments/{environment.id}/history")
    newest = chrome.find_element(By.CSS_SELECTOR, "#versions tbody tr")
    assert newest.get_attribute("data-version") == "3" and "version 1" in newest.text


def test_share_with_a_second_user(
    signed_in: WebDriver, second_chrome: WebDriver, stack: Stack, user: Client
) -> None:
    chrome = signed_in
    environment = _ready_env(user, ["acme-core"])
    other = stack.api.new_user()

    chrome.get(f"{stack.url}/environments/{environment.id}/sharing")
    Select(chrome.find_element(By.ID, "share-kind")).select_by_value("user")
    chrome.find_element(By.ID, "share-name").send_keys(other.user.username)
    Select(chrome.find_element(By.ID, "share-role")).select_by_value("editor")
    browser.follow(chrome, chrome.find_element(By.ID, "share"))
    row = chrome.find_element(By.CSS_SELECTOR, f"tr[data-member='user:{other.user.username}']")
    assert row.find_element(By.CLASS_NAME, "role").text == "editor"

    browser.sign_in(second_chrome, stack.url, other.user.username, PASSWORD)
    second_chrome.get(f"{stack.url}/environments?scope=shared")
    listed = second_chrome.find_element(By.CSS_SELECTOR, f"tr[data-env-id='{environment.id}']")
    assert environment.name in listed.text and user.user.username in listed.text
    assert listed.find_element(By.CLASS_NAME, "role").text == "editor"
    for role, shown in (("EDITOR", True), ("VIEWER", False), ("OWNER", False)):
        second_chrome.get(f"{stack.url}/environments?role={role}")
        rows = second_chrome.find_elements(By.CSS_SELECTOR, f"tr[data-env-id='{environment.id}']")
        assert bool(rows) is shown, role
    second_chrome.get(f"{stack.url}/environments?scope=mine")
    assert not second_chrome.find_elements(By.CSS_SELECTOR, f"tr[data-env-id='{environment.id}']")

    second_chrome.get(f"{stack.url}/environments/{environment.id}")
    assert second_chrome.find_element(By.ID, "my-role").text == "editor"
    assert not second_chrome.find_elements(By.ID, "delete")  # editors may not delete
    assert second_chrome.find_elements(By.ID, "install")  # but may install
    second_chrome.get(f"{stack.url}/environments/{environment.id}/sharing")
    assert not second_chrome.find_elements(By.ID, "share")  # nor change the sharing

    # The owner removes them: their page is then a 404, as for any environment they
    # may not see.
    browser.follow(
        chrome,
        chrome.find_element(
            By.CSS_SELECTOR, f"tr[data-member='user:{other.user.username}'] button.remove-member"
        ),
    )
    second_chrome.get(f"{stack.url}/environments/{environment.id}")
    assert second_chrome.find_element(By.ID, "error-title").text == "Not found"


def test_a_log_line_of_html_shows_as_text(signed_in: WebDriver, stack: Stack, user: Client) -> None:
    """The line is added to a finished job's log where the control plane keeps logs, as
    an agent's output would be (no fixture package can print it); the page must show it
    as text, in the stderr style, and run nothing."""
    chrome = signed_in
    created = user.create(_name("xss"), ["acme-core"])
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        # Enough lines to scroll, then the HTML one.
        for text, stream in [*((f"filler {n}", "stdout") for n in range(200)), (XSS, "stderr")]:
            conn.execute(
                "INSERT INTO job_log_lines (job_id, seq, stream, time, text)"
                " SELECT %s, max(seq) + 1, %s, now(), %s FROM job_log_lines WHERE job_id = %s",
                (created.job.id, stream, text, created.job.id),
            )
    chrome.get(f"{stack.url}/jobs/{created.job.id}")
    _wait_job_done(chrome)
    # The log followed its end; scrolling up stops that.
    log = chrome.find_element(By.ID, "log")
    at_end = "return arguments[0].scrollTop + arguments[0].clientHeight"
    assert chrome.execute_script(at_end, log) >= log.get_property("scrollHeight") - 8
    chrome.execute_script("arguments[0].scrollTop = 0", log)
    job = chrome.find_element(By.ID, "job")
    browser.wait_for(chrome, lambda c: job.get_attribute("data-follow") == "no")
    lines = chrome.find_elements(By.CSS_SELECTOR, "#log .line")
    assert lines[-1].text == XSS
    assert "stderr" in (lines[-1].get_attribute("class") or "")
    assert "stdout" in (lines[0].get_attribute("class") or "")
    assert not chrome.find_elements(By.CSS_SELECTOR, "#log img")
    try:
        alert = chrome.switch_to.alert
        raise AssertionError(f"the log line ran as HTML: alert {alert.text!r}")
    except NoAlertPresentException:
        pass


def test_security_headers_and_a_post_without_csrf_is_refused(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    environment = _ready_env(user, ["acme-core"])
    session = signed_in.get_cookie("darb_session")
    assert session is not None
    cookie = f"darb_session={session['value']}"
    page = urllib.request.Request(f"{stack.url}/environments", headers={"Cookie": cookie})
    with urllib.request.urlopen(page) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "script-src 'self'" in policy

    # A signed-in user's browser tricked into posting (the cookie is sent, no token).
    request = urllib.request.Request(
        f"{stack.url}/environments/{environment.id}/delete",
        data=b"confirm=1",
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request)
        raise AssertionError("a POST without its CSRF token was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    forged = urllib.request.Request(
        f"{stack.url}/environments/{environment.id}/delete",
        data=b"csrf=" + b"0" * 64,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        urllib.request.urlopen(forged)
        raise AssertionError("a POST with a wrong CSRF token was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    assert user.get_env(environment.id).status == common_pb2.ENVIRONMENT_STATUS_READY


def test_an_environment_the_user_may_not_see_is_a_404(signed_in: WebDriver, stack: Stack) -> None:
    stranger = stack.api.new_user()
    hidden = _ready_env(stranger, ["acme-core"])
    signed_in.get(f"{stack.url}/environments/{hidden.id}")
    assert signed_in.find_element(By.ID, "error-title").text == "Not found"
    assert "Traceback" not in signed_in.page_source
