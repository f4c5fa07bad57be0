"""FAISS vector indexes keyed by int64 labels: flat (exact), HNSW and IVF behind one small class.

Scores are inner products of L2-normalised vectors (cosine). Labels are the documents' SQLite row ids.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from semsearch_server.domain import IndexKind, IndexSpec

# HNSW cannot remove vectors: removed labels are masked at search time and the graph is rebuilt
# from the stored vectors once this share of it is dead.
_HNSW_REBUILD_DEAD_FRACTION = 0.25
# Filters matching at most this many documents are answered by exact scoring of those documents.
_EXACT_FILTER_MAX = 20_000
# IVF needs training data: until this many vectors per list exist it answers with exact search.
_IVF_MIN_POINTS_PER_LIST = 39


def _empty_result(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def _pad_to(k: int, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pads results with fewer than k columns with (-inf, -1)."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, labels
    return (
        np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf),
        np.pad(labels, ((0, 0), (0, missing)), constant_values=-1),
    )


def ivf_nlist_for(n: int) -> int:
    """FAISS's rule of thumb: about 4 * sqrt(n) lists."""
    return max(1, min(65536, int(4 * math.sqrt(max(n, 1)))))


class VectorIndex:
    """One collection's vectors. Not thread-safe: the owning store serialises writers against readers."""

    def __init__(self, spec: IndexSpec, dimension: int) -> None:
        self.spec = spec
        self.dimension = dimension
        # HNSW keeps removed vectors in its graph: each add gets a fresh slot id, removed slots are
        # masked at search time, and slots map back to labels.
        self._dead: set[int] = set()
        self._slot_of: dict[int, int] = {}
        self._label_of: dict[int, int] = {}
        self._index = self._empty_index()

    # -- construction -------------------------------------------------------------------------
    def _empty_index(self) -> faiss.Index:
        d = self.dimension
        if self.spec.kind is IndexKind.HNSW:
            inner = faiss.IndexHNSWFlat(d, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.spec.hnsw_ef_construction
            inner.hnsw.efSearch = self.spec.hnsw_ef_search
            return faiss.IndexIDMap2(inner)
        # flat, and IVF before it has been trained
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))

    @property
    def trained(self) -> bool:
        """False for an IVF collection still answering with exact search."""
        if self.spec.kind is not IndexKind.IVF:
            return True
        return isinstance(faiss.downcast_index(self._index), faiss.IndexIVF)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal) - len(self._dead)

    def describe(self) -> str:
        inner = faiss.downcast_index(self._index.index) if isinstance(self._index, faiss.IndexIDMap2) else self._index
        return type(inner).__name__

    # -- writes ------------------------------------------------------------------------------------
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Adds vectors; a label already present is replaced."""
        if len(labels) == 0:
            return
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.remove(labels)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.spec.kind is IndexKind.HNSW:
            start = int(self._index.ntotal)
            slots = np.arange(start, start + len(labels), dtype=np.int64)
            for label, slot in zip(labels.tolist(), slots.tolist(), strict=True):
                self._slot_of[label] = slot
                self._label_of[slot] = label
            self._index.add_with_ids(vectors, slots)
        else:
            self._index.add_with_ids(vectors, labels)

    def remove(self, labels: np.ndarray) -> None:
        if len(labels) == 0:
            return
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self.spec.kind is IndexKind.HNSW:
            for label in labels.tolist():
                slot = self._slot_of.pop(label, None)
                if slot is not None:
                    self._dead.add(slot)
                    del self._label_of[slot]
        else:
            # IVF's hash-table direct map only removes through an IDSelectorArray.
            self._index.remove_ids(faiss.IDSelectorArray(labels))

    def needs_rebuild(self, stored_count: int) -> bool:
        """True when the owner should call rebuild() with every stored vector."""
        if self.spec.kind is IndexKind.HNSW:
            total = int(self._index.ntotal)
            return total > 0 and len(self._dead) / total > _HNSW_REBUILD_DEAD_FRACTION
        if self.spec.kind is IndexKind.IVF and not self.trained:
            nlist = self.spec.ivf_nlist or ivf_nlist_for(stored_count)
            return stored_count >= nlist * _IVF_MIN_POINTS_PER_LIST
        return False

    def rebuild(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Builds the index anew from every live vector (HNSW compaction, IVF training)."""
        self._dead.clear()
        self._slot_of.clear()
        self._label_of.clear()
        if self.spec.kind is IndexKind.IVF:
            nlist = self.spec.ivf_nlist or ivf_nlist_for(len(labels))
            if len(labels) >= nlist * _IVF_MIN_POINTS_PER_LIST:
                quantizer = faiss.IndexFlatIP(self.dimension)
                ivf = faiss.IndexIVFFlat(quantizer, self.dimension, nlist, faiss.METRIC_INNER_PRODUCT)
                ivf.train(np.ascontiguousarray(vectors, dtype=np.float32))
                ivf.nprobe = self.spec.ivf_nprobe
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                ivf.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64))
                self._index = ivf
                return
        self._index = self._empty_index()
        self.add(labels, vectors)

    # -- reads -------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, labels), each (n_queries, k); missing results have label -1.

        Args:
            allowed: if given, only these labels may be returned (metadata filter).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return _empty_result(len(queries), k)
        if allowed is not None and len(allowed) <= _EXACT_FILTER_MAX:
            # A selective filter: score the few allowed vectors exactly rather than hope an
            # approximate graph walk finds them.
            return self._search_subset(queries, k, np.asarray(allowed, dtype=np.int64))
        faiss_allowed = None if allowed is None else self._to_faiss_ids(np.asarray(allowed, dtype=np.int64))
        params = self._params(self._selector(faiss_allowed))
        k_eff = max(1, min(k, int(self._index.ntotal)))
        scores, ids = self._index.search(queries, k_eff, params=params)
        return _pad_to(k, scores, self._to_labels(ids))

    def _search_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faiss_ids = self._to_faiss_ids(allowed)
        if (faiss_ids >= 0).all():
            try:  # every label present (the usual case): one call, no Python loop per vector
                matrix = self._index.reconstruct_batch(faiss_ids)
            except RuntimeError:
                pass
            else:
                scores_all = queries @ matrix.T
                order = np.argsort(-scores_all, axis=1, kind="stable")[:, :k]
                scores = np.take_along_axis(scores_all, order, axis=1).astype(np.float32)
                return _pad_to(k, scores, allowed[order])
        found: list[int] = []
        vectors: list[np.ndarray] = []
        for label, faiss_id in zip(allowed.tolist(), faiss_ids.tolist(), strict=True):
            if faiss_id < 0:
                continue
            try:
                vectors.append(self._index.reconstruct(faiss_id))
            except RuntimeError:  # not in the index
                continue
            found.append(label)
        if not found:
            return _empty_result(len(queries), k)
        scores_all = queries @ np.vstack(vectors).T
        order = np.argsort(-scores_all, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores_all, order, axis=1).astype(np.float32)
        return _pad_to(k, scores, np.asarray(found, dtype=np.int64)[order])

    def _to_faiss_ids(self, labels: np.ndarray) -> np.ndarray:
        """Labels -> ids stored in FAISS: slots for HNSW (-1 for labels not in it), the labels otherwise."""
        if self.spec.kind is IndexKind.HNSW:
            return np.array([self._slot_of.get(int(label), -1) for label in labels], dtype=np.int64)
        return labels

    def _to_labels(self, ids: np.ndarray) -> np.ndarray:
        if self.spec.kind is not IndexKind.HNSW:
            return ids
        lookup = self._label_of
        return np.vectorize(lambda i: lookup.get(int(i), -1), otypes=[np.int64])(ids) if ids.size else ids

    def _selector(self, allowed: np.ndarray | None):
        parts = []
        if allowed is not None:
            parts.append(faiss.IDSelectorBatch(np.ascontiguousarray(allowed[allowed >= 0], dtype=np.int64)))
        if self._dead:
            dead = faiss.IDSelectorBatch(np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)))
            parts.append(faiss.IDSelectorNot(dead))
        if not parts:
            return None
        selector = parts[0] if len(parts) == 1 else faiss.IDSelectorAnd(parts[0], parts[1])
        selector._keepalive = parts  # the SWIG wrappers do not own their children
        return selector

    def _params(self, selector):
        if self.spec.kind is IndexKind.HNSW:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.spec.hnsw_ef_search, 1)
        elif self.spec.kind is IndexKind.IVF and self.trained:
            params = faiss.SearchParametersIVF()
            params.nprobe = self.spec.ivf_nprobe
        elif selector is None:
            return None  # exact search with nothing to exclude: no parameters to build per query
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params._keepalive = selector
        return params

    # -- snapshots ---------------------------------------------------------------------------------
    def write(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    def slot_state(self) -> dict:
        """HNSW bookkeeping a snapshot must carry beside the FAISS file."""
        return {"dead": sorted(self._dead), "slots": [[label, slot] for label, slot in self._slot_of.items()]}

    def read(self, path: Path, state: dict | None = None) -> None:
        index = faiss.read_index(str(path))
        if index.d != self.dimension:
            raise ValueError(f"index dimension {index.d} does not match the model's {self.dimension}")
        # read_index already returns the concrete class; a downcast_index() wrapper would not own it.
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = self.spec.ivf_nprobe
        self._index = index
        state = state or {}
        self._dead = set(state.get("dead", ()))
        self._slot_of = {int(label): int(slot) for label, slot in state.get("slots", ())}
        self._label_of = {slot: label for label, slot in self._slot_of.items()}
