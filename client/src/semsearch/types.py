"""Plain data types the client returns, so callers need not touch generated protobuf classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Document:
    """A text with an id and optional metadata: typed attributes (str, int, float, bool, datetime, lists)."""

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """One page of a Scroll: documents in ascending id order, and the cursor of the next page ('' at the end)."""

    documents: list[Document]
    next_cursor: str


@dataclass(frozen=True)
class Passage:
    """A window of a document's text: ``text[start:end]``; index counts the document's passages from 0."""

    index: int
    start: int
    end: int


@dataclass(frozen=True)
class Hit:
    """A search result.

    Attributes:
        score: what the hits are ranked by: cosine (dense), BM25 (lexical) or the fused value (hybrid).
        dense_score: cosine of the query and the best passage (dense and hybrid).
        lexical_score: BM25 of the query and the document (lexical and hybrid).
        passage: the passage that matched best (the whole text for a one-passage document).
    """

    id: str
    score: float
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    dense_score: float = 0.0
    lexical_score: float = 0.0
    passage: Passage | None = None

    @property
    def passage_text(self) -> str:
        """The text of the best passage."""
        return self.text if self.passage is None else self.text[self.passage.start : self.passage.end]


@dataclass(frozen=True)
class LexicalTerm:
    """One query term's share of the BM25 score; the terms' contributions sum to it."""

    term: str
    contribution: float
    query_text: str
    term_frequency: int
    document_frequency: int


@dataclass(frozen=True)
class Ranking:
    """How a stored document ranks for a query (Explain with doc_id).

    Attributes:
        mode: "dense", "lexical" or "hybrid" (what score was computed in).
        rank: 1-based among the documents the filter keeps (0: not among them).
        top_k, kth_score: the k searched with, and the k-th hit's score: the bar the document had to clear.
        dense_score, lexical_score, dense_weight: the fusion's inputs.
        fusion, dense_min, dense_max, lexical_max, rrf_k, dense_rank, lexical_rank: how the fused
            score is computed (hybrid).
    """

    mode: str
    rank: int
    top_k: int
    kth_score: float
    dense_score: float
    lexical_score: float
    lexical_terms: list[LexicalTerm]
    passage: Passage | None
    fusion: str = ""
    dense_weight: float = 0.0
    dense_min: float = 0.0
    dense_max: float = 0.0
    lexical_max: float = 0.0
    rrf_k: int = 0
    dense_rank: int = 0
    lexical_rank: int = 0
    # Set when the filter excludes the document (rank is 0): the condition it fails and its value.
    excluded_by: str = ""


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
        score: the score Search reports for the document in the mode explained.
        query_segments, doc_segments: each side's words (or tokens) with contributions.
        pair_contributions: (rows, cols) share of the score owed to each (query, doc) segment pair.
        cross_attention: (rows, cols) softmax over doc segments of pair similarities, per query segment.
        query_self_attention, doc_self_attention: the model's own attention merged to segments, or None.
        ranking: for a stored document, how it ranks and why (lexical terms, the fusion's inputs).
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
    ranking: Ranking | None = None
