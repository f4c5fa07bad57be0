"""Filters evaluated once per state of a collection: a service sees few distinct filters, each many times.

A filtered search needs the documents a filter matches, their passages' labels, and from those the vector
index derives a bitmap or a copy of their vectors: passes over the whole collection, which cost more than
the search itself when most documents match. The cache keeps them per filter (its canonical form, see
`filter_key`) together with the state they were computed from: the versions of the attribute index and of
the passage map, numbers that no other object or state of either ever has. Any write that can change a
filter's answer changes one of them (an upsert, delete, UpdateAttributes or Reindex; a recovery makes fresh
objects), and an entry whose state is not the current one is never returned. The vector index's own
derivations are keyed by its version in ``AllowedLabels``, so a rebuild of the index alone keeps the labels
and renews only those.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from semsearch_server.filtering.model import All, AnyOf, Condition, Filter, Not
from semsearch_server.index.vector_index import AllowedLabels

# At most this many filters, and this much memory for them all (labels, bitmaps, kept vectors and lists), or
# this share of the collection's vectors if that is more: a filter's kept IVF lists hold its share of them
# (10 % of 1M vectors of d = 384: 154 MB), and a cache that cannot hold them builds them at every search.
CACHE_FILTERS = 16
CACHE_BYTES = 96 * 2**20
CACHE_SHARE_OF_VECTORS = 0.25
# Filters answered without their full evaluation (the candidate check) are remembered, this many, so that
# a second asking in the same state evaluates and caches them.
SEEN_FILTERS = 256


def filter_key(tree: Filter) -> Hashable:
    """A hashable form of the tree that two trees share only when they match the same documents by
    construction: places dropped, every value tagged with its kind (``1``, ``1.0`` and ``true`` are equal
    in Python but not to a filter)."""
    if isinstance(tree, Condition):
        return ("c", tree.field, None if tree.op is None else tree.op.value, _value_key(tree.value))
    if isinstance(tree, All | AnyOf):
        return ("all" if isinstance(tree, All) else "any", *(filter_key(c) for c in tree.children))
    if isinstance(tree, Not):
        return ("not", filter_key(tree.child))
    raise TypeError(f"not a filter: {tree!r}")


def _value_key(value: object) -> Hashable:
    if isinstance(value, tuple | list):
        return ("list", *(_value_key(v) for v in value))
    if isinstance(value, datetime):
        return ("timestamp", value)
    return (type(value).__name__, value)


@dataclass
class FilterMatch:
    """What a filter matched in one state of the collection: sorted document labels (read-only) and, once a
    dense search asked for them, those documents' passages for the vector index."""

    documents: np.ndarray
    passages: AllowedLabels | None = None

    @property
    def nbytes(self) -> int:
        return self.documents.nbytes + (0 if self.passages is None else self.passages.nbytes)


class FilterCache:
    """Least recently used FilterMatch entries, each valid for the state (a tuple of versions) it was
    computed in. Thread-safe."""

    def __init__(
        self,
        max_filters: int = CACHE_FILTERS,
        max_bytes: int = CACHE_BYTES,
        vector_bytes: Callable[[], int] | None = None,
    ) -> None:
        """Args:
        vector_bytes: the memory of the collection's vectors now; the cache may then hold
            CACHE_SHARE_OF_VECTORS of it where that is more than `max_bytes`."""
        self.max_filters = max_filters
        self.max_bytes = max_bytes
        self._vector_bytes = vector_bytes
        self._entries: OrderedDict[Hashable, tuple[tuple, FilterMatch]] = OrderedDict()
        self._lock = threading.Lock()
        self._seen: OrderedDict[Hashable, tuple] = OrderedDict()  # filters asked and not cached, last few
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, state: tuple) -> FilterMatch | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] != state:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            self._trim()  # what the index derived since the last call counts now
            return found[1]

    def seen_before(self, key: Hashable, state: tuple) -> bool:
        """Whether this filter was asked in this state without being cached (and records that it now was): a
        filter's second asking is worth evaluating in full and caching, a one-off is not."""
        with self._lock:
            before = self._seen.get(key) == state
            self._seen[key] = state
            self._seen.move_to_end(key)
            while len(self._seen) > SEEN_FILTERS:
                self._seen.popitem(last=False)
            return before

    def put(self, key: Hashable, state: tuple, match: FilterMatch) -> None:
        with self._lock:
            self._entries[key] = (state, match)
            self._entries.move_to_end(key)
            self._trim()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._seen.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _trim(self) -> None:
        """Drops the least recently used entries past the limits (the newest one stays, whatever its size)."""
        while len(self._entries) > self.max_filters:
            self._entries.popitem(last=False)
        limit = self.byte_limit
        while len(self._entries) > 1 and sum(m.nbytes for _, m in self._entries.values()) > limit:
            self._entries.popitem(last=False)

    @property
    def byte_limit(self) -> int:
        if self._vector_bytes is None:
            return self.max_bytes
        return max(self.max_bytes, int(CACHE_SHARE_OF_VECTORS * self._vector_bytes()))
