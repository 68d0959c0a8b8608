"""A group's page shows the controls that change it (add, remove, delete) only to those
who may use them: its creator and the admins, not its other members."""

from __future__ import annotations

import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from darb.v1 import groups_pb2
from testkit import browser
from testkit.control_plane import ADMIN_PASSWORD, Client
from tests.web.conftest import PASSWORD, Stack

CONTROLS = "#add-member, #group-members form, form.danger-zone"


def _group_page(chrome: WebDriver, stack: Stack, username: str, password: str, group: str) -> None:
    """Signs in as ``username`` (in a browser with no session) and opens the group."""
    chrome.delete_all_cookies()
    browser.sign_in(chrome, stack.url, username, password)
    chrome.get(f"{stack.url}/groups/{group}")


def _members(chrome: WebDriver) -> set[str]:
    rows = chrome.find_elements(By.CSS_SELECTOR, "#group-members tr[data-username]")
    return {row.get_attribute("data-username") or "" for row in rows}


def test_only_the_creator_and_admins_see_the_controls(
    chrome: WebDriver, stack: Stack, user: Client
) -> None:
    member = stack.api.new_user()
    group = f"g{uuid.uuid4().hex[:10]}"
    user.call(user.groups.CreateGroup, groups_pb2.CreateGroupRequest(name=group))
    add = groups_pb2.AddGroupMemberRequest(group=group, username=member.user.username)
    user.call(user.groups.AddGroupMember, add)

    _group_page(chrome, stack, member.user.username, PASSWORD, group)
    assert _members(chrome) == {member.user.username}
    assert not chrome.find_elements(By.CSS_SELECTOR, CONTROLS)
    buttons = chrome.find_elements(By.TAG_NAME, "button")
    assert [button.get_attribute("id") for button in buttons] == ["sign-out"]

    for username, password in ((user.user.username, PASSWORD), ("admin", ADMIN_PASSWORD)):
        _group_page(chrome, stack, username, password, group)
        assert _members(chrome) == {member.user.username}
        assert chrome.find_elements(By.CSS_SELECTOR, "#add-member")
        remove = f"#group-members tr[data-username='{member.user.username}'] button"
        assert chrome.find_element(By.CSS_SELECTOR, remove).text == "Remove"
        assert chrome.find_elements(By.CSS_SELECTOR, "form.danger-zone button")
