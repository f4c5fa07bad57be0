"""When to rewrite a collection's snapshot: proportionally to its size, not every fixed number of writes.

A snapshot rewrites (and re-hashes) the whole index; the write-ahead log (the database rows newer than the
snapshot) is what a restart replays. Every fixed N writes makes a bulk ingest rewrite the index N/size
times over: about 100x the final index for 1M documents at N = 5,000. Snapshotting once the log since the
last snapshot reaches a fraction f of the index size makes the snapshots of an ingest grow geometrically
(each (1 + f) times the previous), so the bytes written stay below (1 + f) / f times the final index (3x
for f = 0.5), while a restart never replays more than f times the index (or ``max_writes``).

Pure policy: the store keeps the counters and asks ``due()`` after each write.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SnapshotPolicy:
    """Snapshot when the writes since the last snapshot reach ``fraction`` of the index size then.

    Attributes:
        fraction: log since the last snapshot / vectors in the index at that snapshot (> 0).
        min_writes: a small collection still waits this many writes (snapshots of a few vectors are
            cheap, but not worth one per write).
        max_writes: if set, snapshot at the latest after this many writes however big the index, to bound
            restart time (HNSW replays by inserting into the graph, ~1 ms per vector per core).
    """

    fraction: float = 0.5
    min_writes: int = 5_000
    max_writes: int | None = None

    def __post_init__(self) -> None:
        if not self.fraction > 0:
            raise ValueError(f"fraction must be > 0, got {self.fraction}")
        if self.min_writes < 1:
            raise ValueError(f"min_writes must be >= 1, got {self.min_writes}")
        if self.max_writes is not None and self.max_writes < self.min_writes:
            raise ValueError(f"max_writes ({self.max_writes}) must be >= min_writes ({self.min_writes})")

    def threshold(self, size_at_last_snapshot: int) -> int:
        """Writes after which the next snapshot is due."""
        writes = max(self.min_writes, int(self.fraction * max(size_at_last_snapshot, 0)))
        return writes if self.max_writes is None else min(writes, self.max_writes)

    def due(self, writes_since_snapshot: int, size_at_last_snapshot: int) -> bool:
        """Whether to snapshot now.

        Args:
            writes_since_snapshot: vectors added or removed since the last snapshot (the log to replay).
            size_at_last_snapshot: vectors in the index when the last snapshot was written (0: none yet).
        """
        return writes_since_snapshot >= self.threshold(size_at_last_snapshot)

    def written_bound(self) -> float:
        """Upper bound of (vectors written by snapshots during an ingest from empty) / (final vectors),
        ignoring the min_writes start and any max_writes cap: (1 + f) / f."""
        return (1 + self.fraction) / self.fraction
