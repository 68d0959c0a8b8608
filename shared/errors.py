"""The errors a request can end with, for both services: each carries the gRPC status
code it maps to and a message that is safe to show the caller. Each service maps them
to a status in one place (``services/api/handlers/rpc.py``,
``services/executor/errors.py``); anything else is an internal error, logged there.
Clients read the field a refusal names with ``darb.errors.refused_field``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc


class ServiceError(Exception):
    """An expected failure whose message is safe to show to the caller."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ServiceError):
    """A request the service refuses as it is. ``field`` is the path of the request
    field it refuses (AIP-193: ``packages``, ``name``, ``filter``...; "" for none in
    particular); the control plane sends it as a google.rpc.BadRequest."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def refusing(field: str) -> Iterator[None]:
    """Names ``field`` as the request field an ``InvalidArgument`` raised inside refuses,
    unless it names one already: the validators are shared by several requests, so the
    handler that knows which field it passed them says so."""
    try:
        yield
    except InvalidArgument as exc:
        exc.field = exc.field or field
        raise


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    """A quota or size limit; the message names the limit and the setting that sets it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
