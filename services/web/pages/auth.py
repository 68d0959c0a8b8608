"""Signing in and out: the sign-in form (with its pre-session cookie, so that it carries a
CSRF token before there is a session), the session cookie it sets, and sign-out."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import unquote

import grpc
import grpc.aio
from aiohttp import web
from yarl import URL

from darb.v1 import auth_pb2
from services.web import security
from services.web.api import readable
from services.web.pages.common import api, call, form, render, token

log = logging.getLogger(__name__)

# Where a sign-in goes when its ``next`` is not a path of this site.
FALLBACK = "/environments"


def _safe_next(target: str) -> str:
    """``target`` if it is a path of this site, else the environments page. Browsers read
    ``//host`` and ``/\\host`` as another site, and drop tabs and newlines first (so does
    yarl, which makes the redirect), so ``/<tab>/host`` is refused too; so is a path that
    reads as one of those once percent-decoded. Only the path's decoded form is checked:
    its query cannot take the target to another site."""
    path = unquote(target.partition("?")[0].partition("#")[0])
    if not target.startswith("/") or "//" in path or _unsafe(target) or _unsafe(path):
        return FALLBACK
    url = URL(target)
    return FALLBACK if url.is_absolute() or url.path.startswith("//") else target


def _unsafe(text: str) -> bool:
    """Whether ``text`` holds a backslash, a whitespace or a control character."""
    return any(char == "\\" or char.isspace() or not char.isprintable() for char in text)


async def login_page(request: web.Request) -> web.Response:
    return await _login_form(request, "", request.query.get("next", "/"), "")


async def _login_form(
    request: web.Request, error: str, next_path: str, username: str, status: int = 200
) -> web.Response:
    fresh = ""
    if not security.session_material(request):
        fresh = request[security.PRESESSION] = security.new_presession()
    response = render(
        request,
        "login.html",
        status=status,
        error=error,
        next_path=_safe_next(next_path),
        username=username,
    )
    if fresh:
        security.set_cookie(response, request, security.PRESESSION_COOKIE, fresh, 3600)
    return response


async def login(request: web.Request) -> web.Response:
    data = await form(request)
    username, next_path = data.get("username", ""), _safe_next(data.get("next", "/"))
    message = auth_pb2.LoginRequest(username=username, password=data.get("password", ""))
    try:
        response = await api(request).call(api(request).auth.Login, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            error = "Wrong username or password."
        else:
            error = readable(exc)
        return await _login_form(request, error, next_path, username, status=400)
    redirect = web.HTTPFound(next_path)
    max_age = 86400
    if response.HasField("expires_at"):
        remaining = response.expires_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
        max_age = max(60, int(remaining.total_seconds()))
    security.set_cookie(redirect, request, security.SESSION_COOKIE, response.token, max_age)
    security.clear_cookie(redirect, security.PRESESSION_COOKIE)
    raise redirect


async def logout(request: web.Request) -> web.Response:
    """Ends the session on the control plane, so that the cookie's token is refused from
    now on even where a copy of it survives, then forgets the cookie."""
    if token(request):
        try:
            await call(request, api(request).auth.Logout, auth_pb2.LogoutRequest())
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:  # not already ended
                reason = readable(exc)
                log.warning("sign-out: the control plane did not end the session (%s)", reason)
    redirect = web.HTTPFound("/login")
    security.clear_cookie(redirect, security.SESSION_COOKIE)
    raise redirect
