"""A collection on disk: SQLite is the write-ahead source of truth, FAISS and BM25 in-memory caches of it.

Layout of ``<data_dir>/collections/<name>/``:

- ``manifest.json``: format version, settings (index spec, passages, default search mode), and the
  fingerprint of the model whose vectors are stored.
- ``documents.sqlite3``: documents (label, id, text, metadata JSON, seq), their passages (label,
  document label, index, character offsets, float32 vector, seq), a metadata key/value table for
  filters, the documents and passages removed since the last snapshots, and the write sequence number.
  WAL mode with ``synchronous=FULL``: a write is acknowledged only after its transaction is on disk,
  and a batch is one transaction, so a crash leaves all of it or none of it.
- ``index.faiss`` + ``index.json``: the FAISS index of the passages' vectors as of sequence number S,
  with the file's sha256. ``lexical.bin`` + ``lexical.json``: the BM25 index of the documents' texts as
  of S', likewise. Both are written to a temporary file and renamed. On open, each snapshot is loaded
  (if it checks out) and every write after its sequence number is replayed from SQLite; a missing or
  damaged snapshot is rebuilt from SQLite. Both indexes are therefore derived from the one committed
  transaction: a write is in both or in neither, whatever happens to the process.

Passages: a document is stored with one or more passages (token windows of its text, split by the
service). FAISS holds one vector per passage, labelled by the passage's row id; a replaced document's
passages get new labels, so an add never has to look for a label already in the index.

This module holds the store's state, its opening and closing, and the snapshots of its indexes; each
other job is a module of its own, mixed into FaissIndexStore: ``local_reads`` (searches, get, scroll),
``local_writes`` (transactions and storage faults), ``local_reindex`` (Reindex), ``local_recovery``
(snapshot loading, the log window, rebuilds); ``local_database`` (schema, connection, format-1 upgrade),
``local_manifest`` and ``passage_map`` are what they say; ``local_provider`` holds LocalStoreProvider.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from semsearch_server.domain import CollectionSettings, CollectionState, CollectionStatus, IndexSpec, ModelFingerprint
from semsearch_server.errors import DiskFull, FailedPrecondition, SemsearchError, StorageFailed
from semsearch_server.files import StagedFiles, sha256_file
from semsearch_server.index.attribute_index import AttributeIndex
from semsearch_server.index.base import CollectionBroken, ModelMismatch
from semsearch_server.index.disk_space import CLAIMS
from semsearch_server.index.filter_cache import FilterCache
from semsearch_server.index.lexical import Analyzer, LexicalIndex
from semsearch_server.index.local_database import connect_database
from semsearch_server.index.local_manifest import (
    DATABASE,
    FORMAT_VERSION,
    LEXICAL_META,
    LEXICAL_SNAPSHOT,
    SNAPSHOT,
    SNAPSHOT_META,
    read_manifest,
    settings_from_manifest,
    write_manifest,
)
from semsearch_server.index.local_reads import StoreReads
from semsearch_server.index.local_recovery import StoreRecovery
from semsearch_server.index.local_reindex import StoreReindex
from semsearch_server.index.local_snapshots import backup_database
from semsearch_server.index.local_writes import StoreWrites
from semsearch_server.index.passage_map import PassageMap
from semsearch_server.index.rwlock import ReadWriteLock
from semsearch_server.index.snapshot_policy import SnapshotPolicy
from semsearch_server.index.storage_faults import disk_full_message, is_disk_full, is_io_failure
from semsearch_server.index.vector_index import VectorIndex

log = logging.getLogger(__name__)


# A snapshot that could not be written (a full disk) is tried again at a write at least this long after
# the failure, doubling up to the maximum: the database holds every write meanwhile, a restart replays them.
SNAPSHOT_RETRY_SECONDS = 2.0
SNAPSHOT_RETRY_MAX_SECONDS = 60.0


class FaissIndexStore(StoreReads, StoreWrites, StoreReindex, StoreRecovery):
    """One collection: documents and passage vectors in SQLite, searched through FAISS and BM25 in memory.

    Open it with :meth:`open` (existing) or :meth:`create` (new).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        settings: CollectionSettings,
        fingerprint: ModelFingerprint,
        snapshot_every: int,
        new: bool = False,
    ) -> None:
        self.directory = directory
        self.name = name
        self.settings = settings
        self.fingerprint = fingerprint
        self._snapshot_policy = SnapshotPolicy(min_writes=snapshot_every)
        self._size_at_snapshot = 0
        self._lock = ReadWriteLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._legacy_vector_column = False
        self._db = self._connect(new)
        self._index = VectorIndex(settings.index, fingerprint.dimension)
        self._analyzer = Analyzer()
        self._lexical = LexicalIndex(self._analyzer)
        self._passages = PassageMap()
        self._writes_since_snapshot = 0
        self._snapshot_seqs = (0, 0)  # (FAISS, lexical) as last written or loaded
        self._closed = False
        self._failed: str | None = None
        # What a call on a failed collection raises: FailedPrecondition, or StorageFailed after an I/O error.
        self._failed_error: type[SemsearchError] = FailedPrecondition
        self._snapshot_failures = 0
        self._snapshot_retry_at = 0.0
        self._disk_full_since: float | None = None
        # A rebuild of the vector index running beside the live one (HNSW compaction, IVF training).
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_from_seq: int | None = None
        # Held while snapshot files are written (a regular snapshot from its copy of the indexes, a rebuild
        # its new index's before the swap), both outside the collection's lock. Taken before the
        # collection's lock, never while holding it.
        self._snapshot_files = threading.Lock()
        self._snapshot_pending = False  # a writer has made a snapshot due and writes it after its write
        self._reindexing = threading.Lock()
        self._reindex_from_seq: int | None = None  # a Reindex replays the log after it (keep it)
        self._recovered = False  # the indexes and the passage map are loaded (False: opened for Reindex only)
        # Every document's attributes, columnar, for filters: built from the database at the first filtered
        # read (a collection never filtered costs nothing), then kept in step by every write.
        self._attributes: AttributeIndex | None = None
        self._attributes_building = threading.Lock()
        # Filters' answers per state of the collection, for the next search with the same filter.
        self._filter_cache = FilterCache(vector_bytes=self._vector_bytes)

    def _vector_bytes(self) -> int:
        """The memory of the vector index's vectors (the filter cache's budget grows with it)."""
        return self._index.ntotal * self.fingerprint.dimension * 4

    @property
    def spec(self) -> IndexSpec:
        return self.settings.index

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: Path,
        name: str,
        settings: CollectionSettings,
        fingerprint: ModelFingerprint,
        snapshot_every: int = 5000,
    ) -> FaissIndexStore:
        directory.mkdir(parents=True, exist_ok=False)
        write_manifest(directory, name, settings, fingerprint)
        store = cls(directory, name, settings, fingerprint, snapshot_every, new=True)
        store._recovered = True  # nothing to load
        try:
            store.snapshot()
        except BaseException:
            store.close(snapshot=False)
            raise
        return store

    @classmethod
    def open(
        cls, directory: Path, running: ModelFingerprint, snapshot_every: int = 5000, check_model: bool = True
    ) -> FaissIndexStore:
        """Opens and recovers a collection (upgrading a format-1 one in place).

        Args:
            check_model: False opens a collection built by another model without loading its vectors,
                only so that replace_all_vectors() can re-embed its texts (Reindex).

        Raises:
            CollectionBroken: a missing, corrupt or truncated file (the message names it).
            ModelMismatch: the stored vectors came from another model.
        """
        manifest = read_manifest(directory)
        settings = settings_from_manifest(manifest)
        stored = ModelFingerprint.from_dict(manifest["model"])
        name = str(manifest.get("name", directory.name))
        db_path = directory / DATABASE
        if not db_path.is_file():
            raise CollectionBroken(f"{db_path}: missing")
        try:
            store = cls(directory, name, settings, stored, snapshot_every)
            store._check_database()
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc, directory):  # SQLite could not create its -shm index beside the database
                raise DiskFull(
                    disk_full_message(directory, f"collection {name!r} is served once there is space to open it")
                ) from exc
            raise CollectionBroken(f"{db_path}: {exc}") from None
        if int(manifest["format_version"]) < FORMAT_VERSION:
            write_manifest(directory, name, settings, stored)
        if not stored.is_compatible(running):
            if not check_model:
                return store
            store.close(snapshot=False)
            raise ModelMismatch(name, stored, running)
        store.fingerprint = running
        store._recover()
        return store

    def _connect(self, new: bool) -> sqlite3.Connection:
        db, self._legacy_vector_column = connect_database(self.directory / DATABASE, new)
        return db

    def _reader(self) -> sqlite3.Connection:
        """A connection per reading thread: WAL lets them read while the writer writes."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.directory / DATABASE, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA query_only=ON")
            self._local.db = db
            self._readers.append(db)
        return db

    def _check_database(self) -> None:
        result = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")

    def _passage_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM passages").fetchone()[0])

    def status(self) -> CollectionStatus:
        with self._lock.read():
            return CollectionStatus(
                name=self.name,
                document_count=self.count(),
                index=self.spec,
                state=CollectionState.READY if self._failed is None else CollectionState.FAILED,
                message=self._failed or "",
                index_trained=self._index.trained,
                passages=self.settings.passages,
                default_mode=self.settings.default_mode,
            )

    # -- snapshots and shutdown ----------------------------------------------------------------------
    def snapshot(self) -> None:
        """Writes both snapshots now (nothing if the collection is closed or failed).

        Searches go on throughout; writes wait only while the indexes are copied in memory."""
        self._write_snapshot()

    def _write_snapshot(self, locked: bool = False) -> None:
        """Writes both snapshots, each file and its checksum staged and renamed into place together: a
        failure (a full disk) leaves the previous pair as it was, valid, and no temporary file behind.

        The indexes are copied as of one sequence number while writers are held off and searches go on
        (``read_holding_writers``: 0.34 s for 300k flat vectors, where writing and hashing the files takes
        10-30 s at 1M); the files are written from the copy without the collection's lock. A restart
        loads them and replays the log after that sequence number. `_snapshot_files` orders snapshots
        with each other and with the one a rebuild writes beside the live index.

        Args:
            locked: the caller holds `_snapshot_files` and the write lock (close): no copy is needed.

        Raises:
            OSError: a file could not be written (SyncFailed: could not be fsync'd).
        """
        if locked:
            self._write_snapshots(
                self._index, self._lexical.snapshot_writer(), len(self._lexical), self._seq(), locked=True
            )
            return
        with self._snapshot_files:
            with self._lock.read_holding_writers():
                if self._closed or self._failed is not None:
                    return
                # The committed sequence number, through a reader's connection: the writer's may be inside a
                # Reindex's rewrite, which also holds writers off (the indexes are still those of this seq).
                seq = int(self._reader().execute("SELECT value FROM state WHERE key='seq'").fetchone()[0])
                writes, documents = self._writes_since_snapshot, len(self._lexical)
                index, lexical = self._index.copy(), self._lexical.snapshot_writer()
            self._write_snapshots(index, lexical, documents, seq, writes=writes)

    def _write_vector_snapshot(self, index: VectorIndex, seq: int) -> None:
        """Writes `index` as the FAISS snapshot at `seq`, staged with its checksum. Called with _snapshot_files held.

        Raises:
            NoRoom: at once, before anything is written, if the disk has not room for the files (see
                `_snapshot_bound`); writes are not made to fail by a snapshot filling the disk.
        """
        room = self._snapshot_bound(SNAPSHOT, SNAPSHOT_META, index.ntotal, 4 * self.fingerprint.dimension)
        with CLAIMS.claim(self.directory, room), StagedFiles() as staged:
            index_tmp = staged.write(self.directory / SNAPSHOT, index.write)
            meta = {"seq": seq, "sha256": sha256_file(index_tmp), "count": index.ntotal}
            if self.spec.kind.value == "hnsw":
                meta["hnsw"] = index.slot_state()
            staged.write_json(self.directory / SNAPSHOT_META, meta)
            staged.commit()
        self._snapshot_seqs = (seq, self._snapshot_seqs[1])

    def _write_snapshots(
        self,
        index: VectorIndex,
        write_lexical: Callable[[Path], None],
        documents: int,
        seq: int,
        writes: int | None = None,
        locked: bool = False,
    ) -> None:
        """Writes `index` and the lexical index (`write_lexical`, of `documents`) as the snapshots at `seq`;
        then, under the write lock unless the caller holds it, records them and prunes the log they cover.

        Args:
            writes: the writes counted since the last snapshot when the copies were taken (None: all).
        """
        self._write_vector_snapshot(index, seq)
        room = self._snapshot_bound(LEXICAL_SNAPSHOT, LEXICAL_META, documents, 64)
        with CLAIMS.claim(self.directory, room), StagedFiles() as staged:
            lexical_tmp = staged.write(self.directory / LEXICAL_SNAPSHOT, write_lexical)
            staged.write_json(
                self.directory / LEXICAL_META,
                {"seq": seq, "sha256": sha256_file(lexical_tmp), "count": documents},
            )
            staged.commit()
        if locked:
            self._after_snapshot(seq, index.ntotal, writes)
            return
        with self._lock.write():  # the writer's connection and counters are the writers'
            if not self._closed:
                self._after_snapshot(seq, index.ntotal, writes)

    def _snapshot_bound(self, data: str, meta: str, count: int, least_per_item: int) -> int:
        """The room to claim for a snapshot file of `count` items (vectors or documents) and its metadata: the
        last snapshot's bytes per item (at least `least_per_item`), times `count`, with a quarter and 64 KiB
        to spare (a snapshot file is written beside the previous one, which stays until the rename)."""
        try:
            size = (self.directory / data).stat().st_size
            before = int(json.loads((self.directory / meta).read_text())["count"])
        except (OSError, ValueError, KeyError, TypeError):
            size, before = 0, 0
        per_item = max(size / before if before else 0.0, least_per_item)
        return int(1.25 * max(size, per_item * count)) + (64 << 10)

    def _after_snapshot(self, seq: int, size: int, writes: int | None) -> None:
        self._snapshot_seqs = (seq, seq)
        # Writes that came after the copy stay counted towards the next snapshot.
        self._writes_since_snapshot = 0 if writes is None else max(0, self._writes_since_snapshot - writes)
        self._size_at_snapshot = size
        # Removals older than both snapshots are in them; the log need not keep them, except those a
        # rebuild or a Reindex in progress will replay.
        keep_after = min(
            *self._snapshot_seqs,
            *(seq for seq in (self._rebuild_from_seq, self._reindex_from_seq) if seq is not None),
        )
        try:
            self._db.execute("DELETE FROM deletions WHERE seq <= ?", (keep_after,))
            self._db.execute("DELETE FROM passage_deletions WHERE seq <= ?", (keep_after,))
        except sqlite3.Error as exc:
            if not is_disk_full(exc, self.directory):
                raise
            # Rows older than the snapshots are skipped by every replay; the next snapshot prunes them.

    def _snapshot_or_defer(self, locked: bool = False) -> None:
        """Writes the snapshots now, or, if they cannot be written, keeps the previous ones and tries again
        at a later write (SNAPSHOT_RETRY_SECONDS after, doubling).

        Args:
            locked: the caller holds `_snapshot_files` and the write lock (see `_write_snapshot`).

        A snapshot is a cache of the database, which holds every write: failing to write one loses
        nothing, and is not the failure of the write that happened to make it due. An I/O error is
        different: the database lives on the same disk.

        Raises:
            StorageFailed: an I/O error (a failed fsync); the collection is out of service.
        """
        try:
            if locked:
                self._write_snapshot(locked=True)
            else:
                self._write_snapshot()
        except Exception as exc:  # noqa: BLE001 - whatever it was, the previous snapshots stand
            if is_io_failure(exc):
                raise self._fail_storage(f"writing its index snapshot failed ({exc})") from exc
            self._snapshot_failures += 1
            delay = min(SNAPSHOT_RETRY_MAX_SECONDS, SNAPSHOT_RETRY_SECONDS * 2 ** (self._snapshot_failures - 1))
            self._snapshot_retry_at = time.monotonic() + delay
            log.warning(
                "collection %s: snapshot not written, the previous one stays valid and the database holds "
                "every write since; trying again at a write in %.0fs or later: %s",
                self.name,
                delay,
                disk_full_message(self.directory, "no snapshot") if is_disk_full(exc, self.directory) else exc,
                exc_info=not is_disk_full(exc, self.directory),
            )
        else:
            if self._snapshot_failures:
                log.warning(
                    "collection %s: snapshot written again after %d failures", self.name, self._snapshot_failures
                )
            self._snapshot_failures = 0
            self._snapshot_retry_at = 0.0
        finally:
            self._snapshot_pending = False

    def _seq(self) -> int:
        return int(self._db.execute("SELECT value FROM state WHERE key='seq'").fetchone()[0])

    def _ensure_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} has been deleted or the server is shutting down")

    def _ensure_readable(self) -> None:
        self._ensure_open()
        if self._failed is not None:
            raise self._failed_error(self._failed)

    _ensure_writable = _ensure_readable

    def backup_database(self, destination: Path) -> int:
        """A consistent copy of the collection's database at this moment (every acknowledged write is in
        it; writes go on meanwhile); returns its document count. CreateSnapshot's copy."""
        self._ensure_readable()
        return backup_database(self.directory / DATABASE, destination)

    def close(self, snapshot: bool = True) -> None:
        """Writes final snapshots (so the next start replays nothing) and closes the database.

        A rebuild still running is abandoned (the next start rebuilds, if still needed)."""
        # A snapshot being written (a regular one, or a rebuild's) finishes first; later ones see _closed.
        with self._snapshot_files, self._lock.write():
            if self._closed:
                return
            if snapshot and self._failed is None:
                try:
                    # If it fails, the next start replays the writes since the last one.
                    self._snapshot_or_defer(locked=True)
                except StorageFailed:
                    pass  # logged; the database is closed all the same
            self._closed = True
            for reader in self._readers:
                reader.close()
            self._db.close()
