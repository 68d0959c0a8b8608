"""Errors a request can end with. ``services.api.handlers.rpc`` maps them to status codes."""

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


class ResourceExhausted(ServiceError):
    """A quota or size limit; the message names the limit and the setting that sets it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
