"""The darb web UI: server-rendered pages over the control plane's gRPC API.

Every page asks the control plane with the signed-in user's token and keeps nothing;
forms post back here (each with its CSRF token) and the live job page reads an event
stream fed from ``WatchJob``. This module is the application: its routes, the
middleware every request goes through, and serving it; the pages are in ``pages/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
from aiohttp import web

from services.web import security
from services.web.api import Api, describe
from services.web.filters import HERE, templates
from services.web.pages import auth, environments, groups, history, jobs, sharing, users
from services.web.pages.common import API, TEMPLATES, current_user, render, to_login, token
from shared.config import WebSettings
from shared.lifecycle import stop_on_signals

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 8 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """gRPC errors become readable pages; nothing ever shows a stack trace."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return await _error_page(request, 404, "Not found", "There is no such page.")
    except web.HTTPForbidden:
        message = "This page is for administrators."
        return await _error_page(request, 403, "Forbidden", message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return await _error_page(request, exc.status, exc.reason, "")
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise to_login(request) from None
        status, title, message = describe(exc)
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            message = "It does not exist, or you may not see it."
        return await _error_page(request, status, title, message)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        message = "Something went wrong on the web server; please try again."
        return await _error_page(request, 500, "Internal error", message)


async def _error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    """The error page, with the signed-in user when the session is valid."""
    if token(request):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await current_user(request)
    return render(request, "error.html", status=status, title=title, message=message)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every state-changing request must carry the session's CSRF token (403 otherwise)."""
    if request.method not in security.SAFE_METHODS and not await security.check_csrf(request):
        message = "The form's security token is missing or stale: reload the page and try again."
        return await _error_page(request, 403, "Forbidden", message)
    return await handler(request)


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/environments")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def routes() -> list[web.AbstractRouteDef]:
    env = "/environments/{env_id}"
    return [
        web.get("/", home),
        web.get("/healthz", health),
        web.get("/login", auth.login_page),
        web.post("/login", auth.login),
        web.post("/logout", auth.logout),
        web.get("/environments", environments.environments_page),
        web.get("/environments/new", environments.new_environment_page),
        web.post("/environments/new", environments.create_environment),
        web.get(env, environments.environment_page),
        web.post(f"{env}/install", environments.install),
        web.post(f"{env}/remove", environments.remove),
        web.get(f"{env}/delete", environments.delete_page),
        web.post(f"{env}/delete", environments.delete),
        web.get(f"{env}/export/{{file:pixi\\.(toml|lock)}}", environments.export),
        web.get(f"{env}/history", history.history_page),
        web.get(f"{env}/rollback", history.rollback_page),
        web.post(f"{env}/rollback", history.rollback),
        web.get(f"{env}/sharing", sharing.sharing_page),
        web.post(f"{env}/sharing/{{action:add|remove}}", sharing.change_sharing),
        web.get("/jobs", jobs.jobs_page),
        web.get("/jobs/{job_id}", jobs.job_page),
        web.get("/jobs/{job_id}/events", jobs.job_events),
        web.get("/jobs/{job_id}/log", jobs.job_log),
        web.post("/jobs/{job_id}/cancel", jobs.cancel_job),
        web.get("/admin/users", users.users_page),
        web.post("/admin/users", users.create_user),
        web.post("/admin/users/{user_id}", users.update_user),
        web.get("/groups", groups.groups_page),
        web.post("/groups", groups.create_group),
        web.get("/groups/{name}", groups.group_page),
        web.post("/groups/{name}/{action:add|remove|delete}", groups.change_group),
        web.static("/static", HERE / "static"),
    ]


def make_app(settings: WebSettings) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, csrf_middleware], client_max_size=MAX_UPLOAD_BYTES
    )
    app[TEMPLATES] = templates()
    app[security.SECURE_COOKIES] = settings.secure_cookies or settings.tls.serves_tls
    app.on_response_prepare.append(security.add_security_headers)

    async def channel(app: web.Application) -> AsyncIterator[None]:
        app[API] = Api(settings)
        yield
        await app[API].close()

    app.cleanup_ctx.append(channel)
    app.add_routes(routes())
    return app


async def serve(settings: WebSettings) -> None:
    stop = stop_on_signals()
    app = make_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    host, _, port = settings.addr.rpartition(":")
    context = None
    if settings.tls.serves_tls and settings.tls.cert and settings.tls.key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls.cert, settings.tls.key)
    site = web.TCPSite(
        runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=context, shutdown_timeout=2
    )
    await site.start()
    bound = runner.addresses[0]
    scheme = "https" if context else "http"
    print(f"darb web listening on {bound[0]}:{bound[1]}", flush=True)
    log.info("serving %s://%s:%s, control plane %s", scheme, bound[0], bound[1], settings.api_addr)
    await stop.wait()
    await runner.cleanup()
