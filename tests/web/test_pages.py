"""The web UI in a real headless Chromium against the real stack (see conftest.py)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC
from email.message import Message
from pathlib import Path

import grpc
import psycopg
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from darb.v1 import common_pb2, environments_pb2, users_pb2
from testkit import browser
from testkit.control_plane import Client
from testkit.postgres import libpq_url
from testkit.proxy import Proxy
from testkit.web import start_web
from tests.web.conftest import PASSWORD, Stack, csp_violations

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
    lines = "return Array.from(document.querySelectorAll('#log .line'), l => l.textContent)"
    return list(chrome.execute_script(lines))


def _job_status(chrome: WebDriver) -> str:
    return chrome.find_element(By.ID, "job-status").text


def _seconds(elapsed: str) -> int:
    """The job page's elapsed time ("1h 2m 3s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", elapsed)
    assert parts, elapsed
    return sum(int(number) * units[unit] for number, unit in parts)


def _at_end(chrome: WebDriver, log: WebElement) -> bool:
    """Whether the log shows its last line, read in one script: lines arriving between
    two reads would move the end."""
    box = "arguments[0]"
    end = f"return {box}.scrollTop + {box}.clientHeight >= {box}.scrollHeight - 8"
    return bool(chrome.execute_script(end, log))


def _wait_more_lines(chrome: WebDriver) -> None:
    """Waits until more log lines have arrived than the page shows now."""
    count = len(chrome.find_elements(By.CSS_SELECTOR, "#log .line"))
    browser.wait_for(chrome, lambda c: len(c.find_elements(By.CSS_SELECTOR, "#log .line")) > count)


def _assert_strict_policy(headers: Message, what: str) -> None:
    policy = headers.get("Content-Security-Policy") or ""
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, (what, policy)


def _diff(chrome: WebDriver, old: str, new: str) -> dict[str, list[str]]:
    """On a history page: compares two versions; the installed packages' diff, each kind
    (added, removed, changed, same) with the names listed under it."""
    Select(chrome.find_element(By.ID, "diff-from")).select_by_value(old)
    Select(chrome.find_element(By.ID, "diff-to")).select_by_value(new)
    browser.follow(chrome, chrome.find_element(By.ID, "compare"))
    kinds: dict[str, list[str]] = {}
    for item in chrome.find_elements(By.CSS_SELECTOR, "#diff-packages li"):
        names = kinds.setdefault(item.get_attribute("class") or "", [])
        names.append(item.get_attribute("data-name") or "")
    return kinds


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
    signed_in: WebDriver, stack: Stack, chatty_channel: tuple[str, str, str]
) -> None:
    chrome = signed_in
    channel, package, large = chatty_channel
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

    # Lines of the download show while it goes on, and the elapsed time counts up.
    progress = re.compile(rf"downloading {large} .*: \d+%")  # "… 1.0 h0_0: 10%"
    browser.wait_for(chrome, lambda c: any(progress.search(t) for t in _log_lines(c)))
    assert _job_status(chrome) in ("pending", "running")
    before = _seconds(chrome.find_element(By.ID, "elapsed").text)
    time.sleep(2.2)
    after = _seconds(chrome.find_element(By.ID, "elapsed").text)
    assert _job_status(chrome) == "running"  # still: both readings are of a running job
    assert after > before, (before, after)

    _wait_job_done(chrome)
    assert chrome.execute_script("return window.darbMarker") == "same page"
    lines = _log_lines(chrome)
    assert any(f"linking {package}" in line for line in lines), lines
    assert not chrome.find_element(By.ID, "cancel-form").is_displayed()

    browser.follow(chrome, chrome.find_element(By.LINK_TEXT, name))
    assert chrome.find_element(By.ID, "env-status").text == "ready"
    assert package in _installed(chrome)


def test_the_log_follows_a_running_job_until_scrolled_up(
    signed_in: WebDriver, stack: Stack, user: Client, chatty_channel: tuple[str, str, str]
) -> None:
    """While lines keep arriving: the log shows the newest at first; scrolled to the top
    it stays there; scrolled back to the end it follows again."""
    chrome = signed_in
    channel, package, _ = chatty_channel
    created = user.create(_name("scroll"), [package], [channel])
    chrome.get(f"{stack.url}/jobs/{created.job.id}")
    log = chrome.find_element(By.ID, "log")
    overflowing = "return arguments[0].scrollHeight > 2 * arguments[0].clientHeight"
    browser.wait_for(chrome, lambda c: c.execute_script(overflowing, log))
    assert _job_status(chrome) == "running"
    assert _at_end(chrome, log)

    to_top = "arguments[0].scrollTop = 0; return document.getElementById('job').dataset.follow"
    browser.wait_for(chrome, lambda c: c.execute_script(to_top, log) == "no")
    _wait_more_lines(chrome)
    assert log.get_property("scrollTop") == 0

    to_end = (
        "arguments[0].scrollTop = arguments[0].scrollHeight;"
        " return document.getElementById('job').dataset.follow"
    )
    browser.wait_for(chrome, lambda c: c.execute_script(to_end, log) == "yes")
    _wait_more_lines(chrome)
    assert _at_end(chrome, log)
    assert _job_status(chrome) == "running"  # the lines above arrived while it ran
    _wait_job_done(chrome)


def test_the_live_log_resumes_when_the_control_plane_connection_drops(
    signed_in: WebDriver,
    stack: Stack,
    user: Client,
    chatty_channel: tuple[str, str, str],
    tmp_path: Path,
) -> None:
    """A web process whose connection to the control plane breaks while a job runs (a
    TCP proxy between them drops it, as a network failure would): the page says it is
    reconnecting, the browser reconnects, and the log goes on after the last line it got,
    to the job's end: every line once and in order."""
    chrome = signed_in  # the session cookie is the host's, whatever the port
    channel, package, _ = chatty_channel
    created = user.create(_name("drop"), [package], [channel])
    with Proxy(stack.api.addr) as proxy:
        web = start_web(f"127.0.0.1:{proxy.port}", tmp_path / "web.log")
        try:
            chrome.get(f"{web.url}/jobs/{created.job.id}")
            browser.wait_for(chrome, lambda c: len(_log_lines(c)) > 0)
            assert _job_status(chrome) == "running"
            proxy.drop()
            job = chrome.find_element(By.ID, "job")
            browser.wait_for(chrome, lambda _: job.get_attribute("data-reconnects"))
            _wait_job_done(chrome)
        finally:
            web.stop()
    seqs = chrome.execute_script(
        "return Array.from(document.querySelectorAll('#log .line'), l => Number(l.dataset.seq))"
    )
    assert seqs == list(range(1, len(seqs) + 1))
    assert _log_lines(chrome) == user.get_job(created.job.id).logs.splitlines()


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
    listed = user.call(
        user.envs.ListEnvironmentVersions,
        environments_pb2.ListEnvironmentVersionsRequest(environment_id=environment.id),
    )
    when = [
        v.created_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        for v in listed.versions
    ]  # each row's When is its version's time
    assert [row.find_elements(By.TAG_NAME, "td")[3].text for row in rows] == when
    assert _diff(chrome, "1", "2") == {"added": ["acme-utils"], "changed": ["acme-core"]}
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
    # Any two versions, either way round: back from 2, and 1 against its restored copy.
    assert _diff(chrome, "2", "3") == {"removed": ["acme-utils"], "changed": ["acme-core"]}
    requested = chrome.find_elements(By.CSS_SELECTOR, "#diff ul.diff:not(#diff-packages) li")
    assert [
        (item.get_attribute("class"), item.find_element(By.TAG_NAME, "code").text)
        for item in requested
    ] == [("removed", "acme-utils")]
    change = chrome.find_element(By.CSS_SELECTOR, "#diff-packages li.changed").text
    assert re.search(r"acme-core 1\.1 → 2\.0", change), change
    assert _diff(chrome, "3", "1") == {"same": [""]}  # "no change"


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
    assert _at_end(chrome, chrome.find_element(By.ID, "log"))  # a long log opens at its end
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
    _log_as_text(chrome, stack, created.job.id)


def _log_as_text(chrome: WebDriver, stack: Stack, job_id: str) -> None:
    """The job page holds no log (its script streams it); the whole log is at
    ``/jobs/<id>/log``, as plain text the browser must not sniff, for a browser
    without scripts (the page's noscript links it)."""
    session = chrome.get_cookie("darb_session")
    assert session is not None
    cookie = {"Cookie": f"darb_session={session['value']}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{stack.url}/jobs/{job_id}", headers=cookie)
    ) as page:
        html = page.read().decode()
    assert "filler 199" not in html and f'href="/jobs/{job_id}/log"' in html
    with urllib.request.urlopen(
        urllib.request.Request(f"{stack.url}/jobs/{job_id}/log", headers=cookie)
    ) as log:
        assert log.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert log.headers["X-Content-Type-Options"] == "nosniff"
        text = log.read().decode()
    assert "filler 199\n" in text and text.rstrip("\n").endswith(XSS)


def test_security_headers_and_a_post_without_csrf_is_refused(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    created = user.create(_name("env"), ["acme-core"])
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    environment = created.environment
    session = signed_in.get_cookie("darb_session")
    assert session is not None
    cookie = f"darb_session={session['value']}"
    for path in ("/environments", "/static/app.js", f"/jobs/{created.job.id}/events"):
        page = urllib.request.Request(stack.url + path, headers={"Cookie": cookie})
        with urllib.request.urlopen(page) as response:
            _assert_strict_policy(response.headers, path)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{stack.url}/no/such/page")
    assert missing.value.code == 404
    _assert_strict_policy(missing.value.headers, "a 404 page")

    # A signed-in user's browser tricked into posting (the cookie is sent, no token).
    for form in (b"confirm=1", b"csrf=" + b"0" * 64):  # no token, a wrong one
        request = urllib.request.Request(
            f"{stack.url}/environments/{environment.id}/delete",
            data=form,
            headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403, form
        _assert_strict_policy(refused.value.headers, "the 403 page")
    assert user.get_env(environment.id).status == common_pb2.ENVIRONMENT_STATUS_READY

    # The browser enforces the policy, and its console reports a breach: the check every
    # test's browser gets when it closes (conftest.py) can see one.
    signed_in.execute_script(
        "var script = document.createElement('script');"
        " script.textContent = 'window.darbInlineRan = true';"
        " document.body.appendChild(script);"
    )
    assert not signed_in.execute_script("return window.darbInlineRan === true")
    assert any("inline script" in breach for breach in csp_violations(signed_in))


def test_an_environment_the_user_may_not_see_is_a_404(signed_in: WebDriver, stack: Stack) -> None:
    stranger = stack.api.new_user()
    hidden = _ready_env(stranger, ["acme-core"])
    signed_in.get(f"{stack.url}/environments/{hidden.id}")
    assert signed_in.find_element(By.ID, "error-title").text == "Not found"
    assert "Traceback" not in signed_in.page_source
