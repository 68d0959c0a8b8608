"""The agent's one mapping of ``shared.errors`` to gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from shared.errors import ServiceError

log = logging.getLogger(__name__)
Handler = TypeVar("Handler", bound=Callable[..., Any])


def _status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    log.exception("unexpected error in an RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error in the executor agent"


def maps_errors(handler: Handler) -> Handler:
    """Turn the typed errors a handler raises into gRPC statuses, for unary and streams."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for message in handler(self, request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # mapped, never swallowed
                await context.abort(*_status_of(exc))

        return stream  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # mapped, never swallowed
            await context.abort(*_status_of(exc))

    return unary  # type: ignore[return-value]
