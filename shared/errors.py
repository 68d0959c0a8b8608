"""The errors a request can end with, for both services: each carries the gRPC status
code it maps to and a message that is safe to show the caller. Each service maps them
to a status in one place (``services/api/handlers/rpc.py``,
``services/executor/errors.py``); anything else is an internal error, logged there."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An expected failure whose message is safe to show to the caller."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


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
