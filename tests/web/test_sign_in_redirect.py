"""Where signing in goes: the ``next`` of the sign-in page only when it is a path of this
site, else the environments page (never another site, however ``next`` is disguised)."""

from __future__ import annotations

import html
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from services.web.pages.auth import FALLBACK, _safe_next
from testkit.control_plane import Client
from testkit.web import NoRedirect
from tests.web.conftest import PASSWORD, Stack

HOSTILE = [
    "//evil.com",
    "/\\evil.com",
    "/\\\\evil.com",
    "/%09/evil.com",
    "/\t/evil.com",
    "/%0a/evil.com",
    "/\n/evil.com",
    "/%0d%0a/evil.com",
    "/ /evil.com",
    "/%E2%80%8B/evil.com",  # a zero-width space
    "https://evil.com",
    "http:evil.com",
    "/%2F%2Fevil.com",
    "/%2f/evil.com",
    "/%5Cevil.com",
    "/.//evil.com",
    "javascript:alert(1)",
    "evil.com",
    "",
]
GOOD = ["/", "/environments/abc?x=1", "/environments?name=a%20b&scope=mine", "/jobs/j1#end"]


@pytest.mark.parametrize("target", HOSTILE)
def test_a_next_that_could_leave_the_site_goes_to_the_environments(target: str) -> None:
    assert _safe_next(target) == FALLBACK == "/environments"


@pytest.mark.parametrize("target", GOOD)
def test_a_path_of_the_site_is_kept(target: str) -> None:
    assert _safe_next(target) == target


def _sign_in(stack: Stack, user: Client, next_query: str) -> str:
    """Opens ``/login?next=...`` (``next_query`` as sent, percent-encoded), submits the
    form as a browser does (its hidden fields as the page has them) and returns the
    ``Location`` the sign-in redirects to."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect()
    )
    with opener.open(f"{stack.url}/login?next={next_query}") as response:
        page = response.read().decode()
    found = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page)
    hidden = {name: html.unescape(value) for name, value in found}
    assert set(hidden) == {"csrf", "next"}
    fields = {**hidden, "username": user.user.username, "password": PASSWORD}
    post = urllib.request.Request(
        f"{stack.url}/login", data=urllib.parse.urlencode(fields).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(post)
    assert refused.value.code == 302
    assert "darb_session=" in refused.value.headers["Set-Cookie"]
    return str(refused.value.headers["Location"])


@pytest.mark.parametrize("next_query", ["/%09/evil.com", "/%0a/evil.com", "//evil.com"])
def test_signing_in_with_a_hostile_next_stays_on_the_site(
    stack: Stack, user: Client, next_query: str
) -> None:
    assert _sign_in(stack, user, next_query) == "/environments"


def test_signing_in_goes_to_the_next_page_of_the_site(stack: Stack, user: Client) -> None:
    target = "/environments?scope=mine&name=a%20b"
    assert _sign_in(stack, user, urllib.parse.quote(target, safe="")) == target
