"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from semsearch_server import errors

STATUS_FOR_ERROR: dict[type[errors.SemsearchError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DiskFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageFailed: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}


# Status details travel in an HTTP/2 trailer, percent-encoded (every byte outside printable ASCII takes
# three). A client drops a response whose headers pass its 8 KiB limit and reports RESOURCE_EXHAUSTED in
# place of the real status, so a message that echoes a huge request value is cut well below that.
MAX_DETAILS_BYTES = 4096


def status_details(exc: errors.SemsearchError) -> str:
    """The error's message, cut to at most MAX_DETAILS_BYTES once percent-encoded."""
    message = str(exc)
    budget = MAX_DETAILS_BYTES - 64  # room for the note on what was cut
    for i, char in enumerate(message):
        budget -= 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "surrogatepass"))
        if budget < 0:
            return f"{message[:i]}... ({len(message) - i} more characters cut)"
    return message


def status_for(exc: errors.SemsearchError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return grpc.StatusCode.INTERNAL
