"""The IndexStore interface: one collection's documents and vectors, durable and searchable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from semsearch_server.core.models import Document, Hit, IndexSpec


class IndexStore(Protocol):
    """A collection. Every method is thread-safe; a write returns only once it is durable."""

    name: str
    spec: IndexSpec

    def upsert(self, docs: Sequence[Document], vectors: np.ndarray) -> int: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def get(self, ids: Sequence[str]) -> list[Document]: ...

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    def search(
        self, queries: np.ndarray, top_k: int, min_score: float, filter: Mapping[str, str]
    ) -> list[list[Hit]]: ...

    def count(self) -> int: ...

    def snapshot(self) -> None: ...

    def close(self) -> None: ...
