"""A local collection's writes: one durable SQLite transaction each, then applied to the in-memory indexes."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from semsearch_server.domain import Document
from semsearch_server.errors import DeadlineExceeded, DiskFull, NotFound, SemsearchError, StorageFailed
from semsearch_server.filtering import Filter, decode_attributes, encode_attributes
from semsearch_server.index.base import EmbeddedDocument, updated_attributes
from semsearch_server.index.disk_space import CLAIMS, NoRoom, SpaceClaim, passages_bound, write_bytes_bound
from semsearch_server.index.local_database import SQL_CHUNK
from semsearch_server.index.local_manifest import DATABASE
from semsearch_server.index.storage_faults import disk_full_message, is_disk_full, is_io_failure

# The local store logs as one logger, whichever of its modules a line comes from.
log = logging.getLogger("semsearch_server.index.faiss_store")


class StoreWrites:
    """FaissIndexStore's writes and their storage faults (a mixin: the state is the store's)."""

    def claim_space(self, docs: Sequence[Document]) -> SpaceClaim:
        """Room on the collection's disk for an upsert of these documents, claimed before they are embedded
        (``disk_space``): an upper bound of what its transaction adds. Release it once the write is done.

        Raises:
            DiskFull: at once, without waiting for anything, if the disk has not that much room left.
        """
        passages = sum(passages_bound(len(d.text), self.settings.passages.enabled) for d in docs)
        row_bytes = (
            sum(len(d.id.encode()) + len(d.text.encode()) + len(encode_attributes(d.attributes)) for d in docs)
            + passages * 4 * self.fingerprint.dimension
        )
        return CLAIMS.claim(self.directory, write_bytes_bound(row_bytes, len(docs), passages), self._refused_for_room)

    def _refused_for_room(self, no_room: NoRoom) -> DiskFull:
        return self._disk_full(f"this write (up to {no_room.wanted:,} bytes) was not stored (none of it); reads go on")

    def upsert(self, docs: Sequence[EmbeddedDocument], still_wanted: Callable[[], bool] | None = None) -> int:
        """Inserts or replaces documents (with all their passages) in one transaction; returns once durable.

        Args:
            still_wanted: asked once the write lock is held, right before the transaction; False
                abandons the write (the caller's deadline passed while it waited), so a call reported
                failed never commits later.
        """
        for doc in docs:
            if doc.vectors.shape != (len(doc.passages), self.fingerprint.dimension):
                raise ValueError(
                    f"document {doc.document.id!r}: {doc.vectors.shape} vectors for {len(doc.passages)} passages"
                )
        with self._lock.write():
            self._ensure_writable()
            if still_wanted is not None and not still_wanted():
                raise DeadlineExceeded("the deadline passed while waiting for the collection; nothing was stored")
            doc_labels, removed, added = self._write_transaction(lambda seq: self._upsert_rows(docs, seq))
            vectors = np.concatenate([d.vectors for d in docs]).astype(np.float32, copy=False)
            self._after_commit(
                lambda: self._apply_upsert(doc_labels, [d.document for d in docs], removed, added, vectors)
            )
            snapshot_due = self._after_write(len(docs))
        if snapshot_due:  # written without the collection's lock: searches and other writes go on
            self._snapshot_or_defer()
        return len(docs)

    def _apply_upsert(
        self, doc_labels: list[int], docs: list[Document], removed: np.ndarray, added: np.ndarray, vectors: np.ndarray
    ) -> None:
        self._index.remove(removed)
        self._passages.remove(removed)
        self._index.add(added[:, 0], vectors)
        self._passages.set(added)
        self._lexical.add(doc_labels, [d.text for d in docs])
        if self._attributes is not None:
            self._attributes.put_many(zip(doc_labels, (d.attributes for d in docs), strict=True))

    def _upsert_rows(self, docs: Sequence[EmbeddedDocument], seq: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        db = self._db
        if self._legacy_vector_column:  # a format-1 table: the column stays, empty
            sql = (
                "INSERT INTO documents(id, text, metadata, seq, vector) VALUES (?, ?, ?, ?, x'') "
                "ON CONFLICT(id) DO UPDATE SET text=excluded.text, metadata=excluded.metadata, seq=excluded.seq "
                "RETURNING label"
            )
        else:
            sql = (
                "INSERT INTO documents(id, text, metadata, seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET text=excluded.text, metadata=excluded.metadata, seq=excluded.seq "
                "RETURNING label"
            )
        labels: list[int] = []
        for item in docs:
            doc = item.document
            # Typed attributes in the old column: a string-only map is the JSON old versions wrote, byte for byte.
            metadata = encode_attributes(doc.attributes)
            (label,) = db.execute(sql, (doc.id, doc.text, metadata, seq)).fetchone()
            labels.append(label)
        removed: list[int] = []
        for start in range(0, len(labels), SQL_CHUNK):
            chunk = labels[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            removed += [r[0] for r in db.execute(f"SELECT label FROM passages WHERE doc_label IN ({marks})", chunk)]
            db.execute(f"DELETE FROM passages WHERE doc_label IN ({marks})", chunk)
            db.execute(f"DELETE FROM metadata_kv WHERE label IN ({marks})", chunk)
            db.execute(f"DELETE FROM deletions WHERE label IN ({marks})", chunk)
        db.executemany(
            "INSERT OR REPLACE INTO passage_deletions(label, seq) VALUES (?, ?)", [(lb, seq) for lb in removed]
        )
        added: list[tuple[int, int, int, int, int]] = []
        for label, item in zip(labels, docs, strict=True):
            for passage, vector in zip(item.passages, item.vectors, strict=True):
                (passage_label,) = db.execute(
                    "INSERT INTO passages(doc_label, idx, start, end, vector, seq) VALUES (?, ?, ?, ?, ?, ?) "
                    "RETURNING label",
                    (label, passage.index, passage.start, passage.end, np.asarray(vector, np.float32).tobytes(), seq),
                ).fetchone()
                added.append((passage_label, label, passage.index, passage.start, passage.end))
        # metadata_kv (the old string filter's table) is no longer written: filters read the attribute index.
        # Its rows of older versions are deleted with their documents above.
        return labels, np.array(removed, dtype=np.int64), np.array(added, dtype=np.int64).reshape(-1, 5)

    def delete(self, ids: Sequence[str], still_wanted: Callable[[], bool] | None = None) -> int:
        """Deletes documents by id in one transaction; returns how many existed."""
        with self._lock.write():
            self._ensure_writable()
            if still_wanted is not None and not still_wanted():
                raise DeadlineExceeded("the deadline passed while waiting for the collection; nothing was deleted")
            count, snapshot_due = self._delete_locked(ids)
        if snapshot_due:
            self._snapshot_or_defer()
        return count

    def _delete_locked(self, ids: Sequence[str]) -> tuple[int, bool]:
        """Deletes these ids in one transaction and from the in-memory indexes, the write lock held; returns how
        many existed and whether a snapshot is due (for the caller to write once it lets go of the lock)."""
        labels, passages = self._write_transaction(lambda seq: self._delete_rows(ids, seq))

        def apply() -> None:
            self._index.remove(passages)
            self._passages.remove(passages)
            self._lexical.remove(labels)
            if self._attributes is not None:
                self._attributes.remove_many(labels)

        self._after_commit(apply)
        return len(labels), self._after_write(len(labels))

    def _delete_rows(self, ids: Sequence[str], seq: int) -> tuple[list[int], np.ndarray]:
        db = self._db
        labels: list[int] = []
        for start in range(0, len(ids), SQL_CHUNK):
            chunk = list(ids[start : start + SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            labels += [r[0] for r in db.execute(f"SELECT label FROM documents WHERE id IN ({marks})", chunk)]
        passages: list[int] = []
        for start in range(0, len(labels), SQL_CHUNK):
            chunk = labels[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            passages += [r[0] for r in db.execute(f"SELECT label FROM passages WHERE doc_label IN ({marks})", chunk)]
            db.execute(f"DELETE FROM documents WHERE label IN ({marks})", chunk)
            db.execute(f"DELETE FROM passages WHERE doc_label IN ({marks})", chunk)
            db.execute(f"DELETE FROM metadata_kv WHERE label IN ({marks})", chunk)
        db.executemany("INSERT OR REPLACE INTO deletions(label, seq) VALUES (?, ?)", [(lb, seq) for lb in labels])
        db.executemany(
            "INSERT OR REPLACE INTO passage_deletions(label, seq) VALUES (?, ?)", [(lb, seq) for lb in passages]
        )
        return labels, np.array(passages, dtype=np.int64)

    def _write_transaction(self, apply):
        """Runs apply(seq) in one transaction and commits it (durably: synchronous=FULL).

        Raises:
            DiskFull: the file system is full; nothing of the write was stored, the collection serves on.
            StorageFailed: an I/O error (a failed fsync); the write is not acknowledged and the collection
                is out of service until a restart.
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(db.execute("SELECT value FROM state WHERE key='seq'").fetchone()[0]) + 1
                result = apply(seq)
                db.execute("UPDATE state SET value=? WHERE key='seq'", (str(seq),))
                db.execute("COMMIT")
            except BaseException:
                # After a full disk or an I/O error SQLite has rolled back already; ROLLBACK would fail
                # and hide the reason.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = self._storage_error(exc)
            if error is None:
                raise
            raise error from exc
        if self._disk_full_since is not None:
            log.warning(
                "collection %s: writes resumed after %.0fs of a full disk",
                self.name,
                time.monotonic() - self._disk_full_since,
            )
            self._disk_full_since = None
        return result

    def _storage_error(self, exc: sqlite3.Error) -> SemsearchError | None:
        """The domain error for a failed write to the database (None: not a storage fault)."""
        if is_disk_full(exc, self.directory):
            return self._disk_full("this write was not stored (none of it); reads go on")
        if is_io_failure(exc):
            return self._fail_storage(
                f"an I/O error on its database {self.directory / DATABASE} ({exc}: {exc.sqlite_errorname})"
            )
        return None

    def _disk_full(self, consequence: str) -> DiskFull:
        """The error for a write refused for space (logged once per episode: a full disk refuses every write)."""
        if self._disk_full_since is None:
            self._disk_full_since = time.monotonic()
            log.warning("collection %s: %s", self.name, disk_full_message(self.directory, "writes are refused"))
        return DiskFull(f"collection {self.name!r}: " + disk_full_message(self.directory, consequence))

    def _fail_storage(self, what: str) -> StorageFailed:
        """Takes the collection out of service after an I/O error; returns the error to raise.

        After a failed fsync the kernel may have dropped the pages it could not write and will not say so
        again (PostgreSQL's "fsyncgate"): nothing written since the last good fsync can be trusted, so
        nothing more is acknowledged or served until a restart recovers from what is on disk."""
        self._failed = (
            f"collection {self.name!r} is out of service: {what}. The write in progress was not acknowledged; "
            "the collection serves again once the server restarts and recovers it from what is on disk"
        )
        self._failed_error = StorageFailed
        log.critical("%s", self._failed)
        return StorageFailed(self._failed)

    def _after_commit(self, apply: Callable[[], None]) -> None:
        """Applies a committed write to the in-memory indexes.

        The write is durable once committed, so a failure here must not be reported as a failed
        write: the indexes are rebuilt from the database (which holds the write). Only if that fails
        too is the collection taken out of service, loudly, until a restart rebuilds it.
        """
        try:
            apply()
        except Exception:  # noqa: BLE001 - any failure leaves the in-memory indexes in doubt
            log.exception("collection %s: a committed write could not be applied in memory; rebuilding", self.name)
            try:
                self._attributes = None  # rebuilt from the database at the next filtered read
                self._load_passage_map()
                self._rebuild_vectors()
                self._rebuild_lexical()
            except Exception as exc:  # noqa: BLE001
                self._failed = (
                    f"collection {self.name!r} stored a write but could not index it ({type(exc).__name__}: {exc}); "
                    "it is out of service until the server restarts and rebuilds it from its database"
                )
                log.exception("%s", self._failed)

    def _after_write(self, changed: int) -> bool:
        """Counts a write (under the write lock); True: a snapshot is due, for the caller to write once it
        has let go of the lock."""
        self._writes_since_snapshot += changed
        # The index holds exactly the stored passages here (both changed under the write lock), so
        # its count stands in for SELECT COUNT(*), which scans the table: ~8 ms per write at 1M rows.
        if self._index.needs_rebuild(self._index.ntotal):
            self._start_rebuild_beside()
        # A snapshot rewrites the whole index: in proportion to its size, not every --snapshot-every writes.
        if (
            not self._snapshot_pending
            and self._snapshot_policy.due(self._writes_since_snapshot, self._size_at_snapshot)
            and time.monotonic() >= self._snapshot_retry_at
        ):
            self._snapshot_pending = True  # one writer writes it; the others do not queue behind it
            return True
        return False

    def delete_where(self, where: Filter, still_wanted: Callable[[], bool] | None = None) -> int:
        """Deletes every document where matches, in one transaction (chosen under the write lock: exactly the
        documents that match at the commit)."""
        with self._lock.write():
            self._ensure_writable()
            if still_wanted is not None and not still_wanted():
                raise DeadlineExceeded("the deadline passed while waiting for the collection; nothing was deleted")
            doc_labels = self._documents_matching(where)
            if not len(doc_labels):
                return 0
            ids = [doc_id for doc_id, _ in self._id_label_pairs("label", doc_labels.tolist())]
            count, snapshot_due = self._delete_locked(ids)
        if snapshot_due:
            self._snapshot_or_defer()
        return count

    def update_attributes(
        self,
        ids: Sequence[str] | None,
        where: Filter | None,
        set: Mapping,
        unset: Sequence[str],
        limits,
        still_wanted: Callable[[], bool] | None = None,
    ) -> int:
        """Sets and removes attributes of the documents chosen by ids (each must exist) or by where, in one
        transaction; text, passages and vectors are untouched, and the documents keep their sequence number
        (nothing for the vector or lexical index to replay). Returns how many documents were chosen."""
        with self._lock.write():
            self._ensure_writable()
            if still_wanted is not None and not still_wanted():
                raise DeadlineExceeded("the deadline passed while waiting for the collection; nothing was changed")
            if ids is not None:
                found = self._labels_by_id(list(ids))
                missing = [doc_id for doc_id in ids if doc_id not in found]
                if missing:
                    raise NotFound(
                        f"ids: no document {missing[0]!r} in collection {self.name!r}"
                        + (f" ({len(missing)} ids are unknown)" if len(missing) > 1 else "")
                        + "; nothing was changed"
                    )
                labels = list(found.values())
            else:
                labels = self._documents_matching(where).tolist()
            if not labels:
                return 0
            rows = []
            for start in range(0, len(labels), SQL_CHUNK):
                chunk = labels[start : start + SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(f"SELECT label, id, metadata FROM documents WHERE label IN ({marks})", chunk)
            changed = []
            for label, doc_id, metadata in rows:
                attributes = updated_attributes(
                    doc_id, decode_attributes(metadata), set, unset, limits.max_metadata_entries
                )
                changed.append((label, attributes))

            def rewrite(seq: int) -> None:
                self._db.executemany(
                    "UPDATE documents SET metadata = ? WHERE label = ?",
                    ((encode_attributes(attributes), label) for label, attributes in changed),
                )

            self._write_transaction(rewrite)
            if self._attributes is not None:
                self._after_commit(lambda: self._attributes.put_many(changed))
        return len(changed)
