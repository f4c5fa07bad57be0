"""Snapshots of local collections: one file each under ``<data_dir>/snapshots/``.

A snapshot is ``<name>.snapshot.tar``, an uncompressed tar of three members, in this order:

- ``snapshot.json``: the collection's name, when it was taken, its document count, and the collection's
  manifest (settings and the model fingerprint of its vectors);
- ``documents.sqlite3``: a copy of the collection's database made with SQLite's online backup API in one
  step, i.e. inside one read transaction: every write committed (acknowledged) before the copy started is in
  it, none committed after; writers go on meanwhile (WAL);
- ``SHA256SUMS``: the sha256 of each of the two members before it.

The FAISS and BM25 indexes are not in it: they are derived from the database and rebuilt when the
restored collection is opened. The file is written under a hidden temporary name, fsynced and renamed, so
a crash while it is written leaves no file that lists as a snapshot (the leftover is removed at start-up).
It can be copied to another server's snapshots folder and restored there with the same model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from semsearch_server.domain import ModelFingerprint, SnapshotInfo
from semsearch_server.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from semsearch_server.files import fsync_path

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"
SUFFIX = ".snapshot.tar"
FORMAT_VERSION = 1
INFO_MEMBER = "snapshot.json"
DATABASE_MEMBER = "documents.sqlite3"
SUMS_MEMBER = "SHA256SUMS"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_snapshot_name(name: str, field: str = "name") -> str:
    """A snapshot's name: a plain file name (no path, no leading dot)."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"{field}: {name[:80]!r} is not a valid snapshot name; names match {NAME_PATTERN.pattern} "
            "(see ListSnapshots)"
        )
    return name


class SnapshotFolder:
    """The snapshot files of a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / SNAPSHOTS_DIR

    def path(self, name: str) -> Path:
        return self.root / f"{check_snapshot_name(name)}{SUFFIX}"

    # -- writing ------------------------------------------------------------------------------------
    def create(
        self,
        collection: str,
        manifest: dict,
        backup: Callable[[Path], int],
    ) -> SnapshotInfo:
        """Writes a snapshot of one collection.

        Args:
            manifest: the collection's manifest (settings and model fingerprint).
            backup: backup(dst_path) copies the collection's database consistently to dst_path and returns
                its document count.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        created = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(created)) + f"{int(created * 1e6) % 1_000_000:06d}Z"
        name = f"{collection}-{stamp}"
        final = self.path(name)
        work = self.root / f".{name}.partial"
        tmp = self.root / f".{name}{SUFFIX}.tmp"
        work.mkdir()
        try:
            db_copy = work / DATABASE_MEMBER
            document_count = backup(db_copy)
            info = {
                "format_version": FORMAT_VERSION,
                "collection": collection,
                "created_at": created,
                "document_count": document_count,
                "manifest": manifest,
            }
            info_bytes = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
            db_sum = _sha256_of(db_copy)
            sums = (f"{hashlib.sha256(info_bytes).hexdigest()}  {INFO_MEMBER}\n{db_sum}  {DATABASE_MEMBER}\n").encode()
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, INFO_MEMBER, info_bytes, created)
                tar.add(db_copy, arcname=DATABASE_MEMBER, recursive=False)
                _add_bytes(tar, SUMS_MEMBER, sums, created)
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(self.root)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self._info(final, info)

    # -- reading ------------------------------------------------------------------------------------
    def list(self) -> list[SnapshotInfo]:
        """Every snapshot file, oldest first. A file whose header cannot be read is listed with its name and
        size only (so that it can be deleted; restoring it is DATA_LOSS)."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.glob(f"*{SUFFIX}"):
            if path.name.startswith(".") or not path.is_file():
                continue
            # DeleteSnapshot may remove a file while it is being listed (that was an INTERNAL error, found
            # by the soak): a snapshot gone by the time it is read is not listed.
            try:
                info = _read_info(path)
            except DataLoss as exc:
                if not path.exists():
                    continue
                log.warning("snapshot %s: %s", path, exc)
                info = {}
            try:
                out.append(self._info(path, info))
            except FileNotFoundError:
                continue
        return sorted(out, key=lambda s: (s.created_at, s.name))

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"snapshot {name!r} does not exist in {self.root}") from None
        fsync_path(self.root)

    def extract(self, name: str, running: ModelFingerprint, directory: Path) -> dict:
        """Checks a snapshot whole and writes its database into directory; returns its manifest.

        Raises:
            NotFound: no such snapshot.
            DataLoss: the file is damaged (a checksum does not match, a member is missing or unreadable).
            FailedPrecondition: its vectors came from another model than the running one.
        """
        path = self.path(name)
        if not path.is_file():
            raise NotFound(f"snapshot {name!r} does not exist in {self.root}")
        try:
            with tarfile.open(path, "r:") as tar:
                members = {m.name: m for m in tar.getmembers()}
                if set(members) != {INFO_MEMBER, DATABASE_MEMBER, SUMS_MEMBER} or not all(
                    m.isfile() for m in members.values()
                ):
                    raise DataLoss(f"snapshot {name!r} ({path}) is damaged: members {sorted(members)}")
                sums = _parse_sums(tar.extractfile(members[SUMS_MEMBER]).read(), name, path)
                info_bytes = tar.extractfile(members[INFO_MEMBER]).read()
                _check_sum(hashlib.sha256(info_bytes).hexdigest(), sums.get(INFO_MEMBER), INFO_MEMBER, name, path)
                info = _parse_info(info_bytes, path)
                manifest = info["manifest"]
                stored = ModelFingerprint.from_dict(manifest["model"])
                if not stored.is_compatible(running):
                    raise FailedPrecondition(
                        f"snapshot {name!r} holds vectors of model {stored.short()} but the server runs "
                        f"{running.short()}; restore it on a server started with that --model"
                    )
                directory.mkdir(parents=True, exist_ok=False)
                digest = hashlib.sha256()
                source = tar.extractfile(members[DATABASE_MEMBER])
                with open(directory / DATABASE_MEMBER, "wb") as out:
                    for chunk in iter(lambda: source.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
                _check_sum(digest.hexdigest(), sums.get(DATABASE_MEMBER), DATABASE_MEMBER, name, path)
        except (tarfile.TarError, OSError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise DataLoss(f"snapshot {name!r} ({path}) is damaged: {type(exc).__name__}: {exc}") from None
        fsync_path(directory / DATABASE_MEMBER)
        _check_database(directory / DATABASE_MEMBER, name, path)
        return manifest

    def cleanup(self) -> None:
        """Removes what interrupted snapshots left behind."""
        if self.root.is_dir():
            for leftover in self.root.glob(".*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def _info(self, path: Path, info: dict) -> SnapshotInfo:
        model = (info.get("manifest") or {}).get("model") or {}
        return SnapshotInfo(
            name=path.name[: -len(SUFFIX)],
            collection=str(info.get("collection", "")),
            created_at=float(info.get("created_at", path.stat().st_mtime if not info else 0.0)),
            size_bytes=path.stat().st_size,
            document_count=int(info.get("document_count", 0)),
            model_id=str(model.get("model_name", "")),
        )


def backup_database(source: Path, destination: Path) -> int:
    """Copies a live SQLite database consistently (one backup step = one read transaction); returns the
    number of documents in the copy. Writers on other connections are not blocked (WAL)."""
    src = sqlite3.connect(source, isolation_level=None, timeout=30)
    dst = sqlite3.connect(destination, isolation_level=None)
    try:
        src.execute("PRAGMA query_only=ON")
        src.backup(dst)  # pages=-1: every page in one step
        # A standalone file: no -wal or -shm beside it, whatever the source's mode.
        dst.execute("PRAGMA journal_mode=DELETE")
        count = int(dst.execute("SELECT count(*) FROM documents").fetchone()[0])
    finally:
        dst.close()
        src.close()
    fsync_path(destination)
    return count


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mtime = int(mtime)
    member.mode = 0o644
    tar.addfile(member, io.BytesIO(data))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_sums(data: bytes, name: str, path: Path) -> dict[str, str]:
    sums = {}
    for line in data.decode("ascii").splitlines():
        digest, _, member = line.partition("  ")
        sums[member] = digest
    if set(sums) != {INFO_MEMBER, DATABASE_MEMBER}:
        raise DataLoss(f"snapshot {name!r} ({path}) is damaged: {SUMS_MEMBER} lists {sorted(sums)}")
    return sums


def _check_sum(actual: str, expected: str | None, member: str, name: str, path: Path) -> None:
    if actual != expected:
        raise DataLoss(
            f"snapshot {name!r} ({path}) is damaged: the sha256 of {member} is {actual}, {SUMS_MEMBER} says "
            f"{expected}; restore another snapshot or copy the file again"
        )


def _parse_info(data: bytes, path: Path) -> dict:
    info = json.loads(data)
    if not isinstance(info, dict) or not isinstance(info.get("manifest"), dict):
        raise ValueError(f"{INFO_MEMBER} is not a snapshot description")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise FailedPrecondition(f"{path}: snapshot format {info['format_version']} is newer than this server's")
    return info


def _read_info(path: Path) -> dict:
    """The snapshot's description (its first member), unchecked: for listing."""
    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            if first is None or first.name != INFO_MEMBER:
                raise DataLoss(f"{path}: {INFO_MEMBER} is not its first member")
            return _parse_info(tar.extractfile(first).read(), path)
    except (tarfile.TarError, OSError, ValueError, TypeError, FailedPrecondition) as exc:
        raise DataLoss(f"{path}: unreadable ({exc})") from None


def _check_database(path: Path, name: str, snapshot: Path) -> None:
    try:
        db = sqlite3.connect(path)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        result = str(exc)
    if result != "ok":
        raise DataLoss(f"snapshot {name!r} ({snapshot}): its database fails SQLite's check ({result})")
