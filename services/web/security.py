"""The web UI's session cookie, CSRF tokens and security headers.

The session is the control plane's own bearer token, kept in an ``HttpOnly``,
``SameSite=Strict`` cookie; nothing about it is stored in the web process. A form's CSRF
token is an HMAC keyed by that session (before sign-in, by a random pre-session cookie),
so any copy of the web process can check it and no other site can compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

SESSION_COOKIE = "darb_session"
PRESESSION_COOKIE = "darb_presession"
# A presession made while answering this request, before its cookie is set.
PRESESSION: web.RequestKey[str] = web.RequestKey("presession", str)
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Sent only where the browser reached the web UI over HTTPS (browsers ignore it over
# plain HTTP anyway): for a year, on this host alone (the web UI knows no other).
STRICT_TRANSPORT_SECURITY = "max-age=31536000"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SECURE_COOKIES: web.AppKey[bool] = web.AppKey("secure_cookies", bool)


def csrf_token(session: str) -> str:
    """The CSRF token of a session (the token cookie or the pre-session cookie)."""
    return hmac.new(session.encode(), b"darb-web-csrf-v1", hashlib.sha256).hexdigest()


def session_material(request: web.Request) -> str:
    """What the request's CSRF token is derived from: the session, else the pre-session."""
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRESESSION_COOKIE) or ""


def new_presession() -> str:
    return secrets.token_urlsafe(32)


def secure_cookies(request: web.Request) -> bool:
    return request.secure or request.app.get(SECURE_COOKIES, False)


def set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(request),
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/")


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, errors and the event stream included, carries the CSP and its
    companions, and under HTTPS the HSTS header (an ``on_response_prepare`` signal
    handler)."""
    response.headers.update(SECURITY_HEADERS)
    if secure_cookies(request):  # HTTPS, served here or ended by a proxy in front
        response.headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY


async def check_csrf(request: web.Request) -> bool:
    """Whether a state-changing request carries the right CSRF token."""
    material = session_material(request)
    if not material:
        return False
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent:
        form = await request.post()
        value = form.get(CSRF_FIELD, "")
        sent = value if isinstance(value, str) else ""
    return hmac.compare_digest(sent.encode(), csrf_token(material).encode())
