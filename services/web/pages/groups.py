"""The groups: the list, a new group, a group's members, one added or removed, and the
group deleted."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import grpc
from aiohttp import web

from darb.v1 import groups_pb2
from services.web.pages.common import (
    api,
    call,
    call_or_back,
    current_user,
    form,
    render,
    submit_form,
    with_reason,
)


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
    message = groups_pb2.CreateGroupRequest(name=name)
    method, done = api(request).groups.CreateGroup, f"/groups/{quote(name)}"
    return await submit_form(request, method, message, with_reason(groups_page), lambda _: done)


async def group_page(request: web.Request) -> web.Response:
    """The members; the controls that change the group only for those who may use them,
    its creator and the admins."""
    user = await current_user(request)
    name = request.match_info["name"]
    message = groups_pb2.ListGroupMembersRequest(group=name, page_size=500)
    response = await call(request, api(request).groups.ListGroupMembers, message)
    can_manage = user.admin or await _creator(request, name) == user.username
    return render(
        request,
        "group.html",
        nav="groups",
        name=name,
        members=list(response.usernames),
        can_manage=can_manage,
        error=request.query.get("error", ""),
    )


async def _creator(request: web.Request, name: str) -> str:
    """The username of the group's creator; "" if its creator was deleted."""
    message = groups_pb2.GetGroupRequest(name=name)
    return (await call(request, api(request).groups.GetGroup, message)).group.created_by


async def change_group(request: web.Request) -> web.Response:
    """Adds or removes a member (back to the group), or deletes the group (to the list);
    a refusal, a missing group's included, shows on the page it came from."""
    await current_user(request)
    name, action = request.match_info["name"], request.match_info["action"]
    data = await form(request)
    stubs = api(request).groups
    username = data.get("username", "").strip()
    back = f"/groups/{quote(name)}"
    if action == "delete":
        message: Any = groups_pb2.DeleteGroupRequest(name=name)
        method, done = stubs.DeleteGroup, "/groups"
    elif action == "add":
        message = groups_pb2.AddGroupMemberRequest(group=name, username=username)
        method, done = stubs.AddGroupMember, back
    else:
        message = groups_pb2.RemoveGroupMemberRequest(group=name, username=username)
        method, done = stubs.RemoveGroupMember, back
    passed_on = (grpc.StatusCode.UNAUTHENTICATED,)
    await call_or_back(request, method, message, back, passed_on)
    raise web.HTTPFound(done)
