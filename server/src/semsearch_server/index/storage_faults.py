"""Telling a full disk from a failing one, for the local store's SQLite database and snapshot files.

- A full disk is transient: the write that does not fit is refused (nothing of it stored), the collection
  keeps serving reads, and writes work again once space is freed.
- An I/O failure (a failed fsync above all) means a file may not hold what was written, whatever the page
  cache says: the collection is taken out of service until a restart recovers it from what is on disk.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from semsearch_server.files import SyncFailed

SQLITE_IOERR = 10
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_IOERR_SHMSIZE = SQLITE_IOERR | (19 << 8)
# Where SQLite could not grow or create a file (the -shm index, the -wal log) it reports these rather than
# SQLITE_FULL; on a file system with (almost) no space left, that is the cause.
_GROWTH_CODES = {SQLITE_IOERR_SHMSIZE, SQLITE_CANTOPEN}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_ALMOST_FULL_BYTES = 1 << 20


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on path's file system (None if it cannot be told)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """Whether exc says the file system holding path has no space (or no inodes, or no quota) left."""
    if isinstance(exc, SyncFailed):  # even ENOSPC from fsync: written pages were dropped
        return False
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == SQLITE_FULL:
            return True
        if code in _GROWTH_CODES:
            free = free_bytes(path)
            return free is not None and free < _ALMOST_FULL_BYTES
    return False


def is_io_failure(exc: BaseException) -> bool:
    """Whether exc says a file may not hold what was written: a failed fsync, EIO, a file system gone read-only."""
    if isinstance(exc, SyncFailed):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.EIO, errno.EROFS)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == SQLITE_IOERR
    return False


def disk_full_message(path: Path, consequence: str) -> str:
    """What a client is told: that the disk is full, where, and what happened to its request."""
    free = free_bytes(path)
    left = f"{free:,} bytes free" if free is not None else "free space unknown"
    return (
        f"disk full: no space left on the file system holding {path} ({left}); {consequence}. "
        "Free space there and retry: writes resume without a restart"
    )
