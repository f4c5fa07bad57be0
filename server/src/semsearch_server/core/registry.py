"""The collections under the data dir: opened at start-up, created and deleted at run time."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from semsearch_server.core.validation import DEFAULT_COLLECTION
from semsearch_server.domain import CollectionState, CollectionStatus, IndexSpec, ModelFingerprint
from semsearch_server.errors import AlreadyExists, FailedPrecondition, NotFound
from semsearch_server.index.faiss_store import CollectionBroken, FaissIndexStore, ModelMismatch, read_manifest

log = logging.getLogger(__name__)

COLLECTIONS_DIR = "collections"


@dataclass(frozen=True)
class BrokenCollection:
    """A collection on disk that is not served, and why."""

    name: str
    directory: Path
    reason: str
    model_mismatch: bool


class CollectionRegistry:
    """Name -> open store. Broken collections are listed with their reason and never crash the server."""

    def __init__(self, data_dir: Path, fingerprint: ModelFingerprint, snapshot_every: int) -> None:
        self.root = data_dir / COLLECTIONS_DIR
        self.fingerprint = fingerprint
        self._snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self._stores: dict[str, FaissIndexStore] = {}
        self._broken: dict[str, BrokenCollection] = {}

    def load_all(self) -> None:
        """Opens (and recovers) every collection; creates `default` if it does not exist."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            self._open(directory)
        if DEFAULT_COLLECTION not in self._stores and DEFAULT_COLLECTION not in self._broken:
            self.create(DEFAULT_COLLECTION, IndexSpec())
        for leftover in self.root.glob(".*"):  # interrupted creates and deletes
            shutil.rmtree(leftover, ignore_errors=True)

    def _open(self, directory: Path) -> None:
        name = directory.name
        try:
            self._stores[name] = FaissIndexStore.open(directory, self.fingerprint, self._snapshot_every)
        except ModelMismatch as exc:
            log.error("collection %s not served: %s", name, exc)
            self._broken[name] = BrokenCollection(name, directory, str(exc), model_mismatch=True)
        except (CollectionBroken, OSError) as exc:
            reason = f"collection {name!r} cannot be opened: {exc}"
            log.error("%s", reason)
            self._broken[name] = BrokenCollection(name, directory, reason, model_mismatch=False)
        except Exception as exc:  # noqa: BLE001 - one bad collection must not stop the others
            reason = f"collection {name!r} cannot be opened: {type(exc).__name__}: {exc}"
            log.exception("%s", reason)
            self._broken[name] = BrokenCollection(name, directory, reason, model_mismatch=False)

    def get(self, name: str) -> FaissIndexStore:
        store = self._stores.get(name)
        if store is not None:
            return store
        broken = self._broken.get(name)
        if broken is not None:
            raise FailedPrecondition(broken.reason)
        raise NotFound(
            f"collection {name!r} does not exist; create it with CreateCollection "
            f"(existing: {', '.join(sorted(self._stores)) or 'none'})"
        )

    def create(self, name: str, spec: IndexSpec) -> FaissIndexStore:
        with self._lock:
            if name in self._stores or name in self._broken or (self.root / name).exists():
                raise AlreadyExists(f"collection {name!r} already exists")
            # Built under a hidden name and renamed: a crash never leaves a half-made collection.
            staging = self.root / f".creating-{name}-{time.time_ns()}"
            store = FaissIndexStore.create(staging, name, spec, self.fingerprint, self._snapshot_every)
            store.close()
            staging.rename(self.root / name)
            store = FaissIndexStore.open(self.root / name, self.fingerprint, self._snapshot_every)
            self._stores[name] = store
            return store

    def delete(self, name: str) -> None:
        with self._lock:
            if name == DEFAULT_COLLECTION:
                raise FailedPrecondition("the default collection cannot be deleted; delete its documents instead")
            store = self._stores.pop(name, None)
            broken = self._broken.pop(name, None)
            if store is None and broken is None:
                raise NotFound(f"collection {name!r} does not exist")
            directory = store.directory if store else broken.directory
            if store is not None:
                store.close(snapshot=False)
            trash = self.root / f".deleting-{name}-{time.time_ns()}"
            directory.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def reindex(self, name: str, embed) -> int:
        """Re-embeds a collection's stored texts with the running model and serves it again."""
        with self._lock:
            store = self._stores.get(name)
            broken = self._broken.get(name)
            if store is None and broken is None:
                raise NotFound(f"collection {name!r} does not exist")
            if store is None:
                try:
                    store = FaissIndexStore.open(
                        broken.directory, self.fingerprint, self._snapshot_every, check_model=False
                    )
                except (CollectionBroken, OSError) as exc:
                    raise FailedPrecondition(f"collection {name!r} cannot be reindexed: {exc}") from None
            count = store.replace_all_vectors(self.fingerprint, embed)
            self._broken.pop(name, None)
            self._stores[name] = store
            return count

    def statuses(self) -> list[CollectionStatus]:
        out = [store.status() for store in list(self._stores.values())]
        for broken in list(self._broken.values()):
            try:
                spec = IndexSpec.from_dict(read_manifest(broken.directory)["index"])
            except CollectionBroken:
                spec = IndexSpec()
            out.append(CollectionStatus(broken.name, 0, spec, CollectionState.FAILED, broken.reason, False))
        return sorted(out, key=lambda s: s.name)

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                try:
                    store.close()
                except Exception:  # noqa: BLE001 - flush every collection even if one fails
                    log.exception("collection %s: final snapshot failed", store.name)
