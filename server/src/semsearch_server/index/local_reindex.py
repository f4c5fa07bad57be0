"""Reindex of a local collection: every text re-embedded beside the live index, the new index swapped in
with the collection's lock held only for the last writes, the rewrite's COMMIT and the swap."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable

import numpy as np

from semsearch_server.domain import Document, ModelFingerprint
from semsearch_server.errors import DiskFull, StorageFailed
from semsearch_server.filtering import decode_attributes
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.local_database import SQL_CHUNK
from semsearch_server.index.local_manifest import DATABASE, write_manifest
from semsearch_server.index.storage_faults import disk_full_message, is_disk_full
from semsearch_server.index.vector_index import VectorIndex, all_cores_but_one, openmp_threads

# The local store logs as one logger, whichever of its modules a line comes from.
log = logging.getLogger("semsearch_server.index.faiss_store")


# Documents re-embedded per call of a Reindex's embed_documents (see _embed_in_chunks).
_REINDEX_CHUNK = 8192


class StoreReindex:
    """FaissIndexStore's Reindex (a mixin: the state is the store's)."""

    def replace_all_vectors(
        self,
        fingerprint: ModelFingerprint,
        embed_documents: Callable[[list[Document]], list[EmbeddedDocument]],
    ) -> int:
        """Re-embeds every stored document with embed_documents and records the new model (Reindex).

        Nothing in proportion to the collection holds the collection's lock against searches:

        - the texts are read as of one sequence number R (under the read lock), and embedded with no lock;
        - labels are reserved for the new passages (a short write), and the new vector index is built from
          them beside the live one, with no lock, then takes the writes made since R (read under the read
          lock, applied beside);
        - the database rewrite runs while writers wait and searches go on (they read the committed state:
          SQLite's WAL), and only its COMMIT and the swap of the indexes are exclusive: the new index then
          drops the passages of documents written or deleted after R (they keep what that write gave them)
          and takes the last writes it has not caught up with, as the replay of a rebuild beside does.
        """
        with self._reindexing:  # one at a time: the rewrite's upgrade to exclusive allows a single caller
            try:
                return self._replace_all_vectors(fingerprint, embed_documents)
            finally:
                self._reindex_from_seq = None

    def _replace_all_vectors(
        self,
        fingerprint: ModelFingerprint,
        embed_documents: Callable[[list[Document]], list[EmbeddedDocument]],
    ) -> int:
        with self._lock.read():
            self._ensure_open()
            db = self._reader()
            db.execute("BEGIN")  # the documents and R from one read
            try:
                rows = db.execute("SELECT label, id, text, metadata, seq FROM documents ORDER BY label").fetchall()
                read_seq = int(db.execute("SELECT value FROM state WHERE key='seq'").fetchone()[0])
            finally:
                db.execute("COMMIT")
            self._reindex_from_seq = read_seq  # snapshots keep the log after R until the swap
        owners, spans, vectors, passage_counts = self._embed_in_chunks(rows, fingerprint.dimension, embed_documents)
        with self._lock.write():
            self._ensure_open()
            if self._failed_error is StorageFailed:  # re-embedding does not make its files trustworthy again
                raise StorageFailed(self._failed)
            first = self._write_transaction(lambda seq: self._reserve_passage_labels(len(owners)))
        labels = np.arange(first, first + len(owners), dtype=np.int64)
        with openmp_threads(all_cores_but_one()):  # a core left to the searches, as a rebuild beside
            index = VectorIndex.built(self.spec, fingerprint.dimension, labels, vectors)
            # The writes that arrived meanwhile, applied beside too (a few rounds, while they keep coming), so
            # that the exclusive section only has the last few to apply (HNSW inserts ~0.2 ms a vector).
            caught_up, _ = self._catch_up_in_rounds(index, read_seq)

        def rewrite(seq: int) -> tuple[int, np.ndarray, np.ndarray]:
            db = self._db
            current = dict(db.execute("SELECT label, seq FROM documents").fetchall())
            kept = np.array([current.get(row[0]) == row[4] for row in rows], dtype=bool)
            kept_docs = [row[0] for row, keep in zip(rows, kept, strict=True) if keep]
            removed: list[int] = []
            for start in range(0, len(kept_docs), SQL_CHUNK):
                chunk = kept_docs[start : start + SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += [
                    r[0]
                    for r in db.execute(f"DELETE FROM passages WHERE doc_label IN ({marks}) RETURNING label", chunk)
                ]
            db.executemany(
                "INSERT OR REPLACE INTO passage_deletions(label, seq) VALUES (?, ?)", [(lb, seq) for lb in removed]
            )
            passage_kept = np.repeat(kept, passage_counts)
            owner_list, span_list = owners.tolist(), spans.tolist()
            db.executemany(
                "INSERT INTO passages(label, doc_label, idx, start, end, vector, seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (first + i, owner_list[i], *span_list[i], vectors[i].tobytes(), seq)
                    for i in np.flatnonzero(passage_kept).tolist()
                ),
            )
            # SQLite has spilled most of the rewrite's pages to the WAL file as its cache filled: flushed to
            # disk now, they leave COMMIT's own fsync little to write (at 300k passages that fsync took
            # 1.6 s of the exclusive section).
            self._sync_wal()
            # Only COMMIT and the swap are exclusive: searches see the old state until both are done.
            exclusive.enter_context(self._lock.upgraded())
            return len(current), passage_kept, np.array(removed, dtype=np.int64)

        with self._lock.read_holding_writers():
            self._ensure_open()
            if self._failed_error is StorageFailed:
                raise StorageFailed(self._failed)
            # COMMIT would also copy the whole rewrite from the WAL into the database file (SQLite's automatic
            # checkpoint: ~0.9 s of the exclusive section at 300k passages); done after it instead.
            (autocheckpoint,) = self._db.execute("PRAGMA wal_autocheckpoint").fetchone()
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            try:
                with contextlib.ExitStack() as exclusive:
                    count, passage_kept, removed = self._write_transaction(rewrite)
                    self._swap_reindexed(index, fingerprint, caught_up, labels, passage_kept, removed, owners, spans)
            finally:
                self._db.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
            try:  # searches go on meanwhile (readers are not blocked by a PASSIVE checkpoint)
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # a later COMMIT checkpoints again
                log.warning("collection %s: checkpoint after a Reindex failed: %s", self.name, exc)
        try:
            write_manifest(self.directory, self.name, self.settings, fingerprint)
        except OSError as exc:
            if not is_disk_full(exc, self.directory):
                raise
            raise DiskFull(
                f"collection {self.name!r}: "
                + disk_full_message(
                    self.directory, "the new vectors are stored but the manifest still names the previous model"
                )
                + " (then run Reindex again)"
            ) from exc
        self._snapshot_or_defer()
        return count

    @staticmethod
    def _embed_in_chunks(
        rows: list[tuple],
        dim: int,
        embed_documents: Callable[[list[Document]], list[EmbeddedDocument]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Re-embeds the documents of `rows` (label, id, text, metadata, seq) a chunk at a time; returns each new
        passage's owner label, its (index, start, end) and vector, and each document's passage count.

        A chunk's Document and EmbeddedDocument objects are gone before the next chunk's are made: the garbage
        collector's full passes then walk thousands of them, not a collection's worth (at 200k documents,
        all at once, they stopped every thread for up to 150-270 ms each, six times per Reindex).
        """
        owners, spans, vectors, counts = [], [], [], []
        for start in range(0, len(rows), _REINDEX_CHUNK):
            chunk = rows[start : start + _REINDEX_CHUNK]
            embedded = embed_documents([Document(r[1], r[2], decode_attributes(r[3])) for r in chunk])
            if len(embedded) != len(chunk):
                raise RuntimeError(f"re-embedding returned {len(embedded)} documents for {len(chunk)}")
            per_document = np.array([len(item.passages) for item in embedded], dtype=np.int64)
            owners.append(np.repeat(np.array([r[0] for r in chunk], dtype=np.int64), per_document))
            spans.append(
                np.array(
                    [(p.index, p.start, p.end) for item in embedded for p in item.passages], dtype=np.int64
                ).reshape(-1, 3)
            )
            vectors.append(np.concatenate([np.asarray(item.vectors, np.float32).reshape(-1, dim) for item in embedded]))
            counts.append(per_document)
        if not rows:
            empty = np.zeros(0, dtype=np.int64)
            return empty, np.zeros((0, 3), dtype=np.int64), np.zeros((0, dim), np.float32), empty
        return (
            np.concatenate(owners),
            np.concatenate(spans),
            np.concatenate(vectors),
            np.concatenate(counts),
        )

    def _swap_reindexed(
        self,
        index: VectorIndex,
        fingerprint: ModelFingerprint,
        caught_up: int,
        labels: np.ndarray,
        passage_kept: np.ndarray,
        removed: np.ndarray,
        owners: np.ndarray,
        spans: np.ndarray,
    ) -> None:
        """Brings a Reindex's new index up to date and swaps it in. Called alone (the rewrite's upgrade)."""
        seq = self._seq()
        self.fingerprint = fingerprint  # the vectors written after R are the running model's too
        # The documents written or deleted after R keep what those writes gave them: their new passages
        # replace the reserved ones (those up to `caught_up` are in already).
        index.remove(labels[~passage_kept])
        self._apply_changes(index, self._changes_after(self._db, caught_up, seq - 1))  # seq: the rewrite's own
        self._index = index
        self._failed = None
        if self._recovered:
            self._passages.remove(removed)
            self._passages.set(np.column_stack([labels, owners, spans])[passage_kept])
        else:  # opened for Reindex only (another model's vectors): nothing loaded yet, nobody served
            self._load_passage_map()
            self._rebuild_lexical()
            self._recovered = True
        self._writes_since_snapshot += len(removed) + int(passage_kept.sum())

    def _sync_wal(self) -> None:
        """fsyncs the database's WAL file (what SQLite's COMMIT would fsync).

        Raises:
            StorageFailed: an I/O error; the collection is out of service (see _fail_storage).
        """
        path = self.directory / f"{DATABASE}-wal"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._fail_storage(f"an I/O error on {path} ({exc})") from exc
        finally:
            os.close(fd)

    def _reserve_passage_labels(self, n: int) -> int:
        """Moves the passages' label counter n past the labels in use; returns the first of the n."""
        db = self._db
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'passages'").fetchone()
        (top,) = db.execute("SELECT COALESCE(MAX(label), 0) FROM passages").fetchone()
        first = max(int(row[0]) if row else 0, int(top)) + 1
        if row:
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'passages'", (first + n - 1,))
        else:
            db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('passages', ?)", (first + n - 1,))
        return first
