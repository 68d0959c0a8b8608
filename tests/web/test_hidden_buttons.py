"""Buttons a member may not use are not on their pages, in headless Chromium: a viewer
gets no install form, Remove, Roll back or Cancel; an editor no remove-member button. Each
is first seen on the owner's page in the same state, so its absence is about the role."""

from __future__ import annotations

import time
import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from darb.v1 import common_pb2, jobs_pb2
from testkit import browser
from testkit.control_plane import Client
from tests.web.conftest import PASSWORD, Stack

OWNER, EDITOR, VIEWER = common_pb2.ROLE_OWNER, common_pb2.ROLE_EDITOR, common_pb2.ROLE_VIEWER
ENVIRONMENT_BUTTONS = ("#install-form", "#install", "button.remove", "#delete")
ROLLBACK = "a.rollback"
CANCEL = "#cancel-form, #cancel"


def _shown(chrome: WebDriver, selectors: tuple[str, ...] | str) -> set[str]:
    """The selectors that match something on the page."""
    chosen = (selectors,) if isinstance(selectors, str) else selectors
    return {selector for selector in chosen if chrome.find_elements(By.CSS_SELECTOR, selector)}


def _shared(
    user: Client, stack: Stack, role: int, packages: list[str], channels: list[str]
) -> tuple[common_pb2.Environment, Client]:
    """A new ready environment of ``user`` shared with a new member as ``role``."""
    created = user.create(f"shared-{uuid.uuid4().hex[:8]}", packages, channels)
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    member = stack.api.new_user()
    members = {f"user:{user.user.username}": OWNER, f"user:{member.user.username}": role}
    user.set_policy(created.environment.id, members)
    return created.environment, member


def _running(user: Client, job_id: str) -> bool:
    return user.get_job(job_id).status == common_pb2.JOB_STATUS_RUNNING


def _wait_running(user: Client, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _running(user, job_id):
        assert time.monotonic() < deadline, user.get_job(job_id)
        time.sleep(0.1)


def test_a_viewer_sees_no_install_remove_rollback_or_cancel(
    signed_in: WebDriver,
    second_chrome: WebDriver,
    stack: Stack,
    user: Client,
    channel_url: str,
    download_channel: tuple[str, str, str],
) -> None:
    owner = signed_in
    slow, _, large = download_channel
    environment, viewer = _shared(user, stack, VIEWER, ["acme-core"], [channel_url, slow])
    installed = user.install(environment.id, ["acme-utils"])  # a version 2: 1 can be rolled back to
    assert user.wait(installed.id).status == common_pb2.JOB_STATUS_COMPLETED
    browser.sign_in(second_chrome, stack.url, viewer.user.username, PASSWORD)
    page, history = f"/environments/{environment.id}", f"/environments/{environment.id}/history"
    for chrome in (owner, second_chrome):
        chrome.get(stack.url + page)
    assert second_chrome.find_element(By.ID, "my-role").text == "viewer"
    assert _shown(owner, ENVIRONMENT_BUTTONS) == set(ENVIRONMENT_BUTTONS)
    assert _shown(second_chrome, ENVIRONMENT_BUTTONS) == set()
    assert second_chrome.find_elements(By.CSS_SELECTOR, "#specs tbody tr[data-name]")  # the rows
    for chrome in (owner, second_chrome):
        chrome.get(stack.url + history)
    assert _shown(owner, ROLLBACK) and not _shown(second_chrome, ROLLBACK)
    assert len(second_chrome.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 2

    job = user.install(environment.id, [large])  # seconds of download over slow HTTP
    _wait_running(user, job.id)
    for chrome in (owner, second_chrome):
        chrome.get(f"{stack.url}/jobs/{job.id}")
    assert _shown(owner, CANCEL) == {CANCEL}
    assert owner.find_element(By.ID, "cancel").is_displayed()
    assert not _shown(second_chrome, CANCEL)
    assert _running(user, job.id)  # all along: the owner's Cancel is that of a running job
    user.call(user.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job.id))
    assert user.wait(job.id).status == common_pb2.JOB_STATUS_CANCELLED


def test_an_editor_sees_no_remove_member_buttons(
    signed_in: WebDriver, second_chrome: WebDriver, stack: Stack, user: Client
) -> None:
    owner = signed_in
    environment, editor = _shared(user, stack, EDITOR, ["acme-core"], [])
    browser.sign_in(second_chrome, stack.url, editor.user.username, PASSWORD)
    sharing = f"{stack.url}/environments/{environment.id}/sharing"
    for chrome in (owner, second_chrome):
        chrome.get(sharing)
    members = {f"user:{user.user.username}", f"user:{editor.user.username}"}
    for chrome in (owner, second_chrome):
        rows = chrome.find_elements(By.CSS_SELECTOR, "#members tbody tr")
        assert {row.get_attribute("data-member") for row in rows} == members
    assert len(owner.find_elements(By.CSS_SELECTOR, "button.remove-member")) == len(members)
    assert not second_chrome.find_elements(By.CSS_SELECTOR, "button.remove-member")
    assert not second_chrome.find_elements(By.CSS_SELECTOR, "form[action$='/sharing/remove']")
