"""The client's exceptions: one class per gRPC status code a caller may want to handle."""

from __future__ import annotations

import grpc


class SemsearchError(Exception):
    """Any failed call. `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(SemsearchError):
    pass


class NotFoundError(SemsearchError):
    pass


class AlreadyExistsError(SemsearchError):
    pass


class FailedPreconditionError(SemsearchError):
    pass


class ResourceExhaustedError(SemsearchError):
    pass


class UnavailableError(SemsearchError):
    pass


class DeadlineExceededError(SemsearchError):
    pass


class UnauthenticatedError(SemsearchError):
    pass


class PermissionDeniedError(SemsearchError):
    pass


class DataLossError(SemsearchError):
    """Stored data is damaged (a snapshot file whose checksum does not match); nothing was changed."""


_ERROR_FOR_CODE: dict[grpc.StatusCode, type[SemsearchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}


def from_rpc_error(error: grpc.RpcError) -> SemsearchError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return _ERROR_FOR_CODE.get(code, SemsearchError)(code, details or "")
