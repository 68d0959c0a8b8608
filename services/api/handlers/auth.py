"""AuthService: passwords in, bearer tokens out, with guessing slowed down per username."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import grpc
from sqlalchemy.orm import Session

from darb.v1 import auth_pb2 as pb
from darb.v1 import auth_pb2_grpc as pb_grpc
from services.api.auth.passwords import verify_password
from services.api.auth.tokens import token_hash
from services.api.events import USER_CHANGED_CHANNEL
from services.api.handlers import convert
from services.api.handlers.rpc import answer, authenticate, bearer_token, unary
from services.api.repo import logins, users
from services.api.repo.models import User
from services.api.state import AppState
from shared.errors import ResourceExhausted, Unauthenticated

WRONG_CREDENTIALS = "unknown username or wrong password"
# The users table holds at most this many characters, and PostgreSQL text never a NUL.
MAX_USERNAME = 64


def _storable(username: str) -> bool:
    return 0 < len(username) <= MAX_USERNAME and "\x00" not in username


def _succeeded(session: Session, user: User, ttl: timedelta) -> tuple[str, datetime]:
    logins.forget(session, user.username)
    return users.issue_token(session, user.id, ttl)


class AuthService(pb_grpc.AuthServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state

    @unary(public=True)
    async def Login(self, request: pb.LoginRequest, _caller: User | None) -> pb.LoginResponse:
        if not _storable(request.username):  # no account can have this name
            raise Unauthenticated(WRONG_CREDENTIALS)
        db, limits = self.state.db, self.state.settings.limits
        wait = await db.run(logins.blocked_for, request.username)
        if wait > 0:
            raise ResourceExhausted(
                f"too many failed logins for this username (DARB_LOGIN_MAX_FAILURES is "
                f"{limits.login_max_failures}); try again in {math.ceil(wait)} s"
            )
        user = await db.run(users.by_username, request.username)
        valid = await verify_password(user.password_hash if user else None, request.password)
        if user is None or not valid:
            await db.run(logins.record_failure, request.username, limits)
            raise Unauthenticated(WRONG_CREDENTIALS)
        if user.disabled:
            raise Unauthenticated("this account is disabled; ask an admin")
        ttl = timedelta(seconds=self.state.settings.token_ttl)
        token, expires_at = await db.run(_succeeded, user, ttl)
        return pb.LoginResponse(
            token=token, user=convert.user(user), expires_at=convert.timestamp(expires_at)
        )

    async def Logout(
        self, _request: pb.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogoutResponse:
        return await answer(context, lambda: self._logout(context))

    async def _logout(self, context: grpc.aio.ServicerContext) -> pb.LogoutResponse:
        """Deletes the call's token. Other processes hear of it by the user-changed
        NOTIFY, which drops that user's cached tokens there (they hold no token hashes)."""
        caller = await authenticate(self.state, context)
        token = bearer_token(context)
        bus = self.state.bus

        def revoke(session: Session) -> None:
            users.revoke_token(session, token_hash(token))
            bus.notify_in(session, USER_CHANGED_CHANNEL, caller.id)

        await self.state.db.run(revoke)
        self.state.tokens.forget(token)
        return pb.LogoutResponse()
