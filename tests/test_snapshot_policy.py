"""SnapshotPolicy: bulk ingest writes a bounded multiple of the final index; the log to replay stays bounded."""

from __future__ import annotations

import pytest
from semsearch_server.index.snapshot_policy import SnapshotPolicy


def ingest(policy: SnapshotPolicy, total: int, batch: int = 1024) -> tuple[int, int, int]:
    """Simulates an ingest from empty: (vectors written by snapshots, snapshots, longest log replayed)."""
    size = writes = written = snapshots = longest = 0
    size_at_last = 0
    while size < total:
        step = min(batch, total - size)
        size += step
        writes += step
        longest = max(longest, writes)
        if policy.due(writes, size_at_last):
            written += size
            snapshots += 1
            size_at_last, writes = size, 0
    return written, snapshots, longest


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_a_million_document_ingest_writes_a_bounded_multiple_of_the_index(fraction):
    policy = SnapshotPolicy(fraction=fraction)
    written, snapshots, longest = ingest(policy, 1_000_000)
    assert written <= policy.written_bound() * 1_000_000
    assert snapshots < 60  # geometric growth: a few dozen, not hundreds
    assert longest <= max(policy.min_writes, fraction * 1_000_000) + 1024


def test_half_the_index_keeps_snapshot_bytes_within_three_times_the_final_size():
    written, _, _ = ingest(SnapshotPolicy(), 1_000_000)
    assert written <= 3 * 1_000_000
    # What a snapshot every 5,000 writes costs (the previous cadence), for scale: ~100x.
    fixed, _, _ = ingest(SnapshotPolicy(fraction=1e-9, min_writes=5_000, max_writes=5_000), 1_000_000)
    assert fixed > 30 * written


def test_small_collections_wait_min_writes_and_max_writes_caps_the_log():
    policy = SnapshotPolicy(fraction=0.5, min_writes=100, max_writes=10_000)
    assert not policy.due(99, 10) and policy.due(100, 10)
    assert policy.threshold(1_000) == 500
    assert policy.threshold(1_000_000) == 10_000
    _, _, longest = ingest(policy, 200_000, batch=50)
    assert longest <= 10_000


@pytest.mark.parametrize(
    "kwargs", [{"fraction": 0}, {"fraction": -1}, {"min_writes": 0}, {"min_writes": 10, "max_writes": 5}]
)
def test_nonsense_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SnapshotPolicy(**kwargs)
