"""The web UI in headless Chromium: the list's name box matches part of a name, the
new-environment form shows the server's refusal under the field it concerns, and an
list and an environment's page say the caller's own role (an admin's as "admin")."""

from __future__ import annotations

import uuid
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from darb.v1 import common_pb2, environments_pb2
from testkit import browser
from testkit.control_plane import Client
from tests.web.conftest import PASSWORD, Stack

VIEWER, OWNER = common_pb2.ROLE_VIEWER, common_pb2.ROLE_OWNER


def _listed(chrome: WebDriver) -> set[str]:
    links = chrome.find_elements(By.CSS_SELECTOR, "#environments a.env-link")
    return {link.text for link in links}


def test_the_name_box_lists_the_environments_whose_name_holds_the_text(
    signed_in: WebDriver, stack: Stack, user: Client
) -> None:
    chrome, tag = signed_in, uuid.uuid4().hex[:8]
    names = (f"{tag}-alpha", f"pre-{tag}-alpha2", f"{tag}-beta", f"{tag}_alpha")
    jobs = [user.create(name, ["acme-core"]).job.id for name in names]
    chrome.get(f"{stack.url}/environments")
    box = chrome.find_element(By.CSS_SELECTOR, "#filters input[name=name]")
    assert box.get_attribute("placeholder") == "part of a name"
    box.send_keys(f"{tag}-alp")
    browser.follow(chrome, chrome.find_element(By.CSS_SELECTOR, "#filters button"))
    assert _listed(chrome) == {f"{tag}-alpha", f"pre-{tag}-alpha2"}
    box = chrome.find_element(By.CSS_SELECTOR, "#filters input[name=name]")
    assert box.get_attribute("value") == f"{tag}-alp"
    # A whole name still finds it; `_` is a character like any other, not a wildcard.
    chrome.get(f"{stack.url}/environments?name={tag}-beta")
    assert _listed(chrome) == {f"{tag}-beta"}
    chrome.get(f"{stack.url}/environments?name={tag}_")
    assert _listed(chrome) == {f"{tag}_alpha"}
    for job_id in jobs:
        user.wait(job_id)


def _refusal(chrome: WebDriver, field: str) -> WebElement:
    """The refusal shown in ``field``'s container (the only error on the page), checked to
    sit below its input and to be what the field's inputs say describes them."""
    errors = chrome.find_elements(By.CSS_SELECTOR, ".error")
    shown = chrome.find_element(By.CSS_SELECTOR, f"#{field}-field > #create-error")
    assert errors == [shown]
    inputs = chrome.find_elements(By.CSS_SELECTOR, f"#{field}-field input, #{field}-field textarea")
    assert inputs and all(shown.location["y"] > i.location["y"] for i in inputs)
    assert {i.get_attribute("aria-describedby") for i in inputs} == {"create-error"}
    others = chrome.find_elements(By.CSS_SELECTOR, "[aria-describedby]")
    assert set(others) == set(inputs)
    return shown


def _submit(chrome: WebDriver, values: dict[str, str]) -> None:
    for field, value in values.items():
        element = chrome.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.follow(chrome, chrome.find_element(By.ID, "create"))


def _own_environments(user: Client) -> list[common_pb2.Environment]:
    request = environments_pb2.ListEnvironmentsRequest(filter="owner = me")
    return list(user.call(user.envs.ListEnvironments, request).environments)


def test_a_refusal_shows_under_its_field_and_the_values_stay(
    signed_in: WebDriver, stack: Stack, user: Client, tmp_path: Path
) -> None:
    chrome = signed_in
    name = f"form-{uuid.uuid4().hex[:8]}"
    chrome.get(f"{stack.url}/environments/new")
    _submit(chrome, {"name": name, "packages": "acme-core\nnumpy >>=1", "platforms": "linux-64"})
    assert "'numpy >>=1'" in _refusal(chrome, "packages").text
    assert chrome.find_element(By.ID, "name").get_attribute("value") == name
    assert chrome.find_element(By.ID, "packages").get_attribute("value") == (
        "acme-core\nnumpy >>=1"
    )
    assert chrome.find_element(By.ID, "platforms").get_attribute("value") == "linux-64"

    _submit(chrome, {"name": "Not<Valid>", "packages": "acme-core"})
    assert "'Not<Valid>'" in _refusal(chrome, "name").text
    assert chrome.find_element(By.ID, "name").get_attribute("value") == "Not<Valid>"

    _submit(chrome, {"name": name, "channels": "https://not-allowed.example/ch"})
    assert "not-allowed.example" in _refusal(chrome, "channels").text
    _submit(chrome, {"channels": "", "platforms": "no-such-platform"})
    assert "'no-such-platform'" in _refusal(chrome, "platforms").text
    (tmp_path / "environment.yml").write_text("dependencies: [acme-core\n")
    chrome.find_element(By.ID, "import-file").send_keys(str(tmp_path / "environment.yml"))
    _submit(chrome, {"packages": "", "platforms": ""})
    assert "environment.yml is not valid YAML" in _refusal(chrome, "import").text
    (tmp_path / "pixi.lock").write_text("version: 6\n")
    chrome.find_element(By.ID, "lockfile").send_keys(str(tmp_path / "pixi.lock"))
    _submit(chrome, {})
    assert "a lockfile needs its manifest" in _refusal(chrome, "import").text
    # ALREADY_EXISTS, which carries no field, is about the name all the same.
    taken = user.create(f"taken-{uuid.uuid4().hex[:8]}", ["acme-core"])
    _submit(chrome, {"name": taken.environment.name, "packages": "acme-core"})
    assert "already have an environment named" in _refusal(chrome, "name").text
    assert name not in {env.name for env in _own_environments(user)}
    user.wait(taken.job.id)


def test_the_pages_say_the_callers_role_an_admins_as_admin(
    chrome: WebDriver, stack: Stack, user: Client
) -> None:
    """The control plane gives an admin OWNER on every environment; the pages call that
    "admin" where the admin is not the owner, and a member's role by its name."""
    admin = stack.api.new_user(admin=True)
    created = user.create(f"theirs-{uuid.uuid4().hex[:8]}", ["acme-core"])
    environment_id = created.environment.id
    user.set_policy(
        environment_id,
        {f"user:{user.user.username}": OWNER, f"user:{admin.user.username}": VIEWER},
    )
    user.wait(created.job.id)

    def roles(username: str) -> tuple[str, str, bool]:
        """(the environment page's role, the list's, whether the page offers delete)."""
        chrome.delete_all_cookies()
        browser.sign_in(chrome, stack.url, username, PASSWORD)
        chrome.get(f"{stack.url}/environments/{environment_id}")
        on_page = chrome.find_element(By.ID, "my-role").text
        deletes = bool(chrome.find_elements(By.ID, "delete"))
        chrome.get(f"{stack.url}/environments?name={created.environment.name}")
        rows = chrome.find_elements(By.CSS_SELECTOR, "#environments tbody tr")
        cells = [row.find_element(By.CSS_SELECTOR, "td.role").text for row in rows]
        return on_page, cells[0] if len(cells) == 1 else f"{len(cells)} rows", deletes

    # An admin who is also a viewer can do anything: "admin", not "owner" or "viewer".
    assert roles(admin.user.username) == ("admin", "admin", True)
    assert roles(user.user.username)[0] == "owner"
    viewer = stack.api.new_user()
    user.set_policy(
        environment_id,
        {f"user:{user.user.username}": OWNER, f"user:{viewer.user.username}": VIEWER},
    )
    assert roles(viewer.user.username) == ("viewer", "viewer", False)
