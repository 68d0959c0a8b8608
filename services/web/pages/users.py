"""The administrators' users page: the list, a new user, and a user disabled or enabled,
made an administrator or no longer one."""

from __future__ import annotations

from aiohttp import web

from darb.v1 import common_pb2, users_pb2
from services.web.pages.common import admin, api, call, form, render, submit_form, with_reason

USERS = "/admin/users"


async def users_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    await admin(request)
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
    await admin(request)
    data = await form(request)
    message = users_pb2.CreateUserRequest(
        username=data.get("username", "").strip(),
        password=data.get("password", ""),
        admin=data.get("admin") == "on",
    )
    method = api(request).users.CreateUser
    return await submit_form(request, method, message, with_reason(users_page), lambda _: USERS)


async def update_user(request: web.Request) -> web.Response:
    await admin(request)
    data = await form(request)
    message = users_pb2.UpdateUserRequest(id=request.match_info["user_id"])
    action = data.get("action", "")
    if action in ("disable", "enable"):
        message.disabled = action == "disable"
    elif action in ("make-admin", "revoke-admin"):
        message.admin = action == "make-admin"
    method = api(request).users.UpdateUser
    return await submit_form(request, method, message, with_reason(users_page), lambda _: USERS)
