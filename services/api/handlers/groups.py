"""GroupService: named sets of users for environment policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from darb.v1 import groups_pb2 as pb
from darb.v1 import groups_pb2_grpc as pb_grpc
from services.api.events import USER_CHANGED_CHANNEL
from services.api.handlers import paging
from services.api.handlers.convert import timestamp
from services.api.handlers.rpc import unary
from services.api.repo import groups
from services.api.repo.models import User
from services.api.state import AppState
from shared.validation import validate_name, validate_username


def _group(row: Any) -> pb.Group:
    return pb.Group(
        name=row.name,
        created_by=row.created_by or "",
        created_at=timestamp(row.created_at),
        member_count=row.member_count,
    )


class GroupService(pb_grpc.GroupServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def _membership(self, change: Callable[..., list[str]], *args: Any) -> None:
        """Runs ``change``, which returns the users whose groups it changed, and drops
        what every control plane cached of their roles: here at once, elsewhere by the
        NOTIFY its commit sends."""
        bus = self.state.bus
        changed: list[str] = []

        def change_and_announce(session: Session) -> None:
            changed.extend(change(session, *args))
            for user_id in changed:
                bus.notify_in(session, USER_CHANGED_CHANNEL, user_id)

        await self.state.db.run(change_and_announce)
        for user_id in changed:
            bus.user_changed_here(user_id)

    @unary()
    async def CreateGroup(
        self, request: pb.CreateGroupRequest, caller: User
    ) -> pb.CreateGroupResponse:
        name = validate_name("group name", request.name)
        row = await self.state.db.run(groups.create, caller, name)
        return pb.CreateGroupResponse(group=_group(row))

    @unary()
    async def DeleteGroup(
        self, request: pb.DeleteGroupRequest, caller: User
    ) -> pb.DeleteGroupResponse:
        name = validate_name("group name", request.name)
        bound: list[str] = []

        def delete(session: Session) -> list[str]:
            members, environments = groups.delete_group(session, caller, name)
            bound.extend(environments)
            return members

        await self._membership(delete)
        for environment_id in bound:  # their policies named the group
            self.state.bus.environment_changed_here(environment_id)
        return pb.DeleteGroupResponse()

    @unary()
    async def GetGroup(self, request: pb.GetGroupRequest, caller: User) -> pb.GetGroupResponse:
        name = validate_name("group name", request.name)
        row = await self.state.db.read(groups.get, caller, name)
        return pb.GetGroupResponse(group=_group(row))

    @unary()
    async def ListGroups(
        self, request: pb.ListGroupsRequest, caller: User
    ) -> pb.ListGroupsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, (str,))
        rows = await self.state.db.read(groups.page, caller, after[0] if after else "", size + 1)
        token = paging.encode([rows[size - 1].name]) if len(rows) > size else ""
        return pb.ListGroupsResponse(
            groups=[_group(row) for row in rows[:size]], next_page_token=token
        )

    @unary()
    async def AddGroupMember(
        self, request: pb.AddGroupMemberRequest, caller: User
    ) -> pb.AddGroupMemberResponse:
        name = validate_name("group name", request.group)
        username = validate_username(request.username)
        await self._membership(lambda s: [groups.add_member(s, caller, name, username)])
        return pb.AddGroupMemberResponse()

    @unary()
    async def RemoveGroupMember(
        self, request: pb.RemoveGroupMemberRequest, caller: User
    ) -> pb.RemoveGroupMemberResponse:
        name = validate_name("group name", request.group)
        username = validate_username(request.username)
        await self._membership(lambda s: [groups.remove_member(s, caller, name, username)])
        return pb.RemoveGroupMemberResponse()

    @unary()
    async def ListGroupMembers(
        self, request: pb.ListGroupMembersRequest, caller: User
    ) -> pb.ListGroupMembersResponse:
        name = validate_name("group name", request.group)
        size = paging.page_size(request.page_size)
        after = paging.decode(request.page_token, (str,))
        start = after[0] if after else ""
        names = await self.state.db.read(groups.members, caller, name, start, size + 1)
        token = paging.encode([names[size - 1]]) if len(names) > size else ""
        return pb.ListGroupMembersResponse(usernames=names[:size], next_page_token=token)
