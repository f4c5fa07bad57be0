"""Local collections: directories under <data_dir>/collections, with their aliases and snapshots."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from semsearch_server.domain import CollectionSettings, ModelFingerprint, SnapshotInfo
from semsearch_server.errors import DiskFull
from semsearch_server.files import atomic_write_json, fsync_path
from semsearch_server.index.base import CollectionBroken
from semsearch_server.index.faiss_store import FaissIndexStore
from semsearch_server.index.local_manifest import (
    ALIASES_FILE,
    COLLECTIONS_DIR,
    read_manifest,
    settings_from_manifest,
    write_manifest,
)
from semsearch_server.index.local_snapshots import SnapshotFolder
from semsearch_server.index.storage_faults import disk_full_message, is_disk_full


class LocalStoreProvider:
    """Collections as directories under ``<data_dir>/collections``, each a FaissIndexStore; aliases in
    ``<data_dir>/aliases.json``; snapshots as files under ``<data_dir>/snapshots``."""

    # Only this process changes the aliases: the registry's copy is the truth.
    shared = False

    def __init__(self, data_dir: Path, snapshot_every: int = 5000) -> None:
        self.root = data_dir / COLLECTIONS_DIR
        self._aliases_path = data_dir / ALIASES_FILE
        self._snapshots = SnapshotFolder(data_dir)
        self._snapshot_every = snapshot_every

    # -- aliases -------------------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        try:
            data = json.loads(self._aliases_path.read_text())
            return {str(k): str(v) for k, v in data["aliases"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CollectionBroken(f"{self._aliases_path}: unreadable ({exc})") from None

    def save_aliases(self, aliases: Mapping[str, str]) -> None:
        """Writes every alias at once (temporary file, fsync, rename): a crash leaves the old or the new map."""
        self._aliases_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_json(self._aliases_path, {"aliases": dict(sorted(aliases.items()))})
        except OSError as exc:
            if is_disk_full(exc, self._aliases_path.parent):
                raise DiskFull(disk_full_message(self._aliases_path.parent, "the alias was not changed")) from exc
            raise

    def set_alias(self, alias: str, collection: str, aliases: Mapping[str, str]) -> None:
        self.save_aliases({**aliases, alias: collection})

    def delete_alias(self, alias: str, aliases: Mapping[str, str]) -> None:
        self.save_aliases({k: v for k, v in aliases.items() if k != alias})

    # -- snapshots -----------------------------------------------------------------------------------
    def create_snapshot(self, store: FaissIndexStore) -> SnapshotInfo:
        return self._snapshots.create(store.name, read_manifest(store.directory), store.backup_database)

    def list_snapshots(self) -> list[SnapshotInfo]:
        return self._snapshots.list()

    def delete_snapshot(self, name: str) -> None:
        self._snapshots.delete(name)

    def restore_snapshot(self, name: str, collection: str, running: ModelFingerprint) -> FaissIndexStore:
        """A new collection from a snapshot: checked whole first, built under a hidden name, renamed into
        place, then opened (the FAISS and BM25 indexes are rebuilt from its database)."""
        staging = self.root / f".restoring-{collection}-{time.time_ns()}"
        try:
            manifest = self._snapshots.extract(name, running, staging)
            stored = ModelFingerprint.from_dict(manifest["model"])
            write_manifest(staging, collection, settings_from_manifest(manifest), stored)
            fsync_path(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.rename(self.root / collection)
        fsync_path(self.root)
        return FaissIndexStore.open(self.root / collection, running, self._snapshot_every)

    def names(self) -> list[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def open(self, name: str, running: ModelFingerprint) -> FaissIndexStore:
        return FaissIndexStore.open(self.root / name, running, self._snapshot_every)

    def open_for_reindex(self, name: str, running: ModelFingerprint) -> FaissIndexStore:
        return FaissIndexStore.open(self.root / name, running, self._snapshot_every, check_model=False)

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def create(self, name: str, settings: CollectionSettings, fingerprint: ModelFingerprint) -> FaissIndexStore:
        """Raises:
        DiskFull: no space for the new collection's files (none of them is left behind)."""
        # Built under a hidden name and renamed: a crash never leaves a half-made collection.
        staging = self.root / f".creating-{name}-{time.time_ns()}"
        try:
            store = FaissIndexStore.create(staging, name, settings, fingerprint, self._snapshot_every)
            store.close()
        except (OSError, sqlite3.Error) as exc:
            shutil.rmtree(staging, ignore_errors=True)  # and the space it took
            if is_disk_full(exc, self.root):
                raise DiskFull(disk_full_message(self.root, f"collection {name!r} was not created")) from exc
            raise
        staging.rename(self.root / name)
        return FaissIndexStore.open(self.root / name, fingerprint, self._snapshot_every)

    def delete(self, name: str, store: FaissIndexStore | None) -> None:
        if store is not None:
            store.close(snapshot=False)
        trash = self.root / f".deleting-{name}-{time.time_ns()}"
        (self.root / name).rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def settings_of(self, name: str) -> CollectionSettings:
        return settings_from_manifest(read_manifest(self.root / name))

    def cleanup(self) -> None:
        for leftover in self.root.glob(".*"):  # interrupted creates, deletes and restores
            shutil.rmtree(leftover, ignore_errors=True)
        self._snapshots.cleanup()
