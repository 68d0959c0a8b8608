"""An environment's history tab: its versions, the diff of two, and the rollback to one."""

from __future__ import annotations

from aiohttp import web

from darb.v1 import environments_pb2
from services.web.pages.common import api, attempt, call, current_user, render
from services.web.pages.environments import environment_job, environment_of, permissions


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
    env = await environment_of(request)
    allowed = await permissions(request, env)
    versions = await _versions(request, env.id)
    diff, diff_error, pair = None, "", None
    query = request.query
    if query.get("from") and query.get("to"):
        try:
            pair = (int(query["from"]), int(query["to"]))
        except ValueError:
            diff_error = "Pick two versions."
        if pair:
            message = environments_pb2.DiffEnvironmentVersionsRequest(
                environment_id=env.id, from_version=pair[0], to_version=pair[1]
            )
            method = api(request).envs.DiffEnvironmentVersions
            diff, diff_error = await attempt(request, method, message)
    return render(
        request,
        "history.html",
        nav="environments",
        env=env,
        allowed=allowed,
        versions=versions,
        diff=diff,
        pair=pair,
        diff_error=diff_error,
        error=query.get("error", ""),
    )


async def rollback_page(request: web.Request) -> web.Response:
    await current_user(request)
    env = await environment_of(request)
    try:
        version = int(request.query.get("version", ""))
    except ValueError:
        raise web.HTTPNotFound() from None
    message = environments_pb2.GetEnvironmentVersionRequest(environment_id=env.id, version=version)
    response = await call(request, api(request).envs.GetEnvironmentVersion, message)
    return render(request, "rollback.html", nav="environments", env=env, version=response.version)


def _rollback(env_id: str, data: dict[str, str]) -> environments_pb2.RollbackEnvironmentRequest:
    try:
        version = int(data.get("version", ""))
    except ValueError:
        version = 0
    return environments_pb2.RollbackEnvironmentRequest(environment_id=env_id, version=version)


async def rollback(request: web.Request) -> web.Response:
    return await environment_job(request, "RollbackEnvironment", _rollback, tab="/history")
