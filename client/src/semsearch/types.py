"""Plain data types the client returns, so callers need not touch generated protobuf classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Document:
    """A text with an id and optional string metadata."""

    id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """A search result: cosine similarity `score` of the query and the document."""

    id: str
    score: float
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """A word or wordpiece; `text == original[start:end]`; contributions of one side sum to the score."""

    text: str
    start: int
    end: int
    contribution: float
    special: bool


@dataclass(frozen=True)
class ExplainResult:
    """Why a query matched a document.

    Attributes:
        score: cosine similarity, as Search reports it.
        query_segments, doc_segments: each side's words (or tokens) with contributions.
        pair_contributions: (rows, cols) share of the score owed to each (query, doc) segment pair.
        cross_attention: (rows, cols) softmax over doc segments of pair similarities, per query segment.
        query_self_attention, doc_self_attention: the model's own attention merged to segments, or None.
    """

    score: float
    query_segments: list[Segment]
    doc_segments: list[Segment]
    pair_contributions: np.ndarray
    cross_attention: np.ndarray
    query_self_attention: np.ndarray | None
    doc_self_attention: np.ndarray | None
    attention_layer: int
    attention_head: int
    query_truncated: bool
    doc_truncated: bool
    index_score: float
    notes: list[str]
