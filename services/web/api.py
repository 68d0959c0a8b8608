"""The control plane as the web UI sees it: async gRPC stubs and the caller's token.

The web process holds no state: every request carries the user's token (from the
session cookie) to the control plane, which decides what the user may see and do.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from darb.v1 import (
    auth_pb2_grpc,
    environments_pb2_grpc,
    groups_pb2_grpc,
    jobs_pb2_grpc,
    users_pb2_grpc,
)
from shared.config import WebSettings
from shared.tls import channel_credentials

# Readable words for the gRPC codes a page can meet, with the HTTP status to answer.
ERRORS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Invalid request"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "Already exists"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Not allowed"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Not possible now"),
    grpc.StatusCode.ABORTED: (409, "Changed meanwhile"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Limit reached"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "Out of range"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "Not available on this server"),
    grpc.StatusCode.UNAVAILABLE: (503, "The control plane is unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "The control plane did not answer in time"),
}

# Codes whose details are internal: the user reads a generic sentence instead.
VAGUE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def describe(exc: grpc.aio.AioRpcError) -> tuple[int, str, str]:
    """HTTP status, title and message of a failed call: never a stack trace."""
    status, title = ERRORS.get(exc.code(), (502, "The control plane refused the request"))
    details = exc.details() or ""
    if exc.code() in VAGUE:
        details = "Please try again in a moment."
    return status, title, details


def readable(exc: grpc.aio.AioRpcError) -> str:
    """One line for the user: the server's message, else what the code means."""
    _, title, details = describe(exc)
    return details or title


class Api:
    """One channel to the control plane for the whole process; calls carry the token."""

    def __init__(self, settings: WebSettings) -> None:
        credentials = channel_credentials(settings.tls)  # the rule of every darb client
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(settings.api_addr, credentials)
        else:
            self.channel = grpc.aio.insecure_channel(settings.api_addr)
        self.timeout = settings.api_timeout
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.users = users_pb2_grpc.UserServiceStub(self.channel)
        self.envs = environments_pb2_grpc.EnvironmentServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.groups = groups_pb2_grpc.GroupServiceStub(self.channel)

    async def call(self, method: Any, request: Any, token: str = "") -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return await method(request, metadata=metadata, timeout=self.timeout)

    def stream(self, method: Any, request: Any, token: str) -> Any:
        """A server stream without a deadline (a job's watch lasts as long as the job)."""
        return method(request, metadata=(("authorization", f"Bearer {token}"),))

    async def close(self) -> None:
        await self.channel.close()
