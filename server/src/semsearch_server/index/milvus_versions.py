"""The Milvus store's versions bookkeeping: which write versions are committed, and a document's head."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from semsearch_server.index.milvus_calls import in_

if TYPE_CHECKING:
    from semsearch_server.index.milvus_store import MilvusIndexStore


class Versions:
    """Which write versions have a commit marker (a committed version stays committed: cached)."""

    def __init__(self) -> None:
        self._committed: set[int] = set()
        self._lock = threading.Lock()

    def committed(self, store: MilvusIndexStore, versions: set[int]) -> set[int]:
        with self._lock:
            unknown = versions - self._committed
        if unknown:
            # markers by primary key: a key lookup, where an expression on version is a scan
            keys = [f"{v}:marker" for v in sorted(unknown)]
            rows = store._query(in_("pk", keys), ["version"], limit=len(keys))
            with self._lock:
                self._committed.update(int(r["version"]) for r in rows)
        with self._lock:
            return versions & self._committed

    def add(self, version: int) -> None:
        with self._lock:
            self._committed.add(version)


@dataclasses.dataclass(frozen=True)
class Head:
    """A document's head row: the version last written (``version``, ``end`` passages) and, in ``meta``, the
    version readers used before it (written by the same upsert as the head, before the new version's commit
    marker). Readers use the newest committed of the two, as search does among the document's rows. A head
    written before the previous-version fields existed names one version only."""

    doc_id: str
    versions: tuple[tuple[int, int], ...]  # (version, passage count), newest first

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Head:
        versions = [(int(row["version"]), int(row["end"]))]
        meta = row.get("meta") or {}
        if "previous_version" in meta:
            versions.append((int(meta["previous_version"]), int(meta["previous_passages"])))
        return cls(row["doc_id"], tuple(versions))

    def row_keys(self, before: int | None = None) -> list[str]:
        """The primary keys of the passage rows of the versions named (older than ``before``, if given)."""
        return [f"{v}:{i}:{self.doc_id}" for v, n in self.versions if before is None or v < before for i in range(n)]
