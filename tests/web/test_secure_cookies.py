"""The session cookies' flags: ``Secure`` when the web UI serves HTTPS itself, and when
``DARB_WEB_SECURE_COOKIES=1`` says a proxy in front of its plain HTTP ends TLS; without
either, over plain HTTP, not (a browser would not send them back). The same two cases,
and only they, send ``Strict-Transport-Security``."""

from __future__ import annotations

import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testkit.certs import make_ca
from testkit.control_plane import ADMIN_PASSWORD
from testkit.web import NoRedirect, start_web
from tests.web.conftest import Stack

HSTS = "Strict-Transport-Security"


def _sign_in_cookies(url: str, *handlers: urllib.request.BaseHandler) -> tuple[str, str]:
    """Signs in as the admin: the pre-session and the session ``Set-Cookie`` headers.
    Every answer on the way carries HSTS exactly when the cookies must be secure."""
    with urllib.request.build_opener(*handlers).open(f"{url}/login") as response:
        html = response.read().decode()
        presession = response.headers["Set-Cookie"]
        hsts = response.headers.get(HSTS)
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
        urllib.request.build_opener(*handlers, NoRedirect).open(login)
        raise AssertionError("expected the redirect that follows a sign-in")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302
        assert exc.headers.get(HSTS) == hsts, (exc.headers.get(HSTS), hsts)
        cookies = exc.headers.get_all("Set-Cookie") or []
    session = next(cookie for cookie in cookies if cookie.startswith("darb_session="))
    assert (hsts == "max-age=31536000") == ("secure" in _flags(session)), (hsts, session)
    return presession, session


def _flags(cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


def _assert_secure(cookies: tuple[str, str]) -> None:
    for cookie in cookies:
        assert {"secure", "httponly", "samesite"} <= _flags(cookie), cookie
        assert "SameSite=Strict" in cookie, cookie


def test_the_flag_marks_the_cookies_secure_over_plain_http(stack: Stack, tmp_path: Path) -> None:
    for cookie in _sign_in_cookies(stack.url):  # the flag unset
        assert "secure" not in _flags(cookie) and "httponly" in _flags(cookie), cookie
    web = start_web(stack.api.addr, tmp_path / "web.log", DARB_WEB_SECURE_COOKIES="1")
    try:
        assert web.url.startswith("http://")
        _assert_secure(_sign_in_cookies(web.url))
    finally:
        web.stop()


def test_cookies_are_secure_under_tls(stack: Stack, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    web = start_web(stack.api.addr, tmp_path / "web-tls.log", **ca.server_env(client_auth=False))
    try:
        context = ssl.create_default_context(cafile=str(ca.ca))
        https = urllib.request.HTTPSHandler(context=context)
        _assert_secure(_sign_in_cookies(f"https://{web.addr}", https))
    finally:
        web.stop()
