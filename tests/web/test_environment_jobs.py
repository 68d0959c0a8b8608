"""An environment's page in headless Chromium: its facts (channels), the installed
packages' build and channel, its recent jobs, and the list of all its jobs it links to,
newest first, page by page."""

from __future__ import annotations

import uuid

import grpc
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from services.web.pages.common import PAGE_SIZE
from testkit import browser
from testkit.control_plane import Client
from tests.web.conftest import Stack

RECENT = 10  # the environment page's recent jobs


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _listed_jobs(chrome: WebDriver) -> list[str]:
    rows = chrome.find_elements(By.CSS_SELECTOR, "#job-list tbody tr[data-job-id]")
    return [row.get_attribute("data-job-id") or "" for row in rows]


def _queued_and_cancelled(user: Client, env_id: str, count: int) -> list[str]:
    """``count`` install jobs queued on the environment at once, then cancelled (most end
    while still pending, so the agent is spared them); their ids, oldest first."""
    queued = [user.install(env_id, ["acme-utils"]).id for _ in range(count)]
    for job_id in reversed(queued):
        try:
            user.call(user.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id))
        except grpc.RpcError as exc:  # it ended meanwhile
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
    for job_id in queued:
        user.wait(job_id)
    return queued


def test_an_environments_jobs_newest_first_page_by_page(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome = signed_in
    name = _name("busy")
    created = user.create(name, ["acme-core"])
    env_id = created.environment.id
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    queued = _queued_and_cancelled(user, env_id, PAGE_SIZE + 5)
    other = user.create(_name("other"), ["acme-core"])  # the newest job, of another one
    newest_first = [*reversed(queued), created.job.id]

    chrome.get(f"{stack.url}/environments/{env_id}")
    assert _listed_jobs(chrome) == newest_first[:RECENT]
    browser.follow(chrome, chrome.find_element(By.ID, "all-jobs"))
    assert chrome.find_element(By.ID, "jobs-title").text == f"Jobs of {name}"
    assert chrome.title.startswith(f"Jobs of {name}")
    assert _listed_jobs(chrome) == newest_first[:PAGE_SIZE]
    browser.follow(chrome, chrome.find_element(By.ID, "older-jobs"))
    assert f"environment={env_id}" in chrome.current_url
    assert chrome.find_element(By.ID, "jobs-title").text == f"Jobs of {name}"
    assert _listed_jobs(chrome) == newest_first[PAGE_SIZE:]
    assert not chrome.find_elements(By.ID, "older-jobs")  # the last page
    browser.follow(chrome, chrome.find_element(By.LINK_TEXT, name))
    assert chrome.current_url == f"{stack.url}/environments/{env_id}"

    chrome.get(f"{stack.url}/jobs")  # all of the user's jobs: the other one's first
    assert _listed_jobs(chrome)[:2] == [other.job.id, queued[-1]]
    user.wait(other.job.id)


def test_the_page_shows_channels_builds_and_recent_jobs(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome = signed_in
    created = user.create(_name("facts"), ["acme-core"])
    env_id = created.environment.id
    assert user.wait(created.job.id).status == common_pb2.JOB_STATUS_COMPLETED
    installed = user.install(env_id, ["acme-utils"])
    assert user.wait(installed.id).status == common_pb2.JOB_STATUS_COMPLETED

    chrome.get(f"{stack.url}/environments/{env_id}")
    channels = list(user.get_env(env_id).channels)
    assert channels
    assert chrome.find_element(By.ID, "env-channels").text == ", ".join(channels)

    listed = user.call(
        user.envs.ListPackages, environments_pb2.ListPackagesRequest(environment_id=env_id)
    )
    expected = {p.name: [p.name, p.version, p.build, p.channel] for p in listed.packages}
    assert all(build and channel for _, _, build, channel in expected.values()), expected
    headers = [th.text for th in chrome.find_elements(By.CSS_SELECTOR, "#packages thead th")]
    assert headers == ["Name", "Version", "Build", "Channel"]
    shown = {
        row.get_attribute("data-name"): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in chrome.find_elements(By.CSS_SELECTOR, "#packages tbody tr")
    }
    assert shown == expected

    rows = chrome.find_elements(By.CSS_SELECTOR, "#job-list tbody tr[data-job-id]")
    assert [row.get_attribute("data-job-id") for row in rows] == [installed.id, created.job.id]
    types = [row.find_element(By.CSS_SELECTOR, "td a").text for row in rows]
    assert types == ["install packages", "create environment"], types
    assert [row.find_element(By.CSS_SELECTOR, ".badge").text for row in rows] == [
        "completed",
        "completed",
    ]
