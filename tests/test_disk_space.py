"""Room claimed on a file system before the work that needs it (index/disk_space.py), against a fake statvfs:
claims add up per file system, the oldest keep their room when the disk fills, released room comes back."""

from __future__ import annotations

import errno

import pytest
from semsearch_server.errors import DiskFull
from semsearch_server.index.disk_space import NoRoom, SpaceClaims, passages_bound, write_bytes_bound


class Disk:
    def __init__(self, free: int | None) -> None:
        self.free = free

    def __call__(self, path) -> int | None:
        return self.free


def test_claims_add_up_and_release_gives_the_room_back(tmp_path):
    disk = Disk(1000)
    claims = SpaceClaims(disk)
    first = claims.claim(tmp_path, 600)
    with pytest.raises(NoRoom) as refused:
        claims.claim(tmp_path, 500)  # 600 + 500 > 1000, though 500 alone would fit
    assert refused.value.errno == errno.ENOSPC and refused.value.wanted == 500
    assert "600 of them promised" in str(refused.value)
    second = claims.claim(tmp_path, 400)
    assert claims.claimed(tmp_path) == 1000
    first.release()
    first.release()  # twice: nothing more
    with claims.claim(tmp_path, 600):
        assert claims.claimed(tmp_path) == 1000
    second.release()
    assert claims.claimed(tmp_path) == 0


def test_when_the_disk_fills_the_oldest_claims_keep_their_room(tmp_path):
    disk = Disk(1000)
    claims = SpaceClaims(disk)
    old, new = claims.claim(tmp_path, 500), claims.claim(tmp_path, 400)
    old.check()
    new.check()
    disk.free = 600  # something else took 400 bytes
    old.check()
    with pytest.raises(NoRoom):
        new.check()
    disk.free = 0
    with pytest.raises(NoRoom):
        old.check()


def test_a_refusal_replaces_no_room_and_keeps_it_as_the_cause(tmp_path):
    disk = Disk(100)
    claims = SpaceClaims(disk)

    def refusal(no_room: NoRoom) -> DiskFull:
        return DiskFull(f"disk full: {no_room.wanted} bytes")

    with pytest.raises(DiskFull, match="disk full: 200 bytes") as refused:
        claims.claim(tmp_path, 200, refusal)
    assert isinstance(refused.value.__cause__, NoRoom)
    claim = claims.claim(tmp_path, 50, refusal)
    disk.free = 10
    with pytest.raises(DiskFull, match="50 bytes"):
        claim.check()


def test_free_space_that_cannot_be_told_grants_the_claim(tmp_path):
    claims = SpaceClaims(Disk(None))
    claims.claim(tmp_path, 10**15).check()  # SQLite then says whether the write fits


def test_the_bound_covers_what_sqlite_wrote_for_typical_writes():
    # WAL growth measured for the store's schema (pages of 4,096 bytes + 24): a 2-document write of 6,000
    # characters each took 13 frames, 20 documents of 20,000 characters with 20 passages each 325.
    assert write_bytes_bound(15_243, 2, 2) >= 13 * 4120
    assert write_bytes_bound(1_016_065, 20, 400) >= 325 * 4120
    assert write_bytes_bound(1_722, 1, 1) >= 8 * 4120
    assert passages_bound(20_000, split=False) == 1
    assert passages_bound(20_000, split=True) >= 20_000 // 1_000  # a passage holds ~1,000 characters
