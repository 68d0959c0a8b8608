"""UserService: who am I, and account management for admins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from darb.v1 import users_pb2 as pb
from darb.v1 import users_pb2_grpc as pb_grpc
from services.api.auth.passwords import hash_password
from services.api.events import USER_CHANGED_CHANNEL
from services.api.handlers import convert, paging
from services.api.handlers.rpc import unary
from services.api.ids import parse_id
from services.api.repo import users
from services.api.repo.models import User
from services.api.state import AppState
from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from shared.validation import validate_username

T = TypeVar("T")
MIN_PASSWORD = 8


def _require_admin(caller: User) -> None:
    if not caller.is_admin:
        raise PermissionDenied("only admins may manage users")


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"password must have at least {MIN_PASSWORD} characters")
    return password


def _refuse_self_lockout(caller: User, user_id: str, demote: bool) -> None:
    """An admin may not lock themselves out, so there is always one admin left."""
    if user_id == caller.id and demote:
        raise FailedPrecondition(
            "you cannot delete, disable or remove admin rights from your own account"
        )


class UserService(pb_grpc.UserServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def _change(self, change: Callable[..., T], user_id: str, *args: Any) -> T:
        """Runs ``change`` and drops what is cached of the user (tokens, roles): here once
        it committed, and in other processes by a NOTIFY that the same commit sends."""
        bus = self.state.bus

        def change_and_announce(session: Session) -> T:
            result = change(session, user_id, *args)
            bus.notify_in(session, USER_CHANGED_CHANNEL, user_id)
            return result

        try:
            return await self.state.db.run(change_and_announce)
        finally:
            self.state.bus.user_changed_here(user_id)

    @unary()
    async def GetCurrentUser(
        self, _request: pb.GetCurrentUserRequest, caller: User
    ) -> pb.GetCurrentUserResponse:
        return pb.GetCurrentUserResponse(user=convert.user(caller))

    @unary()
    async def CreateUser(
        self, request: pb.CreateUserRequest, caller: User
    ) -> pb.CreateUserResponse:
        _require_admin(caller)
        validate_username(request.username)
        password_hash = await hash_password(_check_password(request.password))
        user = await self.state.db.run(users.create, request.username, password_hash, request.admin)
        return pb.CreateUserResponse(user=convert.user(user))

    @unary()
    async def ListUsers(self, request: pb.ListUsersRequest, caller: User) -> pb.ListUsersResponse:
        _require_admin(caller)
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, (str,))
        rows = await self.state.db.run(users.page, after[0] if after else "", size + 1)
        token = paging.encode([rows[size - 1].username]) if len(rows) > size else ""
        return pb.ListUsersResponse(
            users=[convert.user(row) for row in rows[:size]], next_page_token=token
        )

    @unary()
    async def UpdateUser(
        self, request: pb.UpdateUserRequest, caller: User
    ) -> pb.UpdateUserResponse:
        _require_admin(caller)
        user_id = parse_id(request.id, "id")
        admin = request.admin if request.HasField("admin") else None
        disabled = request.disabled if request.HasField("disabled") else None
        _refuse_self_lockout(caller, user_id, demote=admin is False or bool(disabled))
        password_hash = None
        if request.HasField("password"):
            password_hash = await hash_password(_check_password(request.password))
        user = await self._change(users.update, user_id, password_hash, admin, disabled)
        return pb.UpdateUserResponse(user=convert.user(user))

    @unary()
    async def DeleteUser(
        self, request: pb.DeleteUserRequest, caller: User
    ) -> pb.DeleteUserResponse:
        _require_admin(caller)
        user_id = parse_id(request.id, "id")
        _refuse_self_lockout(caller, user_id, demote=True)
        await self._change(users.delete_user, user_id)
        return pb.DeleteUserResponse()
