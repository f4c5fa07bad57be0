"""semsearch client: a typed wrapper around the semsearch.v1 gRPC API (no torch, no faiss)."""

from semsearch.aio import AsyncSearchClient
from semsearch.client import SearchClient
from semsearch.errors import (
    AlreadyExistsError,
    DataLossError,
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
from semsearch.filters import Field, Filter, all_of, any_of, exists, field, not_
from semsearch.types import Document, ExplainResult, Hit, LexicalTerm, Page, Passage, Ranking, Segment

__all__ = [
    "AlreadyExistsError",
    "AsyncSearchClient",
    "DataLossError",
    "Field",
    "Filter",
    "Page",
    "all_of",
    "any_of",
    "exists",
    "field",
    "not_",
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
