"""``DARB_WEB_SECURE_COOKIES=1``: the web UI behind a proxy that ends TLS serves plain
HTTP itself, yet marks its cookies ``Secure``; without the flag, over plain HTTP, it
does not (a browser would not send them back)."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testkit.control_plane import ADMIN_PASSWORD
from testkit.web import start_web
from tests.web.conftest import Stack


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _sign_in_cookies(url: str) -> tuple[str, str]:
    """Signs in over plain HTTP: the pre-session and the session ``Set-Cookie`` headers."""
    with urllib.request.urlopen(f"{url}/login") as response:
        html = response.read().decode()
        presession = response.headers["Set-Cookie"]
    assert presession.startswith("darb_presession="), presession
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match is not None
    form = {"csrf": match.group(1), "username": "admin", "password": ADMIN_PASSWORD}
    login = urllib.request.Request(
        f"{url}/login",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Cookie": presession.split(";")[0]},
        method="POST",
    )
    try:
        urllib.request.build_opener(NoRedirect).open(login)
        raise AssertionError("expected the redirect that follows a sign-in")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302
        cookies = exc.headers.get_all("Set-Cookie") or []
    return presession, next(cookie for cookie in cookies if cookie.startswith("darb_session="))


def _flags(cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


def test_the_flag_marks_the_cookies_secure_over_plain_http(stack: Stack, tmp_path: Path) -> None:
    for cookie in _sign_in_cookies(stack.url):  # the flag unset
        assert "secure" not in _flags(cookie) and "httponly" in _flags(cookie), cookie
    web = start_web(stack.api.addr, tmp_path / "web.log", DARB_WEB_SECURE_COOKIES="1")
    try:
        assert web.url.startswith("http://")
        for cookie in _sign_in_cookies(web.url):
            assert {"secure", "httponly", "samesite"} <= _flags(cookie), cookie
            assert "SameSite=Strict" in cookie, cookie
    finally:
        web.stop()
