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


class Unavailable(SemsearchError):
    """The service is loading or draining; retry later."""


class Unauthenticated(SemsearchError):
    """Missing or unknown credentials."""


class PermissionDenied(SemsearchError):
    """Credentials that do not allow this call."""


class DeadlineExceeded(SemsearchError):
    """The caller's deadline passed (or it cancelled) before the work was committed."""
