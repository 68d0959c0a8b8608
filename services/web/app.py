"""The darb web UI: server-rendered pages over the control plane's gRPC API.

Every page asks the control plane with the signed-in user's token and keeps nothing;
forms post back here (each with its CSRF token) and the live job page reads an event
stream fed from ``WatchJob``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import grpc
import grpc.aio
import jinja2
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from darb.v1 import (
    auth_pb2,
    common_pb2,
    environments_pb2,
    groups_pb2,
    jobs_pb2,
    users_pb2,
)
from services.web import security
from services.web.api import Api, describe, readable
from shared.config import WebSettings
from shared.lifecycle import stop_on_signals
from shared.manifests import parse_manifest

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
API: web.AppKey[Api] = web.AppKey("api", Api)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
KEEPALIVE_SECONDS = 15.0
PAGE_SIZE = 50
TERMINAL_JOBS = {
    common_pb2.JOB_STATUS_COMPLETED,
    common_pb2.JOB_STATUS_FAILED,
    common_pb2.JOB_STATUS_CANCELLED,
}
PERMISSIONS = (
    "environments.get",
    "environments.update",
    "environments.delete",
    "environments.setPolicy",
    "jobs.cancel",
)
# What each role may do, for a server that cannot answer TestEnvironmentPermissions yet.
ROLE_PERMISSIONS = {
    common_pb2.ROLE_VIEWER: {"environments.get"},
    common_pb2.ROLE_EDITOR: {"environments.get", "environments.update", "jobs.cancel"},
    common_pb2.ROLE_OWNER: set(PERMISSIONS),
}
STATUS_FILTERS = ("READY", "PENDING", "CREATING", "FAILED", "DELETING", "REBUILDING")
ROLE_FILTERS = ("OWNER", "EDITOR", "VIEWER")
ROLE_CHOICES = {"viewer": common_pb2.ROLE_VIEWER, "editor": common_pb2.ROLE_EDITOR}
ROLE_CHOICES["owner"] = common_pb2.ROLE_OWNER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- Template helpers -------------------------------------------------------------------


def _time(ts: Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).isoformat()


def _enum(value: int, enum: Any, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "unknown"
    return name.removeprefix(prefix).replace("_", " ").lower()


def env_status(value: int) -> str:
    return _enum(value, common_pb2.EnvironmentStatus, "ENVIRONMENT_STATUS_")


def job_status(value: int) -> str:
    return _enum(value, common_pb2.JobStatus, "JOB_STATUS_")


def job_type(value: int) -> str:
    return _enum(value, common_pb2.JobType, "JOB_TYPE_")


def role_name(value: int) -> str:
    return "" if value == common_pb2.ROLE_UNSPECIFIED else _enum(value, common_pb2.Role, "ROLE_")


def phase_name(value: int) -> str:
    return _enum(value, common_pb2.JobPhase, "JOB_PHASE_")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=_time,
        iso=_iso,
        env_status=env_status,
        job_status=job_status,
        job_type=job_type,
        role=role_name,
        phase=phase_name,
        short=lambda value: str(value)[:8],
    )
    return env


# --- Requests ---------------------------------------------------------------------------


def api(request: web.Request) -> Api:
    return request.app[API]


def token(request: web.Request) -> str:
    return request.cookies.get(security.SESSION_COOKIE, "")


async def call(request: web.Request, method: Any, message: Any) -> Any:
    return await api(request).call(method, message, token(request))


async def current_user(request: web.Request) -> common_pb2.User:
    """The signed-in user; not signed in (or an expired token) goes to the sign-in page."""
    if not token(request):
        raise _to_login(request)
    if "user" not in request:
        response = await call(request, api(request).users.GetCurrentUser, _users_me())
        request["user"] = response.user
    user: common_pb2.User = request["user"]
    return user


def _users_me() -> users_pb2.GetCurrentUserRequest:
    return users_pb2.GetCurrentUserRequest()


def _to_login(request: web.Request) -> web.HTTPFound:
    target = request.path_qs if request.method == "GET" else "/"
    redirect = web.HTTPFound(f"/login?{urlencode({'next': target})}")
    if token(request):
        security.clear_cookie(redirect, security.SESSION_COOKIE)
    return redirect


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    material = security.session_material(request) or request.get("presession", "")
    context.setdefault("user", request.get("user"))
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
    """One item per line (commas also split), blanks dropped."""
    return [item.strip() for line in text.splitlines() for item in line.split(",") if item.strip()]


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
            raise _to_login(request) from None
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
    if token(request) and "user" not in request:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await current_user(request)
    return render(request, "error.html", status=status, title=title, message=message)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every state-changing request must carry the session's CSRF token (403 otherwise)."""
    if request.method not in security.SAFE_METHODS and not await security.check_csrf(request):
        message = "The form's security token is missing or stale: reload the page and try again."
        return render(request, "error.html", status=403, title="Forbidden", message=message)
    return await handler(request)


# --- Sign-in ----------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a path of this site: never ``//host`` or ``/\\host``, which browsers read as
    another site."""
    local = target.startswith("/") and not target.startswith(("//", "/\\"))
    return target if local and "\\" not in target else "/"


async def login_page(request: web.Request) -> web.Response:
    response = await _login_form(request, "", request.query.get("next", "/"), "")
    return response


async def _login_form(
    request: web.Request, error: str, next_path: str, username: str, status: int = 200
) -> web.Response:
    fresh = ""
    if not security.session_material(request):
        fresh = request["presession"] = security.new_presession()
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


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/environments")


# --- Environments -----------------------------------------------------------------------


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def environment_filter(query: Any) -> str:
    """The AIP-160 filter of the list page's controls."""
    clauses = []
    if name := query.get("name", "").strip():
        clauses.append(f"name = {_quoted(name)}")
    scope = query.get("scope", "")
    if scope == "mine":
        clauses.append("owner = me")
    elif scope == "shared":
        clauses.append("owner != me")
    if (status := query.get("status", "")) in STATUS_FILTERS:
        clauses.append(f"status = {status}")
    if (role := query.get("role", "")) in ROLE_FILTERS:
        clauses.append(f"role = {role}")
    return " AND ".join(clauses)


async def environments_page(request: web.Request) -> web.Response:
    await current_user(request)
    query = request.query
    filter_text = environment_filter(query)
    message = environments_pb2.ListEnvironmentsRequest(
        page_size=PAGE_SIZE, page_token=query.get("page", ""), filter=filter_text
    )
    error, envs, next_page = "", [], ""
    try:
        response = await call(request, api(request).envs.ListEnvironments, message)
        envs, next_page = list(response.environments), response.next_page_token
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        error = readable(exc)
    next_query = {k: v for k, v in query.items() if k != "page"}
    next_url = f"/environments?{urlencode({**next_query, 'page': next_page})}" if next_page else ""
    return render(
        request,
        "environments.html",
        nav="environments",
        environments=envs,
        query=query,
        statuses=STATUS_FILTERS,
        roles=ROLE_FILTERS,
        error=error,
        next_url=next_url,
    )


async def new_environment_page(request: web.Request) -> web.Response:
    await current_user(request)
    return render(request, "new_environment.html", nav="environments", error="", values={})


async def create_environment(request: web.Request) -> web.Response:
    await current_user(request)
    data = await request.post()
    values = {key: value for key, value in data.items() if isinstance(value, str)}
    message = environments_pb2.CreateEnvironmentRequest(
        name=values.get("name", "").strip(),
        channels=lines_of(values.get("channels", "")),
        packages=lines_of(values.get("packages", "")),
        platforms=lines_of(values.get("platforms", "")),
    )
    upload, lock = data.get("import_file"), data.get("lockfile")
    if isinstance(upload, web.FileField) and upload.filename:
        text = upload.file.read().decode("utf-8", errors="replace")
        if upload.filename.endswith((".yml", ".yaml")):
            message.environment_yml = text
        else:
            message.manifest = text
    if isinstance(lock, web.FileField) and lock.filename:
        message.lockfile = lock.file.read().decode("utf-8", errors="replace")
    try:
        response = await call(request, api(request).envs.CreateEnvironment, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        status, title, details = describe(exc)
        return render(
            request,
            "new_environment.html",
            status=status,
            nav="environments",
            error=details or title,
            values=values,
        )
    raise web.HTTPFound(f"/jobs/{quote(response.job.id)}")


async def _environment(request: web.Request) -> common_pb2.Environment:
    message = environments_pb2.GetEnvironmentRequest(id=request.match_info["env_id"])
    response = await call(request, api(request).envs.GetEnvironment, message)
    environment: common_pb2.Environment = response.environment
    return environment


async def permissions(request: web.Request, environment: common_pb2.Environment) -> set[str]:
    """What the caller may do with the environment, so pages hide what they cannot use."""
    message = environments_pb2.TestEnvironmentPermissionsRequest(
        environment_id=environment.id, permissions=PERMISSIONS
    )
    try:
        response = await call(request, api(request).envs.TestEnvironmentPermissions, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        # A server without sharing: only the owner (or an admin) sees an environment.
        return ROLE_PERMISSIONS.get(environment.role, set(PERMISSIONS))
    return set(response.permissions)


async def _optional(request: web.Request, method: Any, message: Any) -> Any:
    """A call whose failure leaves a part of the page empty rather than failing it."""
    try:
        return await call(request, method, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        return None


async def environment_page(request: web.Request) -> web.Response:
    await current_user(request)
    environment = await _environment(request)
    stubs = api(request)
    allowed = await permissions(request, environment)
    ready = environment.current_version > 0
    listed, exported, jobs = await asyncio.gather(
        _optional(
            request,
            stubs.envs.ListPackages,
            environments_pb2.ListPackagesRequest(environment_id=environment.id),
        )
        if ready
        else _none(),
        _optional(
            request,
            stubs.envs.ExportEnvironment,
            environments_pb2.ExportEnvironmentRequest(id=environment.id),
        )
        if ready
        else _none(),
        _optional(
            request,
            stubs.jobs.ListJobs,
            jobs_pb2.ListJobsRequest(environment_id=environment.id, page_size=10),
        ),
    )
    specs: dict[str, str] = {}
    if exported is not None:
        with contextlib.suppress(Exception):
            specs = parse_manifest(exported.manifest).specs
    return render(
        request,
        "environment.html",
        nav="environments",
        env=environment,
        allowed=allowed,
        packages=list(listed.packages) if listed else [],
        specs=sorted(specs.items()),
        jobs=list(jobs.jobs) if jobs else [],
        error=request.query.get("error", ""),
    )


async def _none() -> None:
    return None


async def _submit_job(request: web.Request, method: Any, message: Any, back: str) -> web.Response:
    """Submits a job; on success shows its page, on refusal the message on ``back``."""
    try:
        response = await call(request, method, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
            raise
        raise web.HTTPFound(f"{back}?{urlencode({'error': readable(exc)})}") from None
    raise web.HTTPFound(f"/jobs/{quote(response.job.id)}")


async def install(request: web.Request) -> web.Response:
    await current_user(request)
    env_id = request.match_info["env_id"]
    data = await form(request)
    message = environments_pb2.InstallPackagesRequest(
        environment_id=env_id, packages=lines_of(data.get("packages", ""))
    )
    back = f"/environments/{quote(env_id)}"
    return await _submit_job(request, api(request).envs.InstallPackages, message, back)


async def remove(request: web.Request) -> web.Response:
    await current_user(request)
    env_id = request.match_info["env_id"]
    data = await form(request)
    message = environments_pb2.RemovePackagesRequest(
        environment_id=env_id, packages=lines_of(data.get("packages", ""))
    )
    back = f"/environments/{quote(env_id)}"
    return await _submit_job(request, api(request).envs.RemovePackages, message, back)


async def delete_page(request: web.Request) -> web.Response:
    await current_user(request)
    environment = await _environment(request)
    return render(request, "delete.html", nav="environments", env=environment)


async def delete(request: web.Request) -> web.Response:
    await current_user(request)
    env_id = request.match_info["env_id"]
    message = environments_pb2.DeleteEnvironmentRequest(id=env_id)
    back = f"/environments/{quote(env_id)}"
    return await _submit_job(request, api(request).envs.DeleteEnvironment, message, back)


async def export(request: web.Request) -> web.Response:
    await current_user(request)
    env_id, file_name = request.match_info["env_id"], request.match_info["file"]
    message = environments_pb2.ExportEnvironmentRequest(id=env_id)
    response = await call(request, api(request).envs.ExportEnvironment, message)
    text = response.manifest if file_name == "pixi.toml" else response.lockfile
    return web.Response(
        text=text,
        content_type="application/toml" if file_name == "pixi.toml" else "application/yaml",
        headers={"Content-Disposition": f'attachment; filename="{file_name}"'},
    )


# --- History ----------------------------------------------------------------------------


async def _versions(request: web.Request, env_id: str) -> list[environments_pb2.EnvironmentVersion]:
    versions: list[environments_pb2.EnvironmentVersion] = []
    page = ""
    for _ in range(20):
        message = environments_pb2.ListEnvironmentVersionsRequest(
            environment_id=env_id, page_size=100, page_token=page
        )
        response = await call(request, api(request).envs.ListEnvironmentVersions, message)
        versions.extend(response.versions)
        page = response.next_page_token
        if not page:
            break
    return versions


async def history_page(request: web.Request) -> web.Response:
    await current_user(request)
    environment = await _environment(request)
    allowed = await permissions(request, environment)
    versions = await _versions(request, environment.id)
    diff, diff_error, pair = None, "", None
    query = request.query
    if query.get("from") and query.get("to"):
        try:
            pair = (int(query["from"]), int(query["to"]))
        except ValueError:
            diff_error = "Pick two versions."
        if pair:
            message = environments_pb2.DiffEnvironmentVersionsRequest(
                environment_id=environment.id, from_version=pair[0], to_version=pair[1]
            )
            try:
                diff = await call(request, api(request).envs.DiffEnvironmentVersions, message)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise
                diff_error = readable(exc)
    return render(
        request,
        "history.html",
        nav="environments",
        env=environment,
        allowed=allowed,
        versions=versions,
        diff=diff,
        pair=pair,
        diff_error=diff_error,
        error=query.get("error", ""),
    )


async def rollback_page(request: web.Request) -> web.Response:
    await current_user(request)
    environment = await _environment(request)
    try:
        version = int(request.query.get("version", ""))
    except ValueError:
        raise web.HTTPNotFound() from None
    message = environments_pb2.GetEnvironmentVersionRequest(
        environment_id=environment.id, version=version
    )
    response = await call(request, api(request).envs.GetEnvironmentVersion, message)
    return render(
        request, "rollback.html", nav="environments", env=environment, version=response.version
    )


async def rollback(request: web.Request) -> web.Response:
    await current_user(request)
    env_id = request.match_info["env_id"]
    data = await form(request)
    try:
        version = int(data.get("version", ""))
    except ValueError:
        version = 0
    message = environments_pb2.RollbackEnvironmentRequest(environment_id=env_id, version=version)
    back = f"/environments/{quote(env_id)}/history"
    return await _submit_job(request, api(request).envs.RollbackEnvironment, message, back)


# --- Sharing ----------------------------------------------------------------------------


def _members(policy: environments_pb2.Policy) -> list[tuple[str, int]]:
    rows = [(member, binding.role) for binding in policy.bindings for member in binding.members]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def _policy(rows: list[tuple[str, int]], etag: str) -> environments_pb2.Policy:
    by_role: dict[int, set[str]] = {}
    for member, role in rows:
        by_role.setdefault(role, set()).add(member)
    bindings = [
        environments_pb2.Binding(role=cast(Any, role), members=sorted(members))
        for role, members in sorted(by_role.items(), reverse=True)
    ]
    return environments_pb2.Policy(bindings=bindings, etag=etag)


async def sharing_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    await current_user(request)
    environment = await _environment(request)
    allowed = await permissions(request, environment)
    message = environments_pb2.GetEnvironmentPolicyRequest(environment_id=environment.id)
    response = await call(request, api(request).envs.GetEnvironmentPolicy, message)
    return render(
        request,
        "sharing.html",
        status=status,
        nav="environments",
        env=environment,
        allowed=allowed,
        members=_members(response.policy),
        etag=response.policy.etag,
        error=error or request.query.get("error", ""),
    )


async def change_sharing(request: web.Request) -> web.Response:
    """Adds or removes one member: read the policy, check the page's etag, write it back."""
    await current_user(request)
    env_id = request.match_info["env_id"]
    data = await form(request)
    stubs = api(request)
    message = environments_pb2.GetEnvironmentPolicyRequest(environment_id=env_id)
    policy = (await call(request, stubs.envs.GetEnvironmentPolicy, message)).policy
    back = f"/environments/{quote(env_id)}/sharing"
    if data.get("etag", "") != policy.etag:
        error = "Someone changed the sharing meanwhile; this is how it is now. Try again."
        raise web.HTTPFound(f"{back}?{urlencode({'error': error})}")
    rows = _members(policy)
    if request.match_info["action"] == "add":
        kind, name = data.get("kind", "user"), data.get("name", "").strip()
        role = ROLE_CHOICES.get(data.get("role", ""), common_pb2.ROLE_VIEWER)
        if kind == "everyone":
            member = "allAuthenticatedUsers"
        elif kind in ("user", "group") and name:
            member = f"{kind}:{name}"
        else:
            raise web.HTTPFound(f"{back}?{urlencode({'error': 'Name a user or a group.'})}")
        rows = [row for row in rows if row[0] != member] + [(member, role)]
    else:
        member = data.get("member", "")
        rows = [row for row in rows if row[0] != member]
    update = environments_pb2.SetEnvironmentPolicyRequest(
        environment_id=env_id, policy=_policy(rows, policy.etag)
    )
    try:
        await call(request, stubs.envs.SetEnvironmentPolicy, update)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
            raise
        raise web.HTTPFound(f"{back}?{urlencode({'error': readable(exc)})}") from None
    raise web.HTTPFound(back)


# --- Jobs -------------------------------------------------------------------------------


async def jobs_page(request: web.Request) -> web.Response:
    await current_user(request)
    page = request.query.get("page", "")
    message = jobs_pb2.ListJobsRequest(page_size=PAGE_SIZE, page_token=page)
    response, names = await asyncio.gather(
        call(request, api(request).jobs.ListJobs, message), environment_names(request)
    )
    next_page = response.next_page_token
    return render(
        request,
        "jobs.html",
        nav="jobs",
        jobs=list(response.jobs),
        names=names,
        next_url=f"/jobs?{urlencode({'page': next_page})}" if next_page else "",
    )


async def environment_names(request: web.Request) -> dict[str, str]:
    """id -> name of the environments the caller sees (the first pages), for job lists."""
    names: dict[str, str] = {}
    page = ""
    for _ in range(5):
        message = environments_pb2.ListEnvironmentsRequest(page_size=200, page_token=page)
        response = await _optional(request, api(request).envs.ListEnvironments, message)
        if response is None:
            break
        names.update((env.id, env.name) for env in response.environments)
        if not (page := response.next_page_token):
            break
    return names


async def job_page(request: web.Request) -> web.Response:
    await current_user(request)
    job_id = request.match_info["job_id"]
    job = (await call(request, api(request).jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id))).job
    environment = await _optional(
        request,
        api(request).envs.GetEnvironment,
        environments_pb2.GetEnvironmentRequest(id=job.environment_id),
    )
    allowed: set[str] = set()
    if environment is not None:
        allowed = await permissions(request, environment.environment)
    return render(
        request,
        "job.html",
        nav="jobs",
        job=job,
        env=environment.environment if environment else None,
        allowed=allowed,
        terminal=job.status in TERMINAL_JOBS,
        error=request.query.get("error", ""),
    )


async def cancel_job(request: web.Request) -> web.Response:
    await current_user(request)
    job_id = request.match_info["job_id"]
    try:
        await call(request, api(request).jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
            raise
        query = urlencode({"error": readable(exc)})
        raise web.HTTPFound(f"/jobs/{quote(job_id)}?{query}") from None
    raise web.HTTPFound(f"/jobs/{quote(job_id)}")


def job_json(job: common_pb2.Job) -> dict[str, Any]:
    return {
        "status": job_status(job.status),
        "terminal": job.status in TERMINAL_JOBS,
        "error": job.error,
        "started_at": _iso(job.started_at) if job.HasField("started_at") else "",
        "completed_at": _iso(job.completed_at) if job.HasField("completed_at") else "",
    }


def progress_json(progress: common_pb2.JobProgress) -> dict[str, Any]:
    return {
        "phase": phase_name(progress.phase),
        "packages_done": progress.packages_done,
        "packages_total": progress.packages_total,
        "bytes_done": progress.bytes_done,
        "bytes_total": progress.bytes_total,
    }


def _stream_name(stream: int) -> str:
    return "stderr" if stream == common_pb2.LOG_STREAM_STDERR else "stdout"


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def job_events(request: web.Request) -> web.StreamResponse:
    """The job as Server-Sent Events, from ``WatchJob``: ``job`` on each status change,
    ``lines`` (id = the last seq, so a reconnect resumes after it), ``progress``, then
    ``end``; ``failure`` carries a readable message if the watch cannot go on."""
    if not token(request):
        raise web.HTTPUnauthorized()
    job_id = request.match_info["job_id"]
    try:
        after = int(request.headers.get("Last-Event-ID") or request.query.get("after") or 0)
    except ValueError:
        after = 0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    response.headers["X-Accel-Buffering"] = "no"
    await response.prepare(request)
    message = jobs_pb2.WatchJobRequest(id=job_id, after_seq=after)
    stream = api(request).stream(api(request).jobs.WatchJob, message, token(request))
    try:
        async for chunk in _events(stream):
            await response.write(chunk)
        await response.write(sse("end", {}))
    except grpc.aio.AioRpcError as exc:
        await response.write(sse("failure", {"message": readable(exc)}))
    finally:
        stream.cancel()
    return response


async def _events(stream: Any) -> AsyncIterator[bytes]:
    """The stream's events as SSE chunks, with a comment now and then to keep it open."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for event in stream:
                await queue.put(event)
        except grpc.aio.AioRpcError as exc:
            await queue.put(exc)
        await queue.put(done)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if event is done:
                return
            if isinstance(event, grpc.aio.AioRpcError):
                raise event
            kind = event.WhichOneof("event")
            if kind == "log_lines" and event.log_lines.lines:
                lines = [
                    {
                        "seq": line.seq,
                        "stream": _stream_name(line.stream),
                        "text": line.text,
                    }
                    for line in event.log_lines.lines
                ]
                yield sse("lines", {"lines": lines}, lines[-1]["seq"])
            elif kind == "job":
                yield sse("job", job_json(event.job))
            elif kind == "progress":
                yield sse("progress", progress_json(event.progress))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task


# --- Users and groups -------------------------------------------------------------------


async def _admin(request: web.Request) -> common_pb2.User:
    user = await current_user(request)
    if not user.admin:
        raise web.HTTPForbidden()
    return user


async def users_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    await _admin(request)
    users: list[common_pb2.User] = []
    page = ""
    for _ in range(20):
        message = users_pb2.ListUsersRequest(page_size=200, page_token=page)
        response = await call(request, api(request).users.ListUsers, message)
        users.extend(response.users)
        if not (page := response.next_page_token):
            break
    return render(
        request,
        "users.html",
        status=status,
        nav="users",
        users=users,
        error=error or request.query.get("error", ""),
    )


async def create_user(request: web.Request) -> web.Response:
    await _admin(request)
    data = await form(request)
    message = users_pb2.CreateUserRequest(
        username=data.get("username", "").strip(),
        password=data.get("password", ""),
        admin=data.get("admin") == "on",
    )
    try:
        await call(request, api(request).users.CreateUser, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        status, title, details = describe(exc)
        return await users_page(request, details or title, status)
    raise web.HTTPFound("/admin/users")


async def update_user(request: web.Request) -> web.Response:
    await _admin(request)
    data = await form(request)
    message = users_pb2.UpdateUserRequest(id=request.match_info["user_id"])
    action = data.get("action", "")
    if action in ("disable", "enable"):
        message.disabled = action == "disable"
    elif action in ("make-admin", "revoke-admin"):
        message.admin = action == "make-admin"
    try:
        await call(request, api(request).users.UpdateUser, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        status, title, details = describe(exc)
        return await users_page(request, details or title, status)
    raise web.HTTPFound("/admin/users")


async def groups_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    await current_user(request)
    response = await call(
        request, api(request).groups.ListGroups, groups_pb2.ListGroupsRequest(page_size=200)
    )
    return render(
        request,
        "groups.html",
        status=status,
        nav="groups",
        groups=list(response.groups),
        error=error or request.query.get("error", ""),
    )


async def create_group(request: web.Request) -> web.Response:
    await current_user(request)
    data = await form(request)
    name = data.get("name", "").strip()
    try:
        message = groups_pb2.CreateGroupRequest(name=name)
        await call(request, api(request).groups.CreateGroup, message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        status, title, details = describe(exc)
        return await groups_page(request, details or title, status)
    raise web.HTTPFound(f"/groups/{quote(name)}")


async def group_page(request: web.Request) -> web.Response:
    await current_user(request)
    name = request.match_info["name"]
    message = groups_pb2.ListGroupMembersRequest(group=name, page_size=500)
    response = await call(request, api(request).groups.ListGroupMembers, message)
    return render(
        request,
        "group.html",
        nav="groups",
        name=name,
        members=list(response.usernames),
        error=request.query.get("error", ""),
    )


async def change_group(request: web.Request) -> web.Response:
    await current_user(request)
    name, action = request.match_info["name"], request.match_info["action"]
    data = await form(request)
    stubs = api(request).groups
    username = data.get("username", "").strip()
    back = f"/groups/{quote(name)}"
    try:
        if action == "add":
            message: Any = groups_pb2.AddGroupMemberRequest(group=name, username=username)
            await call(request, stubs.AddGroupMember, message)
        elif action == "remove":
            message = groups_pb2.RemoveGroupMemberRequest(group=name, username=username)
            await call(request, stubs.RemoveGroupMember, message)
        elif action == "delete":
            await call(request, stubs.DeleteGroup, groups_pb2.DeleteGroupRequest(name=name))
            back = "/groups"
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        raise web.HTTPFound(f"{back}?{urlencode({'error': readable(exc)})}") from None
    raise web.HTTPFound(back)


# --- The application --------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


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
    env = "/environments/{env_id}"
    app.add_routes(
        [
            web.get("/", home),
            web.get("/healthz", health),
            web.get("/login", login_page),
            web.post("/login", login),
            web.post("/logout", logout),
            web.get("/environments", environments_page),
            web.get("/environments/new", new_environment_page),
            web.post("/environments/new", create_environment),
            web.get(env, environment_page),
            web.post(f"{env}/install", install),
            web.post(f"{env}/remove", remove),
            web.get(f"{env}/delete", delete_page),
            web.post(f"{env}/delete", delete),
            web.get(f"{env}/export/{{file:pixi\\.(toml|lock)}}", export),
            web.get(f"{env}/history", history_page),
            web.get(f"{env}/rollback", rollback_page),
            web.post(f"{env}/rollback", rollback),
            web.get(f"{env}/sharing", sharing_page),
            web.post(f"{env}/sharing/{{action:add|remove}}", change_sharing),
            web.get("/jobs", jobs_page),
            web.get("/jobs/{job_id}", job_page),
            web.get("/jobs/{job_id}/events", job_events),
            web.post("/jobs/{job_id}/cancel", cancel_job),
            web.get("/admin/users", users_page),
            web.post("/admin/users", create_user),
            web.post("/admin/users/{user_id}", update_user),
            web.get("/groups", groups_page),
            web.post("/groups", create_group),
            web.get("/groups/{name}", group_page),
            web.post("/groups/{name}/{action:add|remove|delete}", change_group),
            web.static("/static", HERE / "static"),
        ]
    )
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
