"""AuthService: passwords in, bearer tokens out."""

from __future__ import annotations

from datetime import timedelta

from darb.v1 import auth_pb2 as pb
from darb.v1 import auth_pb2_grpc as pb_grpc
from services.api import convert
from services.api.errors import Unauthenticated
from services.api.models import User
from services.api.passwords import verify_password
from services.api.repo import users
from services.api.rpc import unary
from services.api.state import AppState


class AuthService(pb_grpc.AuthServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    @unary(public=True)
    async def Login(self, request: pb.LoginRequest, _caller: User | None) -> pb.LoginResponse:
        user = await self.state.db.run(users.by_username, request.username)
        valid = await verify_password(user.password_hash if user else None, request.password)
        if user is None or not valid:
            raise Unauthenticated("unknown username or wrong password")
        ttl = timedelta(seconds=self.state.settings.token_ttl)
        token, expires_at = await self.state.db.run(users.issue_token, user.id, ttl)
        return pb.LoginResponse(
            token=token, user=convert.user(user), expires_at=convert.timestamp(expires_at)
        )
