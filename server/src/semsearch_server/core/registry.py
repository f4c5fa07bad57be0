"""The collections the server serves: opened at start-up, created and deleted at run time.

Where they live is the StoreProvider's business (a data directory, a Milvus); the registry only keeps
name -> open store, and the reason for each collection it cannot serve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from semsearch_server.core.validation import DEFAULT_COLLECTION
from semsearch_server.domain import (
    CollectionSettings,
    CollectionState,
    CollectionStatus,
    Document,
    ModelFingerprint,
    SnapshotInfo,
)
from semsearch_server.errors import (
    AlreadyExists,
    DiskFull,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StorageFailed,
)
from semsearch_server.index.base import CollectionBroken, EmbeddedDocument, IndexStore, ModelMismatch, StoreProvider

log = logging.getLogger(__name__)

# A provider whose aliases other replicas may change (Milvus) is asked for them again after this long: a
# SetAlias on one replica is seen by the others within it (on the replica that made it, at once).
ALIAS_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class BrokenCollection:
    """A collection that is not served, and why."""

    name: str
    reason: str
    model_mismatch: bool
    disk_full: bool = False  # transient: opened at its next use once there is space


class CollectionRegistry:
    """Name -> open store. Broken collections are listed with their reason and never crash the server.

    Args:
        provider: where the collections live.
        fingerprint: the running model's; a collection of another model is not served.
        default_settings: what `default` is created with when it does not exist.
    """

    def __init__(
        self,
        provider: StoreProvider,
        fingerprint: ModelFingerprint,
        default_settings: CollectionSettings | None = None,
    ) -> None:
        self.provider = provider
        self.fingerprint = fingerprint
        self._default_settings = default_settings or CollectionSettings()
        self._lock = threading.Lock()
        self._stores: dict[str, IndexStore] = {}
        self._broken: dict[str, BrokenCollection] = {}
        self._reindexing: set[str] = set()
        # alias -> collection. Replaced whole, never changed in place, so that resolve() reads it without
        # the lock: a Search resolves through the old map or the new one.
        self._aliases: dict[str, str] = {}
        self._aliases_read_at = 0.0

    def load_all(self) -> None:
        """Opens (and recovers) every collection; creates `default` if it does not exist."""
        self._read_aliases()
        for name in self.provider.names():
            self._open(name)
        if DEFAULT_COLLECTION not in self._stores and DEFAULT_COLLECTION not in self._broken:
            try:
                self.create(DEFAULT_COLLECTION, self._default_settings)
            except DiskFull as exc:  # the server still serves the others; `default` is made at its first use
                log.error("collection %s not created yet: %s", DEFAULT_COLLECTION, exc)
        self.provider.cleanup()

    def _open(self, name: str) -> None:
        try:
            self._stores[name] = self.provider.open(name, self.fingerprint)
        except ModelMismatch as exc:
            log.error("collection %s not served: %s", name, exc)
            self._broken[name] = BrokenCollection(name, str(exc), model_mismatch=True)
        except DiskFull as exc:
            reason = f"collection {name!r} cannot be opened: {exc}"
            log.error("%s", reason)
            self._broken[name] = BrokenCollection(name, reason, model_mismatch=False, disk_full=True)
        except StorageFailed as exc:
            self._broken[name] = BrokenCollection(name, str(exc), model_mismatch=False)
        except (CollectionBroken, OSError) as exc:
            reason = f"collection {name!r} cannot be opened: {exc}"
            log.error("%s", reason)
            self._broken[name] = BrokenCollection(name, reason, model_mismatch=False)
        except Exception as exc:  # noqa: BLE001 - one bad collection must not stop the others
            reason = f"collection {name!r} cannot be opened: {type(exc).__name__}: {exc}"
            log.exception("%s", reason)
            self._broken[name] = BrokenCollection(name, reason, model_mismatch=False)

    def get(self, name: str) -> IndexStore:
        store = self._stores.get(name)
        if store is not None:
            return store
        self._retry_disk_full(name)
        if name not in self._broken:
            # Another replica of a shared store may have created it since this one started.
            with self._lock:
                if name not in self._stores and name not in self._broken and name in self.provider.names():
                    self._open(name)
            store = self._stores.get(name)
            if store is not None:
                return store
        broken = self._broken.get(name)
        if broken is not None:
            raise (DiskFull if broken.disk_full else FailedPrecondition)(broken.reason)
        if name == DEFAULT_COLLECTION:  # not created at start-up for want of space
            try:
                return self.create(name, self._default_settings)
            except AlreadyExists:
                return self.get(name)
        raise NotFound(
            f"collection {name!r} does not exist; create it with CreateCollection "
            f"(existing: {', '.join(sorted(self._stores)) or 'none'})"
        )

    def _retry_disk_full(self, name: str) -> None:
        """Opens again a collection that could not be opened for want of space (it may be there now)."""
        if name in self._broken and self._broken[name].disk_full:
            with self._lock:
                broken = self._broken.get(name)
                if broken is not None and broken.disk_full:
                    del self._broken[name]
                    self._open(name)

    # -- aliases ------------------------------------------------------------------------------------
    def _read_aliases(self) -> None:
        self._aliases = self.provider.aliases()
        self._aliases_read_at = time.monotonic()

    def _current_aliases(self) -> dict[str, str]:
        if getattr(self.provider, "shared", False) and time.monotonic() - self._aliases_read_at > ALIAS_REFRESH_SECONDS:
            self._read_aliases()
        return self._aliases

    def resolve(self, name: str) -> str:
        """The collection a name means: the one an alias names, or the name itself."""
        return self._current_aliases().get(name, name)

    def aliases(self) -> dict[str, str]:
        return dict(self._current_aliases())

    def _is_collection(self, name: str) -> bool:
        return name in self._stores or name in self._broken or name in self.provider.names()

    def set_alias(self, alias: str, collection: str) -> str:
        """Points alias at collection (creating it, or repointing it atomically); returns the collection it
        named before ('' when new)."""
        with self._lock:
            if self.provider_shared():
                self._read_aliases()
            aliases = self._aliases
            if self._is_collection(alias):
                raise AlreadyExists(f"alias: {alias!r} is a collection; aliases and collections share one namespace")
            if collection in aliases:
                raise InvalidArgument(
                    f"collection: {collection!r} is an alias (of {aliases[collection]!r}); an alias names a collection"
                )
            if not self._is_collection(collection):
                raise NotFound(f"collection {collection!r} does not exist")
            previous = aliases.get(alias, "")
            self.provider.set_alias(alias, collection, aliases)
            self._aliases = {**aliases, alias: collection}
            return previous

    def delete_alias(self, alias: str) -> None:
        with self._lock:
            if self.provider_shared():
                self._read_aliases()
            aliases = self._aliases
            if alias not in aliases:
                raise NotFound(f"alias {alias!r} does not exist")
            self.provider.delete_alias(alias, aliases)
            self._aliases = {k: v for k, v in aliases.items() if k != alias}

    def provider_shared(self) -> bool:
        return bool(getattr(self.provider, "shared", False))

    def _check_name_free(self, name: str) -> None:
        if self.provider_shared():
            self._read_aliases()
        if name in self._aliases:
            raise AlreadyExists(
                f"{name!r} is an alias (of {self._aliases[name]!r}); aliases and collections share one namespace"
            )
        if self._is_collection(name):
            raise AlreadyExists(f"collection {name!r} already exists")

    # -- snapshots -----------------------------------------------------------------------------------
    def create_snapshot(self, name: str) -> SnapshotInfo:
        return self.provider.create_snapshot(self.get(name))

    def list_snapshots(self) -> list[SnapshotInfo]:
        return self.provider.list_snapshots()

    def delete_snapshot(self, name: str) -> None:
        self.provider.delete_snapshot(name)

    def restore_snapshot(self, snapshot: str, collection: str) -> IndexStore:
        """A new collection (neither a collection nor an alias yet) built from a snapshot."""
        with self._lock:
            self._check_name_free(collection)
            store = self.provider.restore_snapshot(snapshot, collection, self.fingerprint)
            self._stores[collection] = store
            return store

    def create(self, name: str, settings: CollectionSettings, exist_ok: bool = False) -> IndexStore:
        """Creates a collection; with exist_ok, an existing collection of that name is returned as it is
        (its own settings kept: a second run of the same set-up script is not an error)."""
        with self._lock:
            if exist_ok and name not in self._aliases and self._is_collection(name):
                return self.get(name)
            self._check_name_free(name)
            store = self.provider.create(name, settings, self.fingerprint)
            self._stores[name] = store
            return store

    def delete(self, name: str) -> None:
        with self._lock:
            if name == DEFAULT_COLLECTION:
                raise FailedPrecondition("the default collection cannot be deleted; delete its documents instead")
            if self.provider_shared():
                self._read_aliases()
            if name in self._aliases:
                raise FailedPrecondition(
                    f"{name!r} is an alias (of {self._aliases[name]!r}), not a collection; delete it with DeleteAlias"
                )
            naming = sorted(alias for alias, target in self._aliases.items() if target == name)
            if naming:
                raise FailedPrecondition(
                    f"collection {name!r} is named by alias{'es' if len(naming) > 1 else ''} "
                    f"{', '.join(repr(a) for a in naming)}; repoint or delete "
                    f"{'them' if len(naming) > 1 else 'it'} first (SetAlias / DeleteAlias)"
                )
            store = self._stores.pop(name, None)
            broken = self._broken.pop(name, None)
            if store is None and broken is None:
                raise NotFound(f"collection {name!r} does not exist")
            self.provider.delete(name, store)

    def reindex(
        self, name: str, embed_documents: Callable[[list[Document], CollectionSettings], list[EmbeddedDocument]]
    ) -> int:
        """Re-embeds a collection's stored texts with the running model and serves it again.

        The registry's lock is held only to look the collection up and to publish it: re-embedding
        takes minutes at scale, and other collections are created, deleted and searched meanwhile.
        """
        with self._lock:
            if name in self._reindexing:
                raise FailedPrecondition(f"collection {name!r} is being reindexed already")
            store = self._stores.get(name)
            broken = self._broken.get(name)
            if store is None and broken is None:
                raise NotFound(f"collection {name!r} does not exist")
            self._reindexing.add(name)
        try:
            if store is None:
                try:
                    store = self.provider.open_for_reindex(name, self.fingerprint)
                except (CollectionBroken, OSError) as exc:
                    raise FailedPrecondition(f"collection {name!r} cannot be reindexed: {exc}") from None
            settings = store.settings
            count = store.replace_all_vectors(self.fingerprint, lambda docs: embed_documents(docs, settings))
            with self._lock:
                self._broken.pop(name, None)
                self._stores[name] = store
            return count
        finally:
            with self._lock:
                self._reindexing.discard(name)

    def statuses(self) -> list[CollectionStatus]:
        for name in [b.name for b in list(self._broken.values()) if b.disk_full]:
            self._retry_disk_full(name)
        with self._lock:  # collections another replica of a shared store made since this one started
            for name in self.provider.names():
                if name not in self._stores and name not in self._broken:
                    self._open(name)
            stores = list(self._stores.values())
        out = [status for status in map(self._status_unless_deleted, stores) if status is not None]
        for broken in list(self._broken.values()):
            try:
                settings = self.provider.settings_of(broken.name)
            except (CollectionBroken, OSError):
                settings = CollectionSettings()
            out.append(
                CollectionStatus(
                    broken.name,
                    0,
                    settings.index,
                    CollectionState.FAILED,
                    broken.reason,
                    False,
                    settings.passages,
                    settings.default_mode,
                )
            )
        return sorted(out, key=lambda s: s.name)

    def _status_unless_deleted(self, store: IndexStore) -> CollectionStatus | None:
        """A store's status, or None when DeleteCollection removed it while it was being listed (its files
        may be gone already: the status of a deleted collection was an INTERNAL error, found by the soak)."""
        try:
            return store.status()
        except Exception:
            with self._lock:
                if self._stores.get(store.name) is store:
                    raise
            return None

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                try:
                    store.close()
                except Exception:  # noqa: BLE001 - flush every collection even if one fails
                    log.exception("collection %s: final snapshot failed", store.name)
