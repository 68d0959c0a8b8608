"""The web UI serving HTTPS itself: its cookies are then ``Secure``."""

from __future__ import annotations

import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testkit.certs import make_ca
from testkit.control_plane import ADMIN_PASSWORD
from testkit.web import start_web
from tests.web.conftest import Stack


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_cookies_are_secure_under_tls(stack: Stack, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    web = start_web(stack.api.addr, tmp_path / "web-tls.log", **ca.server_env(client_auth=False))
    try:
        context = ssl.create_default_context(cafile=str(ca.ca))
        https = urllib.request.HTTPSHandler(context=context)
        with urllib.request.build_opener(https).open(f"https://{web.addr}/login") as response:
            html = response.read().decode()
            presession = response.headers["Set-Cookie"]
        assert "Secure" in presession and "HttpOnly" in presession
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert match is not None
        form = {"csrf": match.group(1), "username": "admin", "password": ADMIN_PASSWORD}
        login = urllib.request.Request(
            f"https://{web.addr}/login",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Cookie": presession.split(";")[0]},
            method="POST",
        )
        try:
            urllib.request.build_opener(https, NoRedirect).open(login)
            raise AssertionError("expected the redirect that follows a sign-in")
        except urllib.error.HTTPError as exc:
            assert exc.code == 302
            cookies = exc.headers.get_all("Set-Cookie")
        session = next(cookie for cookie in cookies if cookie.startswith("darb_session="))
        assert all(flag in session for flag in ("Secure", "HttpOnly", "SameSite=Strict"))
    finally:
        web.stop()
