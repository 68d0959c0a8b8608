"""The one place where requests are authenticated and errors become status codes.

Handlers are written as ``method(self, request, caller)`` and decorated with ``unary``
or ``streaming``; ``self.state`` is the AppState. Expected errors keep their message;
anything else is logged and answered INTERNAL with no detail, so SQL, paths and
tracebacks never reach the caller. An INVALID_ARGUMENT that names the request field it
refuses also carries a google.rpc.BadRequest with that field (AIP-193) in the status
details (the ``grpc-status-details-bin`` trailer), for clients to show it by the field.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import psycopg
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.api.auth.tokens import token_hash
from services.api.repo import users
from services.api.repo.models import User
from services.api.state import AppState
from shared.errors import InvalidArgument, ServiceError, Unauthenticated

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _status(exc: Exception) -> tuple[grpc.StatusCode, str, str]:
    """The code, message and refused request field ("" for none) of a failed call."""
    if isinstance(exc, InvalidArgument):
        return exc.code, str(exc), exc.field
    if isinstance(exc, ServiceError):
        return exc.code, str(exc), ""
    if isinstance(exc, OperationalError | PoolTimeout | psycopg.OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        log.warning("database unavailable: %s", exc)
        return grpc.StatusCode.UNAVAILABLE, "the database is unavailable; try again", ""
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error", ""


def _bad_request(message: str, field: str) -> grpc.Status:
    """INVALID_ARGUMENT with ``message``, its details one BadRequest naming ``field``."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=message, details=[detail])
    )
    return status


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, field: str
) -> NoReturn:
    """Ends the call with a status from ``_status``."""
    if field:
        await context.abort_with_status(_bad_request(message, field))
    await context.abort(code, message)


def bearer_token(context: grpc.aio.ServicerContext) -> str:
    """The token of the call's ``authorization: Bearer`` metadata."""
    header = dict(context.invocation_metadata() or ()).get("authorization", "")
    scheme, _, token = str(header).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    return token.strip()


async def authenticate(state: AppState, context: grpc.aio.ServicerContext) -> User:
    token = bearer_token(context)
    cached = state.tokens.user(token)
    if cached is not None:
        return cached
    generation = state.tokens.generation
    found = await state.db.read(users.token_owner, token_hash(token))
    if found is None:
        raise Unauthenticated("the token is invalid or has expired; log in again")
    user, expires_at = found
    state.tokens.put(token, (user, expires_at), generation)
    return user


async def answer(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Resp]]) -> Resp:
    """``call``'s response, or its error as the call's status."""
    try:
        return await call()
    except Exception as exc:
        code, message, field = _status(exc)
    await _abort(context, code, message, field)


def unary(
    *, public: bool = False
) -> Callable[[Callable[[Any, Req, User], Awaitable[Resp]]], Callable[..., Awaitable[Resp]]]:
    def decorate(
        method: Callable[[Any, Req, User], Awaitable[Resp]],
    ) -> Callable[..., Awaitable[Resp]]:
        @functools.wraps(method)
        async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            async def call() -> Resp:
                caller = None if public else await authenticate(self.state, context)
                return await method(self, request, caller)  # type: ignore[arg-type]

            return await answer(context, call)

        return handler

    return decorate


def streaming(
    method: Callable[[Any, Req, User], AsyncIterator[Resp]],
) -> Callable[..., AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def handler(
        self: Any, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        try:
            caller = await authenticate(self.state, context)
            async for response in method(self, request, caller):
                yield response
            return
        except Exception as exc:
            code, message, field = _status(exc)
        await _abort(context, code, message, field)

    return handler
