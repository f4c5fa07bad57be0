"""Room on a file system, promised before the work that needs it: a full disk is said at once, not after it.

A write is embedded before it reaches SQLite, and under load that takes seconds (the model is shared); a full
disk found only by SQLite's COMMIT is therefore answered after all of that, or after the caller's deadline.
Instead each write claims, before it is embedded, an upper bound of the bytes its transaction may add
(``write_bytes_bound``), and a snapshot the size of its files: a claim is granted only while the file system's
free space covers it and every claim granted before it and not yet released. A write that cannot be granted
is refused at once; one granted before the disk filled (another process's file, say) learns it while it
waits for its vectors (``SpaceClaim.check``), and stops waiting.

The bound is SQLite's: every page a transaction changes is one WAL frame (page + 24 bytes); overflow pages
hold a long text, B-tree leaves its rows and index entries. Measured against the schema of ``local_database``
(batches of 1 to 500 documents of 100 to 20,000 characters, 1 or 20 passages each): at most 1.3x the rows'
bytes in pages plus ~1 page per document and 8 per transaction; the bound allows 1.5x, 2 pages per document,
1 per passage and 16. The WAL's shared-memory index grows by 32 KiB per 4,096 frames (16 MiB of log), too
rarely to claim for: SQLite refuses that write itself.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path

from semsearch_server.index.storage_faults import free_bytes

PAGE_BYTES = 4096  # SQLite's default page size (the store never changes it)
_FRAME_BYTES = PAGE_BYTES + 24
# Characters per passage, at least, when a collection splits texts: a window of 254 tokens of ~4 characters
# each, halved for safety (a passage may overlap the one before).
_CHARS_PER_PASSAGE = 500


class NoRoom(OSError):
    """The file system has less free space than the claim and the claims granted before it."""

    def __init__(self, path: Path, wanted: int, free: int, claimed: int) -> None:
        super().__init__(
            errno.ENOSPC,
            f"no room for {wanted:,} bytes: {free:,} bytes free, {claimed:,} of them promised to work in progress",
            str(path),
        )
        self.wanted = wanted


def write_bytes_bound(row_bytes: int, documents: int, passages: int) -> int:
    """An upper bound of the bytes a transaction storing these rows adds to the WAL (see the module's note).

    Args:
        row_bytes: the rows' bytes (ids, texts, attributes, vectors).
        documents: documents written (each a row in the documents table and its indexes).
        passages: passages written (each a row of the passages table and its two indexes).
    """
    pages = math.ceil(1.5 * row_bytes / PAGE_BYTES) + 2 * documents + passages + 16
    return pages * _FRAME_BYTES


def passages_bound(text_chars: int, split: bool) -> int:
    """How many passages a text may be split into (1 if the collection does not split)."""
    return 1 + (text_chars // _CHARS_PER_PASSAGE if split else 0)


class SpaceClaims:
    """The claims granted and not yet released, per file system (device), for the whole process: every
    collection on one disk draws on the same free space."""

    def __init__(self, free: Callable[[Path], int | None] = free_bytes) -> None:
        self._free = free
        self._lock = threading.Lock()
        self._granted: dict[int, dict[int, int]] = {}  # device -> {claim number: bytes}, in the order granted
        self._numbers = itertools.count()

    def claim(self, path: Path, nbytes: int, refusal: Callable[[NoRoom], Exception] | None = None) -> SpaceClaim:
        """Grants nbytes on path's file system, or raises NoRoom (at once: a statvfs, no I/O).

        Args:
            refusal: what to raise instead of NoRoom (made from it), here and by the claim's check().

        Free space that cannot be told (statvfs fails) grants the claim: SQLite then says whether it fits."""
        device = os.stat(path).st_dev
        with self._lock:
            granted = self._granted.setdefault(device, {})
            claimed = sum(granted.values())
            free = self._free(path)
            if free is None or free >= claimed + nbytes:
                number = next(self._numbers)
                granted[number] = nbytes
                return SpaceClaim(self, path, device, number, nbytes, refusal)
        raise _refused(NoRoom(path, nbytes, free, claimed), refusal)

    def _holds(self, claim: SpaceClaim) -> None:
        with self._lock:
            granted = self._granted.get(claim.device, {})
            # Claims granted earlier come first: when the disk fills, the oldest work keeps its room.
            before = sum(n for number, n in granted.items() if number < claim.number)
            free = self._free(claim.path)
        if free is not None and free < before + claim.nbytes:
            raise _refused(NoRoom(claim.path, claim.nbytes, free, before), claim.refusal)

    def _release(self, claim: SpaceClaim) -> None:
        with self._lock:
            granted = self._granted.get(claim.device, {})
            granted.pop(claim.number, None)
            if not granted:
                self._granted.pop(claim.device, None)

    def claimed(self, path: Path) -> int:
        """Bytes granted and not released on path's file system."""
        with self._lock:
            return sum(self._granted.get(os.stat(path).st_dev, {}).values())


class SpaceClaim:
    """Room granted on a file system until released (a context manager: released on exit)."""

    def __init__(
        self,
        owner: SpaceClaims | None,
        path: Path,
        device: int,
        number: int,
        nbytes: int,
        refusal: Callable[[NoRoom], Exception] | None = None,
    ) -> None:
        self._owner = owner
        self.path = path
        self.device = device
        self.number = number
        self.nbytes = nbytes
        self.refusal = refusal

    def check(self) -> None:
        """Raises NoRoom (or its refusal) if the free space no longer covers this claim and the ones granted
        before it (the disk filled with something else since it was granted)."""
        if self._owner is not None:
            self._owner._holds(self)

    def release(self) -> None:
        if self._owner is not None:
            self._owner._release(self)
            self._owner = None

    def __enter__(self) -> SpaceClaim:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _refused(no_room: NoRoom, refusal: Callable[[NoRoom], Exception] | None) -> Exception:
    if refusal is None:
        return no_room
    error = refusal(no_room)
    error.__cause__ = no_room
    return error


# A store that claims nothing (Milvus: its disk is not ours to watch).
NO_CLAIM = SpaceClaim(None, Path("."), 0, -1, 0)

# The process's claims: every local collection's writes and snapshots.
CLAIMS = SpaceClaims()
