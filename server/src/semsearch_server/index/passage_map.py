"""Passage label -> document label and span, in memory: how a search maps FAISS's labels to documents."""

from __future__ import annotations

import itertools

import numpy as np

from semsearch_server.domain import Passage

# Every change to any PassageMap takes the next number (see `version`).
_VERSIONS = itertools.count(1)


class PassageMap:
    """Passage label -> (document label, index, start, end), in arrays grown as labels grow.

    Searches map FAISS's passage labels to documents and offsets without a database read; 32 bytes a
    passage (32 MB at 1M). A document label of -1 marks a removed passage.
    """

    def __init__(self) -> None:
        self.values = np.full((1024, 4), -1, dtype=np.int64)
        # Renewed by every change, unique across maps: what cached filter answers are checked against.
        self.version = next(_VERSIONS)

    def set(self, rows: np.ndarray) -> None:
        """rows: (n, 5) of passage label, document label, index, start, end."""
        if len(rows) == 0:
            return
        self.version = next(_VERSIONS)
        top = int(rows[:, 0].max()) + 1
        if top > len(self.values):
            grown = np.full((max(top, 2 * len(self.values)), 4), -1, dtype=np.int64)
            grown[: len(self.values)] = self.values
            self.values = grown
        self.values[rows[:, 0]] = rows[:, 1:]

    def remove(self, labels: np.ndarray) -> None:
        labels = labels[labels < len(self.values)]
        self.version = next(_VERSIONS)
        self.values[labels, 0] = -1

    def documents(self, labels: np.ndarray) -> np.ndarray:
        inside = (labels >= 0) & (labels < len(self.values))
        out = np.full(len(labels), -1, dtype=np.int64)
        out[inside] = self.values[labels[inside], 0]
        return out

    def of_documents(self, doc_labels: np.ndarray) -> np.ndarray:
        """The live passage labels of these documents, ascending (one vectorised pass over the map)."""
        if len(doc_labels) == 0:
            return np.empty(0, dtype=np.int64)
        owners = self.values[:, 0]
        wanted = np.zeros(max(int(doc_labels.max()), int(owners.max())) + 1, dtype=bool)
        wanted[doc_labels] = True
        live = owners >= 0
        keep = np.zeros(len(owners), dtype=bool)
        keep[live] = wanted[owners[live]]
        return np.flatnonzero(keep).astype(np.int64)

    def passage(self, label: int) -> Passage:
        _, index, start, end = self.values[label].tolist()
        return Passage(index, start, end)
