"""Hybrid ranking: fusing a dense (cosine) list and a lexical (BM25) list into one.

Pure arithmetic, no I/O: the service gathers the candidates, this module scores them, and Explain uses
the same FusionContext to say exactly how a fused score came about.

- WEIGHTED: ``w * (d - d_min) / (d_max - d_min) + (1 - w) * l / l_max`` over the candidate pool (the
  union of both lists, every candidate with both scores): cosine is min-max normalised because its
  range depends on the model and the corpus, BM25 divided by its maximum because 0 already means
  "no query term".
- RRF: ``1 / (k + dense rank) + 1 / (k + lexical rank)``, each term only for a list the document is in
  (ranks 1-based within each list; a document with no query term is in no lexical list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semsearch_server.domain import Fusion, HybridParams, Passage

# Each list contributes at least this many candidates to a HYBRID search (more when top_k is larger):
# a document just outside the top_k of one list can still win on the other.
HYBRID_CANDIDATES = 100


@dataclass(frozen=True)
class Candidate:
    doc_id: str
    dense: float  # cosine of the best passage
    lexical: float  # BM25, 0 when no query term occurs
    passage: Passage | None = None
    dense_rank: int = 0  # 1-based rank in the dense list, 0 if not in it
    lexical_rank: int = 0


@dataclass(frozen=True)
class FusionContext:
    """Everything needed to recompute any document's fused score for one query."""

    params: HybridParams
    dense_min: float
    dense_max: float
    lexical_max: float

    def weighted(self, dense: np.ndarray | float, lexical: np.ndarray | float) -> np.ndarray | float:
        w = self.params.dense_weight
        span = self.dense_max - self.dense_min
        dense_part = (np.asarray(dense) - self.dense_min) / span if span > 0 else np.ones_like(np.asarray(dense))
        lexical_part = (
            np.asarray(lexical) / self.lexical_max if self.lexical_max > 0 else np.zeros_like(np.asarray(lexical))
        )
        out = w * dense_part + (1.0 - w) * lexical_part
        return float(out) if np.ndim(out) == 0 else out

    def rrf(self, dense_rank: int, lexical_rank: int) -> float:
        k = self.params.rrf_k
        return (1.0 / (k + dense_rank) if dense_rank else 0.0) + (1.0 / (k + lexical_rank) if lexical_rank else 0.0)

    def score(self, candidate: Candidate) -> float:
        """The fused score, rounded to float32: the value a client receives is the value compared with
        its min_score and ranked by, so a hit scoring exactly min_score is kept."""
        if self.params.fusion is Fusion.RRF:
            return float(np.float32(self.rrf(candidate.dense_rank, candidate.lexical_rank)))
        return float(np.float32(self.weighted(candidate.dense, candidate.lexical)))


def fuse(candidates: Sequence[Candidate], params: HybridParams) -> tuple[list[tuple[Candidate, float]], FusionContext]:
    """Scores the pool; returns [(candidate, fused score)] best first (ties: dense score, then id)."""
    if not candidates:
        return [], FusionContext(params, 0.0, 0.0, 0.0)
    dense = np.array([c.dense for c in candidates], dtype=np.float64)
    lexical = np.array([c.lexical for c in candidates], dtype=np.float64)
    context = FusionContext(params, float(dense.min()), float(dense.max()), float(lexical.max()))
    if params.fusion is Fusion.RRF:
        fused = [context.rrf(c.dense_rank, c.lexical_rank) for c in candidates]
    else:
        fused = context.weighted(dense, lexical)
    # Rounded to float32 as in FusionContext.score: the value the client sees is the value ranked by.
    scores = np.asarray(fused, dtype=np.float32).tolist()
    scored = list(zip(candidates, scores, strict=True))
    scored.sort(key=lambda item: (-item[1], -item[0].dense, item[0].doc_id))
    return scored, context


def ranks(scores: dict[str, float], keep_zero: bool) -> dict[str, int]:
    """1-based ranks by score, best first (ties by id); keep_zero False leaves out scores <= 0."""
    order = sorted((s, i) for i, s in scores.items() if keep_zero or s > 0)
    order.sort(key=lambda item: (-item[0], item[1]))
    return {doc_id: rank for rank, (_, doc_id) in enumerate(order, start=1)}
