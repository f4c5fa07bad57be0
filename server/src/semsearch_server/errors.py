"""Typed domain errors shared by core, embedding and index.

The transport maps each class to one gRPC status code (transport/errors.py).
"""

from __future__ import annotations


class SemsearchError(Exception):
    """Base of every error the core reports to a caller. The message is shown to the client."""


class InvalidArgument(SemsearchError):
    """A request field is malformed or out of its allowed range."""


class NotFound(SemsearchError):
    """An unknown collection or document id."""


class AlreadyExists(SemsearchError):
    """Creating something that exists."""


class FailedPrecondition(SemsearchError):
    """The system is not in a state to serve the request (model mismatch, broken collection)."""


class ResourceExhausted(SemsearchError):
    """A request over a size limit."""


class DiskFull(ResourceExhausted):
    """The file system holding a collection has no space left: the write was not stored (none of it).

    Transient: the collection keeps serving reads, and writes succeed again once space is freed."""


class Unavailable(SemsearchError):
    """The service is loading or draining; retry later."""


class StoreUnreachable(Unavailable):
    """The store the collections live on (a Milvus) cannot be reached or did not answer in time; retry later.

    Unlike a loading or draining server, the replica itself is fine: it reports NOT_SERVING until its
    store answers again (store_health.py), then serves on its own."""


class StorageFailed(SemsearchError):
    """A collection's files could not be made durable (an fsync or write reported an I/O error).

    The write in progress is not acknowledged, and the collection is taken out of service until the server
    restarts and recovers it from what is on disk: after a failed fsync the page cache may hold data the disk
    does not, so carrying on would serve (and acknowledge) what may be lost."""


class DataLoss(SemsearchError):
    """Stored data is damaged (a snapshot file whose checksum does not match): refused, nothing changed."""


class Unauthenticated(SemsearchError):
    """Missing or unknown credentials."""


class PermissionDenied(SemsearchError):
    """Credentials that do not allow this call."""


class DeadlineExceeded(SemsearchError):
    """The caller's deadline passed (or it cancelled) before the work was committed."""
