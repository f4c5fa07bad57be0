"""semsearch client: a typed wrapper around the semsearch.v1 gRPC API (no torch, no faiss)."""

from semsearch.client import SearchClient
from semsearch.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SemsearchError,
    UnauthenticatedError,
    UnavailableError,
)
from semsearch.types import Document, ExplainResult, Hit, LexicalTerm, Passage, Ranking, Segment

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "Document",
    "ExplainResult",
    "FailedPreconditionError",
    "Hit",
    "InvalidArgumentError",
    "LexicalTerm",
    "NotFoundError",
    "Passage",
    "PermissionDeniedError",
    "Ranking",
    "ResourceExhaustedError",
    "SearchClient",
    "Segment",
    "SemsearchError",
    "UnauthenticatedError",
    "UnavailableError",
]
