"""What every page's handlers share: the signed-in user's calls to the control plane,
rendering, the posted form, and the two ways a refused form answers (back to its page
with ``?error=``, or its page again with the reason and the HTTP status)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import grpc
import grpc.aio
import jinja2
from aiohttp import web

from darb.v1 import common_pb2, users_pb2
from services.web import security
from services.web.api import Api, describe, readable

API: web.AppKey[Api] = web.AppKey("api", Api)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
USER: web.RequestKey[common_pb2.User] = web.RequestKey("user", common_pb2.User)
PAGE_SIZE = 50
# What a refused call raises as it is rather than going back to the form's page.
PASSED_ON = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND)

# A form's page shown again after a refusal, given the reason and the HTTP status.
Page = Callable[[web.Request, str, int], Awaitable[web.Response]]
# The same, given the refusal itself (to read more of it, such as the field it names).
Again = Callable[[web.Request, grpc.aio.AioRpcError], Awaitable[web.Response]]


def api(request: web.Request) -> Api:
    return request.app[API]


def token(request: web.Request) -> str:
    return request.cookies.get(security.SESSION_COOKIE, "")


async def call(request: web.Request, method: Any, message: Any) -> Any:
    return await api(request).call(method, message, token(request))


async def attempt(request: web.Request, method: Any, message: Any) -> tuple[Any, str]:
    """The call's answer and "", or None and the refusal's reason, for a part of a page
    that may fail alone (an expired session still goes to the sign-in page)."""
    try:
        return await call(request, method, message), ""
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        return None, readable(exc)


async def optional(request: web.Request, method: Any, message: Any) -> Any:
    """A call whose failure leaves a part of the page empty rather than failing it."""
    response, _ = await attempt(request, method, message)
    return response


async def current_user(request: web.Request) -> common_pb2.User:
    """The signed-in user; not signed in (or an expired token) goes to the sign-in page."""
    if not token(request):
        raise to_login(request)
    if USER not in request:
        message = users_pb2.GetCurrentUserRequest()
        response = await call(request, api(request).users.GetCurrentUser, message)
        request[USER] = response.user
    return request[USER]


async def admin(request: web.Request) -> common_pb2.User:
    """The signed-in user if an administrator (403 otherwise)."""
    user = await current_user(request)
    if not user.admin:
        raise web.HTTPForbidden()
    return user


def to_login(request: web.Request) -> web.HTTPFound:
    target = request.path_qs if request.method == "GET" else "/"
    redirect = web.HTTPFound(f"/login?{urlencode({'next': target})}")
    if token(request):
        security.clear_cookie(redirect, security.SESSION_COOKIE)
    return redirect


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    material = security.session_material(request) or request.get(security.PRESESSION, "")
    context.setdefault("user", request.get(USER))
    context.setdefault("nav", "")
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(csrf=security.csrf_token(material) if material else "", request=request, **context)
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


async def form(request: web.Request) -> dict[str, str]:
    """The posted text fields (uploads are read by their handlers)."""
    data = await request.post()
    return {key: value for key, value in data.items() if isinstance(value, str)}


def lines_of(text: str) -> list[str]:
    """One item per line, blanks dropped: package specs, which may hold commas
    (``numpy >=1.20,<2``)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def items_of(text: str) -> list[str]:
    """One item per line or between commas, blanks dropped: channels and platforms."""
    return lines_of(text.replace(",", "\n"))


def back_with(back: str, error: str) -> web.HTTPFound:
    """Back to the page ``back``, which shows ``error`` (its ``?error=``)."""
    return web.HTTPFound(f"{back}?{urlencode({'error': error})}")


async def call_or_back(
    request: web.Request,
    method: Any,
    message: Any,
    back: str,
    passed_on: tuple[grpc.StatusCode, ...] = PASSED_ON,
) -> Any:
    """The call's answer; a refusal goes back to ``back`` with its reason, but for the
    codes ``passed_on`` (an expired session, and by default a missing object), raised
    as they are for the error pages."""
    try:
        return await call(request, method, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in passed_on:
            raise
        raise back_with(back, readable(exc)) from None


def refusal(exc: grpc.aio.AioRpcError) -> tuple[str, int]:
    """What a refused form shows: the reason, and the HTTP status of its page."""
    status, title, details = describe(exc)
    return details or title, status


def with_reason(page: Page) -> Again:
    """``page`` shown again with the refusal's reason and HTTP status."""
    return lambda request, exc: page(request, *refusal(exc))


async def submit_form(
    request: web.Request, method: Any, message: Any, again: Again, done: Callable[[Any], str]
) -> web.Response:
    """Sends a form's request; then goes to ``done`` of the answer, or on refusal shows
    the form's page ``again`` (see ``with_reason``)."""
    try:
        response = await call(request, method, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        return await again(request, exc)
    raise web.HTTPFound(done(response))
