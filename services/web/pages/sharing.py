"""An environment's sharing tab: its members and their roles, one added or removed at a
time against the policy's etag (a change made meanwhile is shown, not overwritten)."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote

from aiohttp import web

from darb.v1 import common_pb2, environments_pb2
from services.web.pages.common import (
    api,
    back_with,
    call,
    call_or_back,
    current_user,
    form,
    render,
)
from services.web.pages.environments import environment_of, permissions

ROLE_CHOICES = {
    "viewer": common_pb2.ROLE_VIEWER,
    "editor": common_pb2.ROLE_EDITOR,
    "owner": common_pb2.ROLE_OWNER,
}


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


async def sharing_page(request: web.Request) -> web.Response:
    await current_user(request)
    env = await environment_of(request)
    allowed = await permissions(request, env)
    message = environments_pb2.GetEnvironmentPolicyRequest(environment_id=env.id)
    response = await call(request, api(request).envs.GetEnvironmentPolicy, message)
    return render(
        request,
        "sharing.html",
        nav="environments",
        env=env,
        allowed=allowed,
        members=_members(response.policy),
        etag=response.policy.etag,
        error=request.query.get("error", ""),
    )


def _changed(
    rows: list[tuple[str, int]], action: str, data: dict[str, str], back: str
) -> list[tuple[str, int]]:
    """The members once the form's change is made (a form naming no one goes back)."""
    if action != "add":
        member = data.get("member", "")
        return [row for row in rows if row[0] != member]
    kind, name = data.get("kind", "user"), data.get("name", "").strip()
    role = ROLE_CHOICES.get(data.get("role", ""), common_pb2.ROLE_VIEWER)
    if kind == "everyone":
        member = "allAuthenticatedUsers"
    elif kind in ("user", "group") and name:
        member = f"{kind}:{name}"
    else:
        raise back_with(back, "Name a user or a group.")
    return [row for row in rows if row[0] != member] + [(member, role)]


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
        raise back_with(back, error)
    rows = _changed(_members(policy), request.match_info["action"], data, back)
    update = environments_pb2.SetEnvironmentPolicyRequest(
        environment_id=env_id, policy=_policy(rows, policy.etag)
    )
    await call_or_back(request, stubs.envs.SetEnvironmentPolicy, update, back)
    raise web.HTTPFound(back)
