"""A package spec may hold a comma (``acme-core >=1.0,<1.1``, a version range): the
new-environment form and the install form take one spec a line, commas included."""

from __future__ import annotations

import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from darb.v1 import common_pb2
from testkit import browser
from testkit.control_plane import Client
from tests.web.conftest import Stack


def _job_of(chrome: WebDriver, user: Client) -> common_pb2.Job:
    """The job of the page a form led to, once it has ended (a refused form leads back
    to its page, which shows why)."""
    refusals = [error.text for error in chrome.find_elements(By.CSS_SELECTOR, ".error")]
    assert "/jobs/" in chrome.current_url, refusals
    return user.wait(chrome.current_url.rstrip("/").rsplit("/", 1)[1])


def test_specs_with_a_version_range_are_created_and_installed(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome, name = signed_in, f"range-{uuid.uuid4().hex[:8]}"
    chrome.get(f"{stack.url}/environments/new")
    chrome.find_element(By.ID, "name").send_keys(name)
    chrome.find_element(By.ID, "packages").send_keys("  acme-core >=1.0,<1.1  \n\nacme-utils\n")
    browser.follow(chrome, chrome.find_element(By.ID, "create"))
    created = _job_of(chrome, user)
    assert created.status == common_pb2.JOB_STATUS_COMPLETED, created.error
    assert user.packages(created.environment_id)["acme-core"] == "1.0"

    chrome.get(f"{stack.url}/environments/{created.environment_id}")
    chrome.find_element(By.ID, "install-packages").send_keys("acme-core >1.0,<2")
    browser.follow(chrome, chrome.find_element(By.ID, "install"))
    installed = _job_of(chrome, user)
    assert installed.status == common_pb2.JOB_STATUS_COMPLETED, installed.error
    assert user.packages(created.environment_id)["acme-core"] == "1.1"
