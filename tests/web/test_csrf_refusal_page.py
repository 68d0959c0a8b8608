"""A POST without its CSRF token is refused with a 403 page like the other error pages:
with the signed-in user and the navigation when the session is valid."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid

import pytest

from darb.v1 import groups_pb2
from testkit.control_plane import Client
from tests.web.conftest import Stack


def test_the_refusal_page_shows_the_signed_in_user(stack: Stack, user: Client) -> None:
    group = f"g{uuid.uuid4().hex[:10]}"
    post = urllib.request.Request(
        f"{stack.url}/groups",
        data=f"name={group}".encode(),
        headers={"Cookie": f"darb_session={user.token}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post)
    assert refused.value.code == 403
    page = refused.value.read().decode()
    assert "security token is missing or stale" in page
    shown = re.search(r'<span id="current-user">([^<]*)</span>', page)
    assert shown is not None and shown.group(1) == user.user.username
    assert '<a href="/jobs"' in page  # the navigation
    listed = user.call(user.groups.ListGroups, groups_pb2.ListGroupsRequest()).groups
    assert group not in {g.name for g in listed}  # and nothing happened


def test_without_a_valid_session_the_refusal_page_names_no_user(stack: Stack) -> None:
    post = urllib.request.Request(
        f"{stack.url}/groups",
        data=b"name=whatever",
        headers={"Cookie": "darb_session=not-a-token"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post)
    assert refused.value.code == 403
    assert 'id="current-user"' not in refused.value.read().decode()
