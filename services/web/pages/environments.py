"""The environments: the list, the new-environment form, an environment's page with its
install, remove, delete and export, and what the history and sharing tabs share with it
(the environment of the URL, the caller's permissions, a form that submits a job)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import grpc
import grpc.aio
from aiohttp import web

from darb.errors import refused_field
from darb.v1 import common_pb2, environments_pb2, jobs_pb2
from services.web.pages.common import (
    PAGE_SIZE,
    api,
    attempt,
    call,
    call_or_back,
    current_user,
    form,
    items_of,
    lines_of,
    optional,
    refusal,
    render,
    submit_form,
)
from shared.manifests import parse_manifest
from shared.roles import PERMISSIONS, held

STATUS_FILTERS = ("READY", "PENDING", "CREATING", "FAILED", "DELETING", "REBUILDING")
ROLE_FILTERS = ("OWNER", "EDITOR", "VIEWER")

# A job form's request, made of the environment's id and the posted fields.
Build = Callable[[str, dict[str, str]], Any]


def job_url(job_id: str) -> str:
    return f"/jobs/{quote(job_id)}"


async def environment_of(request: web.Request) -> common_pb2.Environment:
    """The environment of the URL (``{env_id}``)."""
    message = environments_pb2.GetEnvironmentRequest(id=request.match_info["env_id"])
    response = await call(request, api(request).envs.GetEnvironment, message)
    found: common_pb2.Environment = response.environment
    return found


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
        return held(environment.role or common_pb2.ROLE_OWNER)
    return set(response.permissions)


async def environment_job(
    request: web.Request, method: str, build: Build, tab: str = ""
) -> web.Response:
    """A form of an environment's pages that submits a job: ``build`` makes the request
    of the environment's id and the posted fields, the environment service's ``method``
    takes it; the job's page follows, or the refusal's reason on the ``tab`` it came from
    (the overview, else ``/history``...). A missing environment is a 404."""
    await current_user(request)
    env_id = request.match_info["env_id"]
    message = build(env_id, await form(request))
    back = f"/environments/{quote(env_id)}{tab}"
    response = await call_or_back(request, getattr(api(request).envs, method), message, back)
    raise web.HTTPFound(job_url(response.job.id))


# --- The list and the new-environment form -----------------------------------------------


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def environment_filter(query: Any) -> str:
    """The AIP-160 filter of the list page's controls. The name box matches any part of
    a name (its text between ``*`` wildcards), case-sensitive like the names."""
    clauses = []
    if name := query.get("name", "").strip():
        clauses.append(f"name = {_quoted(f'*{name}*')}")
    scope = query.get("scope", "")
    if scope == "mine":
        clauses.append("owner = me")
    elif scope == "shared":
        clauses.append("shared = true")
    if (status := query.get("status", "")) in STATUS_FILTERS:
        clauses.append(f"status = {status}")
    if (role := query.get("role", "")) in ROLE_FILTERS:
        clauses.append(f"role = {role}")
    return " AND ".join(clauses)


async def environments_page(request: web.Request) -> web.Response:
    await current_user(request)
    query = request.query
    message = environments_pb2.ListEnvironmentsRequest(
        page_size=PAGE_SIZE, page_token=query.get("page", ""), filter=environment_filter(query)
    )
    response, error = await attempt(request, api(request).envs.ListEnvironments, message)
    next_page = response.next_page_token if response else ""
    next_query = {k: v for k, v in query.items() if k != "page"}
    next_url = f"/environments?{urlencode({**next_query, 'page': next_page})}" if next_page else ""
    return render(
        request,
        "environments.html",
        nav="environments",
        environments=list(response.environments) if response else [],
        query=query,
        statuses=STATUS_FILTERS,
        roles=ROLE_FILTERS,
        error=error,
        next_url=next_url,
    )


# The new-environment form's input for each CreateEnvironmentRequest field a refusal can
# name (its google.rpc.BadRequest); any other refusal is the form's as a whole.
FORM_INPUTS = {
    "name": "name",
    "channels": "channels",
    "packages": "packages",
    "platforms": "platforms",
    "manifest": "import",
    "lockfile": "import",
    "environment_yml": "import",
}


def form_input(exc: grpc.aio.AioRpcError) -> str:
    """The input of the new-environment form a refused create concerns ("": none in
    particular). ALREADY_EXISTS is about the name, the only thing a create collides on."""
    if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
        return "name"
    path = refused_field(exc)
    return FORM_INPUTS.get(path.split(".")[0].split("[")[0], "")  # packages[1]: packages


async def new_environment_page(request: web.Request) -> web.Response:
    await current_user(request)
    return render(
        request, "new_environment.html", nav="environments", error="", error_field="", values={}
    )


async def create_environment(request: web.Request) -> web.Response:
    await current_user(request)
    data = await request.post()
    values = {key: value for key, value in data.items() if isinstance(value, str)}
    message = environments_pb2.CreateEnvironmentRequest(
        name=values.get("name", "").strip(),
        channels=items_of(values.get("channels", "")),
        packages=lines_of(values.get("packages", "")),
        platforms=items_of(values.get("platforms", "")),
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

    async def again(request: web.Request, exc: grpc.aio.AioRpcError) -> web.Response:
        text, status = refusal(exc)
        return render(
            request,
            "new_environment.html",
            status=status,
            nav="environments",
            error=text,
            error_field=form_input(exc),
            values=values,
        )

    method = api(request).envs.CreateEnvironment
    return await submit_form(request, method, message, again, lambda done: job_url(done.job.id))


# --- An environment's page ---------------------------------------------------------------


async def environment_page(request: web.Request) -> web.Response:
    await current_user(request)
    env = await environment_of(request)
    stubs = api(request)
    allowed = await permissions(request, env)
    ready = env.current_version > 0
    contents = environments_pb2.ListPackagesRequest(environment_id=env.id)
    manifest = environments_pb2.ExportEnvironmentRequest(id=env.id)
    recent = jobs_pb2.ListJobsRequest(environment_id=env.id, page_size=10)
    listed, exported, jobs = await asyncio.gather(
        _once_ready(ready, request, stubs.envs.ListPackages, contents),
        _once_ready(ready, request, stubs.envs.ExportEnvironment, manifest),
        optional(request, stubs.jobs.ListJobs, recent),
    )
    specs: dict[str, str] = {}
    if exported is not None:
        with contextlib.suppress(Exception):
            specs = parse_manifest(exported.manifest).specs
    return render(
        request,
        "environment.html",
        nav="environments",
        env=env,
        allowed=allowed,
        packages=list(listed.packages) if listed else [],
        specs=sorted(specs.items()),
        jobs=list(jobs.jobs) if jobs else [],
        error=request.query.get("error", ""),
    )


async def _once_ready(ready: bool, request: web.Request, method: Any, message: Any) -> Any:
    """An ``optional`` call about the environment's packages: None before its first
    version (``ready``), when there is nothing to list or export yet."""
    return await optional(request, method, message) if ready else None


def _packages(kind: Any) -> Build:
    """The request of the install and remove forms: their packages, one a line."""

    def build(env_id: str, data: dict[str, str]) -> Any:
        return kind(environment_id=env_id, packages=lines_of(data.get("packages", "")))

    return build


async def install(request: web.Request) -> web.Response:
    build = _packages(environments_pb2.InstallPackagesRequest)
    return await environment_job(request, "InstallPackages", build)


async def remove(request: web.Request) -> web.Response:
    build = _packages(environments_pb2.RemovePackagesRequest)
    return await environment_job(request, "RemovePackages", build)


async def delete_page(request: web.Request) -> web.Response:
    await current_user(request)
    env = await environment_of(request)
    return render(request, "delete.html", nav="environments", env=env)


async def delete(request: web.Request) -> web.Response:
    return await environment_job(
        request,
        "DeleteEnvironment",
        lambda env_id, _: environments_pb2.DeleteEnvironmentRequest(id=env_id),
    )


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
