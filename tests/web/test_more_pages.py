"""More of the web UI in headless Chromium: lists and filters, imports, progress and
cancel, users and groups, several copies of the web process."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.timestamp_pb2 import Timestamp
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from darb.v1 import common_pb2, environments_pb2
from services.web.app import make_app
from services.web.pages.common import API
from services.web.security import SESSION_COOKIE
from shared.config import WebSettings
from testkit import browser
from testkit.control_plane import ADMIN_PASSWORD, Client
from testkit.web import NoRedirect, start_web
from tests.web.conftest import DOWNLOAD_BYTES, PASSWORD, Stack

BYTES = re.compile(r"[\d.]+ (B|KB|MB) / [\d.]+ MB")  # the progress bar's "3.1 MB / 12.0 MB"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _listed(chrome: WebDriver) -> set[str]:
    links = chrome.find_elements(By.CSS_SELECTOR, "#environments a.env-link")
    return {link.text for link in links}


def _utc(timestamp: Timestamp) -> str:
    """A time as the pages show it."""
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _job_status(chrome: WebDriver) -> str:
    return chrome.find_element(By.ID, "job-status").text


def _wait_ended(chrome: WebDriver) -> str:
    browser.wait_for(
        chrome, lambda c: c.find_element(By.ID, "job").get_attribute("data-stream") == "ended"
    )
    return _job_status(chrome)


def test_the_list_filters_by_status_name_and_owner(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome = signed_in
    good, bad = _name("good"), _name("bad")
    ready = user.create(good, ["acme-core"])
    failed = user.create(bad, ["acme-broken"])
    user.wait(ready.job.id)
    assert user.wait(failed.job.id).status == common_pb2.JOB_STATUS_FAILED
    time.sleep(1)  # so that this install changes `good` in a later second than its creation
    installed = user.install(ready.environment.id, ["acme-utils"])
    assert user.wait(installed.id).status == common_pb2.JOB_STATUS_COMPLETED

    chrome.get(f"{stack.url}/environments")
    assert {good, bad} <= _listed(chrome)
    row = chrome.find_element(By.CSS_SELECTOR, f"tr[data-env-id='{failed.environment.id}']")
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == "failed"
    assert row.find_element(By.CLASS_NAME, "role").text == "owner"
    # "Last change" is the environment's update time, not its creation.
    headers = [th.text for th in chrome.find_elements(By.CSS_SELECTOR, "#environments thead th")]
    row = chrome.find_element(By.CSS_SELECTOR, f"tr[data-env-id='{ready.environment.id}']")
    last_change = row.find_elements(By.TAG_NAME, "td")[headers.index("Last change")].text
    environment = user.get_env(ready.environment.id)
    assert last_change == _utc(environment.updated_at) != _utc(environment.created_at)

    Select(chrome.find_element(By.NAME, "status")).select_by_value("FAILED")
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "#filters button"))
    assert _listed(chrome) == {bad}
    chrome.get(f"{stack.url}/environments?name={good}&scope=mine")
    assert _listed(chrome) == {good}
    chrome.get(f"{stack.url}/environments?scope=shared")
    assert not _listed(chrome) & {good, bad}

    # An admin, who may view every environment, is shown as "shared" only the shares.
    private, granted = _name("private"), _name("granted")
    user.create(private, ["acme-core"])
    granted_id = user.create(granted, ["acme-core"]).environment.id
    owner = f"user:{user.user.username}"
    user.set_policy(
        granted_id, {owner: common_pb2.ROLE_OWNER, "user:admin": common_pb2.ROLE_VIEWER}
    )
    chrome.delete_all_cookies()
    browser.sign_in(chrome, stack.url, "admin", ADMIN_PASSWORD)
    chrome.get(f"{stack.url}/environments?scope=shared")
    assert granted in _listed(chrome) and not _listed(chrome) & {private, good, bad}
    chrome.delete_all_cookies()
    browser.sign_in(chrome, stack.url, user.user.username, PASSWORD)

    # A failed create: its page shows the error at the top.
    chrome.get(f"{stack.url}/jobs/{failed.job.id}")
    assert _wait_ended(chrome) == "failed"
    error, log = chrome.find_element(By.ID, "job-error"), chrome.find_element(By.ID, "log")
    assert "acme-broken" in error.text
    assert error.is_displayed() and error.location["y"] < log.location["y"]  # at the top
    follows = "return arguments[0].compareDocumentPosition(arguments[1])"
    assert chrome.execute_script(follows, error, log) & 4  # DOCUMENT_POSITION_FOLLOWING


def test_import_a_pixi_toml_with_its_lock_and_an_environment_yml(
    signed_in: WebDriver, stack: Stack, user: Client, tmp_path: Path
) -> None:
    chrome = signed_in
    source = user.create(_name("source"), ["acme-core ==1.0", "acme-utils"])
    assert user.wait(source.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    export = user.call(
        user.envs.ExportEnvironment,
        environments_pb2.ExportEnvironmentRequest(id=source.environment.id),
    )
    # The manifest allows 1.1 too: only the lock keeps the copy at 1.0.
    looser = export.manifest.replace('acme-core = "==1.0"', 'acme-core = "<2"')
    assert looser != export.manifest, export.manifest
    (tmp_path / "pixi.toml").write_text(looser)
    (tmp_path / "pixi.lock").write_text(export.lockfile)

    chrome.get(f"{stack.url}/environments/new")
    copy = _name("copy")
    chrome.find_element(By.ID, "name").send_keys(copy)
    chrome.find_element(By.ID, "import-file").send_keys(str(tmp_path / "pixi.toml"))
    chrome.find_element(By.ID, "lockfile").send_keys(str(tmp_path / "pixi.lock"))
    browser.follow(chrome, chrome.find_element(By.ID, "create"))
    assert _wait_ended(chrome) == "completed"
    browser.follow(chrome, chrome.find_element(By.LINK_TEXT, copy))
    versions = {
        row.get_attribute("data-name"): row.find_elements(By.TAG_NAME, "td")[1].text
        for row in chrome.find_elements(By.CSS_SELECTOR, "#packages tbody tr")
    }
    assert versions == {"acme-core": "1.0", "acme-utils": "1.0"}

    channel = source.environment.channels[0]
    (tmp_path / "environment.yml").write_text(
        f"name: from-yml\nchannels:\n  - {channel}\ndependencies:\n  - acme-tool\n"
    )
    chrome.get(f"{stack.url}/environments/new")
    from_yml = _name("yml")
    chrome.find_element(By.ID, "name").send_keys(from_yml)
    chrome.find_element(By.ID, "import-file").send_keys(str(tmp_path / "environment.yml"))
    browser.follow(chrome, chrome.find_element(By.ID, "create"))
    assert _wait_ended(chrome) == "completed"
    browser.follow(chrome, chrome.find_element(By.LINK_TEXT, from_yml))
    assert "acme-tool" in {
        row.get_attribute("data-name")
        for row in chrome.find_elements(By.CSS_SELECTOR, "#packages tbody tr")
    }


def test_progress_shows_while_a_job_runs_and_cancel_stops_it(
    signed_in: WebDriver, stack: Stack, user: Client, download_channel: tuple[str, str, str]
) -> None:
    """The large package downloads for seconds over slow HTTP: the page shows the
    progress while it does, and cancelling ends the job and hides it."""
    chrome = signed_in
    channel, small, large = download_channel
    name = _name("big")
    created = user.create(name, [small], [channel])
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    chrome.get(f"{stack.url}/environments/{created.environment.id}")
    chrome.find_element(By.ID, "install-packages").send_keys(large)
    browser.follow(chrome, chrome.find_element(By.ID, "install"))
    browser.wait_for(chrome, lambda c: "/jobs/" in c.current_url)
    job = chrome.find_element(By.ID, "job")
    browser.wait_for(chrome, lambda c: job.get_attribute("data-phases"))
    assert chrome.find_element(By.ID, "progress").is_displayed()
    assert chrome.find_element(By.ID, "progress-phase").text
    bar = chrome.find_element(By.ID, "progress-bar")
    count = chrome.find_element(By.ID, "progress-count")
    browser.wait_for(chrome, lambda c: BYTES.fullmatch(count.text))
    first = float(bar.get_property("value") or 0)
    browser.wait_for(chrome, lambda c: float(bar.get_property("value") or 0) > first)
    assert float(bar.get_property("max") or 0) >= DOWNLOAD_BYTES
    assert _job_status(chrome) == "running"  # the bar rose while the job ran
    browser.follow(chrome, chrome.find_element(By.ID, "cancel"))
    assert _wait_ended(chrome) == "cancelled"
    assert not chrome.find_element(By.ID, "progress").is_displayed()

    chrome.get(f"{stack.url}/jobs")
    rows = chrome.find_elements(By.CSS_SELECTOR, "#job-list tbody tr")
    assert rows[0].find_element(By.CSS_SELECTOR, ".badge").text == "cancelled"  # newest first
    assert large in rows[0].text and name in rows[0].text


def test_admins_manage_users(chrome: WebDriver, stack: Stack, user: Client) -> None:
    browser.sign_in(chrome, stack.url, user.user.username, PASSWORD)
    assert not chrome.find_elements(By.LINK_TEXT, "Users")  # not an admin
    chrome.get(f"{stack.url}/admin/users")
    assert chrome.find_element(By.ID, "error-title").text == "Forbidden"
    chrome.delete_all_cookies()

    browser.sign_in(chrome, stack.url, "admin", ADMIN_PASSWORD)
    browser.follow(chrome, chrome.find_element(By.LINK_TEXT, "Users"))
    newcomer = f"n{uuid.uuid4().hex[:10]}"
    chrome.find_element(By.ID, "new-username").send_keys(newcomer)
    chrome.find_element(By.ID, "new-password").send_keys("a-good-password")
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "#create-user button"))
    row = f"tr[data-username='{newcomer}']"
    browser.follow(
        chrome, chrome.find_element(By.CSS_SELECTOR, f"{row} button[value='make-admin']")
    )
    assert chrome.find_elements(By.CSS_SELECTOR, f"{row} button[value='revoke-admin']")
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, f"{row} button[value='disable']"))
    assert chrome.find_elements(By.CSS_SELECTOR, f"{row} button[value='enable']")

    # The same username again: the server's message, readable.
    chrome.find_element(By.ID, "new-username").send_keys(newcomer)
    chrome.find_element(By.ID, "new-password").send_keys("a-good-password")
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "#create-user button"))
    assert newcomer in chrome.find_element(By.ID, "error").text

    chrome.delete_all_cookies()
    chrome.get(f"{stack.url}/login")
    chrome.find_element(By.ID, "username").send_keys(newcomer)
    chrome.find_element(By.ID, "password").send_keys("a-good-password")
    browser.follow(chrome, chrome.find_element(By.ID, "sign-in"))
    assert chrome.find_element(By.ID, "error").text  # disabled: cannot sign in


def test_groups_and_sharing_with_a_group(signed_in: WebDriver, stack: Stack, user: Client) -> None:
    chrome = signed_in
    member = stack.api.new_user()
    group = f"g{uuid.uuid4().hex[:10]}"
    chrome.get(f"{stack.url}/groups")
    chrome.find_element(By.ID, "group-name").send_keys(group)
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "#create-group button"))
    browser.wait_for(chrome, lambda c: c.current_url.endswith(f"/groups/{group}"))
    chrome.find_element(By.ID, "member-name").send_keys(member.user.username)
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "#add-member button"))
    row = f"#group-members tr[data-username='{member.user.username}']"
    assert chrome.find_elements(By.CSS_SELECTOR, row)

    environment = user.create(_name("team"), ["acme-core"]).environment
    chrome.get(f"{stack.url}/environments/{environment.id}/sharing")
    Select(chrome.find_element(By.ID, "share-kind")).select_by_value("group")
    chrome.find_element(By.ID, "share-name").send_keys(group)
    Select(chrome.find_element(By.ID, "share-role")).select_by_value("viewer")
    browser.follow(chrome, chrome.find_element(By.ID, "share"))
    shared = chrome.find_element(By.CSS_SELECTOR, f"tr[data-member='group:{group}']")
    assert shared.find_element(By.CLASS_NAME, "role").text == "viewer"
    # A stale page (another owner changed the policy since) is refused, not overwritten.
    stale_etag = chrome.find_element(By.CSS_SELECTOR, "#share-form input[name=etag]")
    chrome.execute_script("arguments[0].value = 'stale'", stale_etag)
    chrome.find_element(By.ID, "share-name").send_keys("someone")
    browser.follow(chrome, chrome.find_element(By.ID, "share"))
    assert "changed the sharing meanwhile" in chrome.find_element(By.ID, "error").text

    chrome.get(f"{stack.url}/groups/{group}")
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, f"{row} button"))
    assert not chrome.find_elements(By.CSS_SELECTOR, row)
    delete = chrome.find_element(By.CSS_SELECTOR, "form.danger-zone button")
    browser.follow(chrome, delete, confirm=True)  # after the confirmation dialog
    browser.wait_for(chrome, lambda c: c.current_url.endswith("/groups"))
    assert group not in chrome.find_element(By.ID, "groups").text


def test_several_copies_serve_one_session(
    signed_in: WebDriver, stack: Stack, user: Client, tmp_path: Path
) -> None:
    """The web process keeps nothing: a page from one copy posts to another."""
    created = user.create(_name("copies"), ["acme-core"])
    user.wait(created.job.id)
    environment = created.environment
    other = start_web(stack.api.addr, tmp_path / "web2.log")
    try:
        session = signed_in.get_cookie("darb_session")
        assert session is not None
        cookie = f"darb_session={session['value']}"
        page = urllib.request.Request(
            f"{stack.url}/environments/{environment.id}", headers={"Cookie": cookie}
        )
        with urllib.request.urlopen(page) as response:
            html = response.read().decode()
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert match is not None
        form = urllib.parse.urlencode({"csrf": match.group(1), "packages": "acme-utils"})
        post = urllib.request.Request(
            f"{other.url}/environments/{environment.id}/install",
            data=form.encode(),
            headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            urllib.request.build_opener(NoRedirect).open(post)
            raise AssertionError("expected a redirect to the job")
        except urllib.error.HTTPError as exc:
            assert exc.code == 302 and exc.headers["Location"].startswith("/jobs/")
        signed_in.get(f"{other.url}/environments")
        assert signed_in.find_element(By.ID, "current-user").text == user.user.username
    finally:
        other.stop()


def test_a_stale_session_goes_to_sign_in_and_404_is_a_404(
    chrome: WebDriver, stack: Stack, browser_available: None
) -> None:
    chrome.get(f"{stack.url}/login")
    chrome.add_cookie({"name": "darb_session", "value": "not-a-token", "path": "/"})
    chrome.get(f"{stack.url}/environments")
    assert "/login" in chrome.current_url
    try:
        urllib.request.urlopen(f"{stack.url}/no/such/page")
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        assert "Traceback" not in exc.read().decode()


def test_export_and_delete_with_confirmation(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome = signed_in
    name = _name("doomed")
    created = user.create(name, ["acme-core"])
    user.wait(created.job.id)
    env_id = created.environment.id
    chrome.get(f"{stack.url}/environments/{env_id}")

    session = chrome.get_cookie("darb_session")
    assert session is not None
    for link, needle in (("export-manifest", "[workspace]"), ("export-lock", "packages:")):
        href = chrome.find_element(By.ID, link).get_attribute("href")
        assert href is not None
        download = urllib.request.Request(
            href, headers={"Cookie": f"darb_session={session['value']}"}
        )
        with urllib.request.urlopen(download) as response:
            assert response.headers["Content-Disposition"].startswith("attachment")
            assert needle in response.read().decode()

    browser.follow(chrome, chrome.find_element(By.ID, "delete"))
    assert name in chrome.find_element(By.TAG_NAME, "h1").text  # the confirmation page
    assert user.get_env(env_id).status == common_pb2.ENVIRONMENT_STATUS_READY  # not yet
    browser.follow(chrome, chrome.find_element(By.ID, "confirm-delete"))
    assert _wait_ended(chrome) == "completed"
    assert "delete" in chrome.find_element(By.TAG_NAME, "h1").text
    chrome.get(f"{stack.url}/environments")
    assert name not in _listed(chrome)


def test_a_job_page_made_while_its_environment_is_deleted(stack: Stack, user: Client) -> None:
    """The race behind a delete's page (it opens just as its job ends), arranged: the web
    app runs in this process against the real control plane, and its environment is
    deleted for real between the page's GetEnvironment and its permission check. The page
    still shows the job, without the environment's link."""
    created = user.create(_name("racing"), ["acme-core"])
    user.wait(created.job.id)
    env_id = created.environment.id

    def delete() -> None:
        request = environments_pb2.DeleteEnvironmentRequest(id=env_id)
        deleted = user.wait(user.call(user.envs.DeleteEnvironment, request).job.id)
        assert deleted.status == common_pb2.JOB_STATUS_COMPLETED

    async def page() -> tuple[int, str]:
        app = make_app(WebSettings(addr="127.0.0.1:0", api_addr=stack.api.addr))
        async with TestClient(TestServer(app)) as client:
            api = app[API]
            real_call = api.call

            async def call(method: Any, message: Any, token: str = "") -> Any:
                response = await real_call(method, message, token)
                if isinstance(message, environments_pb2.GetEnvironmentRequest):
                    await asyncio.to_thread(delete)
                return response

            api.call = call  # type: ignore[method-assign]
            cookie = {"Cookie": f"{SESSION_COOKIE}={user.token}"}
            response = await client.get(f"/jobs/{created.job.id}", headers=cookie)
            return response.status, await response.text()

    status, html = asyncio.run(page())
    assert status == 200, html
    assert 'id="job"' in html and created.job.id in html
    assert f'href="/environments/{env_id}"' not in html
    assert user.get_job(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
