"""Crash-safe file writes: temporary file, fsync, atomic rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path


class SyncFailed(OSError):
    """fsync reported an error: what was written may not be on disk, whatever the page cache says.

    Never retried as if nothing happened (Linux may drop the failed pages and report success to the next
    fsync): the file's owner takes it out of service."""


def fsync_path(path: Path) -> None:
    """fsyncs a file or directory.

    Raises:
        SyncFailed: fsync itself failed (with its errno).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SyncFailed(exc.errno, f"fsync failed: {exc.strerror}", str(path)) from exc
    finally:
        os.close(fd)


class StagedFiles:
    """Files written under temporary names beside their targets, then renamed into place together.

    Until commit() nothing visible changes; a failure (a full disk) removes every temporary file, so the
    previous files stay as they were and the space is handed back.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def write(self, path: Path, write: Callable[[Path], None]) -> Path:
        """Calls write(tmp_path) and fsyncs the file; returns tmp_path."""
        tmp = path.with_name(f".{path.name}.tmp")
        self._staged.append((tmp, path))
        write(tmp)
        fsync_path(tmp)
        return tmp

    def write_json(self, path: Path, data: dict) -> Path:
        return self.write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))

    def commit(self) -> None:
        """Renames every staged file over its target, in the order written, and fsyncs the directories."""
        for tmp, path in self._staged:
            os.replace(tmp, path)
        for directory in dict.fromkeys(path.parent for _, path in self._staged):
            fsync_path(directory)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._staged = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()  # after commit(): nothing left to remove


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls write(tmp_path), fsyncs the file, renames it over path and fsyncs the directory.

    On failure the temporary file is removed and path is left as it was."""
    with StagedFiles() as staged:
        staged.write(path, write)
        staged.commit()


def atomic_write_json(path: Path, data: dict) -> None:
    with StagedFiles() as staged:
        staged.write_json(path, data)
        staged.commit()


def sha256_file(path: Path, digest=None) -> str:
    """The file's sha256 hex digest; with `digest`, feeds that running hash instead and returns it."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
