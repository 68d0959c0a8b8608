"""Exceptions of the SDK: one class per gRPC status code, so callers never catch grpc.RpcError.

Every exception carries the server's message unchanged (``str(exc)``) and its ``code``;
an ``InvalidArgument`` also the request field the server says it refuses (``field``).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def refused_field(error: grpc.RpcError) -> str:
    """The path of the request field a failed call's google.rpc.BadRequest names (its
    first FieldViolation, AIP-193; "" for none), read with grpc_status from the status
    details (the ``grpc-status-details-bin`` trailer) of a blocking call's error or a
    ``grpc.aio.AioRpcError``."""
    if not callable(getattr(error, "trailing_metadata", None)):
        return ""  # an RpcError that is no call: no status to read
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that do not match the call's own code and message
        return ""
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and bad_request.field_violations:
            return str(bad_request.field_violations[0].field)
    return ""


class DarbError(Exception):
    """Base of every SDK error; ``code`` is the gRPC status the call ended with."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    @property
    def message(self) -> str:
        return str(self)


class Cancelled(DarbError):
    code = grpc.StatusCode.CANCELLED


class Unknown(DarbError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(DarbError):
    """``field`` is the path of the request field the server refused (its
    google.rpc.BadRequest, e.g. ``packages``), "" when it named none."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class DeadlineExceeded(DarbError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(DarbError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DarbError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DarbError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DarbError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(DarbError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DarbError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(DarbError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(DarbError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(DarbError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(DarbError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(DarbError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(DarbError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[DarbError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_rpc_error(exc: grpc.RpcError) -> DarbError:
    """The SDK exception for a failed call: the one place status codes become classes."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else None
    message = details or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message, refused_field(exc))
    return _BY_CODE.get(code, Unknown)(message)
