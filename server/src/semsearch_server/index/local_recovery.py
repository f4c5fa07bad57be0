"""How a local collection's in-memory indexes come back: snapshots loaded and the log window after
them replayed, or rebuilt from the database (at open, or beside the live index)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

import faiss
import numpy as np

from semsearch_server.files import sha256_file
from semsearch_server.index.base import CollectionBroken
from semsearch_server.index.lexical import LexicalIndex
from semsearch_server.index.local_manifest import DATABASE, LEXICAL_META, LEXICAL_SNAPSHOT, SNAPSHOT, SNAPSHOT_META
from semsearch_server.index.passage_map import PassageMap
from semsearch_server.index.storage_faults import disk_full_message, is_disk_full
from semsearch_server.index.vector_index import VectorIndex, all_cores_but_one

# The local store logs as one logger, whichever of its modules a line comes from.
log = logging.getLogger("semsearch_server.index.faiss_store")


# A Reindex catches up beside the live index until fewer writes than this remain for its exclusive section.
_CATCH_UP_ENOUGH = 1024


class StoreRecovery:
    """FaissIndexStore's loading, log replay and rebuilds (a mixin: the state is the store's)."""

    def _recover(self) -> None:
        """Loads the last good snapshots, then replays every write they do not have."""
        started = time.monotonic()
        seq = self._seq()
        snap_seq = self._load_vector_snapshot()
        lex_seq = self._load_lexical_snapshot()
        for loaded in (snap_seq, lex_seq):
            if loaded is not None and loaded > seq:
                # The database is older than an index built from it: writes were lost outside our
                # control (a restored backup, a replaced file). Serving it would silently drop them.
                raise CollectionBroken(
                    f"{self.directory / DATABASE}: at write {seq}, older than the index snapshot ({loaded}); "
                    "restore the matching database file"
                )
        self._load_passage_map()
        passages = self._passage_count()
        replayed = [0, 0]
        if snap_seq is None:
            self._rebuild_vectors()
        else:
            replayed[0] = self._replay_vectors_after(snap_seq)
            if self._index.ntotal != passages:
                log.warning(
                    "collection %s: index holds %d vectors but the database %d passages; rebuilding",
                    self.name,
                    self._index.ntotal,
                    passages,
                )
                self._rebuild_vectors()
        if self._index.needs_rebuild(passages):
            self._rebuild_vectors()
        documents = self.count()
        if lex_seq is None:
            self._rebuild_lexical()
        else:
            replayed[1] = self._replay_lexical_after(lex_seq)
            if len(self._lexical) != documents:
                log.warning(
                    "collection %s: lexical index holds %d documents but the database %d; rebuilding",
                    self.name,
                    len(self._lexical),
                    documents,
                )
                self._rebuild_lexical()
        self._snapshot_seqs = (snap_seq or 0, lex_seq or 0)
        self._recovered = True
        if snap_seq != seq or lex_seq != seq:
            self._snapshot_or_defer()
        log.info(
            "collection %s: %d documents, %d passages loaded (snapshots at seq %s / %s, database seq %d, "
            "replayed %d passage and %d document changes) in %.2fs",
            self.name,
            documents,
            passages,
            snap_seq,
            lex_seq,
            seq,
            replayed[0],
            replayed[1],
            time.monotonic() - started,
        )

    def _load_vector_snapshot(self) -> int | None:
        meta_path, index_path = self.directory / SNAPSHOT_META, self.directory / SNAPSHOT
        if not meta_path.exists() and not index_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if sha256_file(index_path) != meta["sha256"]:
                raise ValueError(f"{index_path} does not match the checksum in {meta_path}")
            self._index.read(index_path, meta.get("hnsw"))
            return int(meta["seq"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning("collection %s: snapshot unusable, rebuilding from %s: %s", self.name, DATABASE, exc)
            self._index = VectorIndex(self.spec, self.fingerprint.dimension)
            return None

    def _load_lexical_snapshot(self) -> int | None:
        meta_path, path = self.directory / LEXICAL_META, self.directory / LEXICAL_SNAPSHOT
        if not meta_path.exists() and not path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if sha256_file(path) != meta["sha256"]:
                raise ValueError(f"{path} does not match the checksum in {meta_path}")
            self._lexical = LexicalIndex.read(path, self._analyzer)
            return int(meta["seq"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning(
                "collection %s: lexical snapshot unusable, rebuilding from the stored texts: %s", self.name, exc
            )
            self._lexical = LexicalIndex(self._analyzer)
            return None

    def _load_passage_map(self) -> None:
        self._passages = PassageMap()
        cursor = self._db.execute("SELECT label, doc_label, idx, start, end FROM passages")
        while rows := cursor.fetchmany(100_000):
            self._passages.set(np.array(rows, dtype=np.int64))

    def _replay_vectors_after(self, snap_seq: int) -> int:
        return self._apply_changes(self._index, self._changes_after(self._db, snap_seq))

    def _changes_after(
        self, db: sqlite3.Connection, after: int, upto: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vector index's changes with a sequence number in (after, upto] (no upto: every later one), read
        from `db`: the passage labels removed, then the passages added (labels ascending) and their vectors.
        What a restart replays after a snapshot, and what an index built beside catches up with."""
        window, params = ("seq > ?", (after,)) if upto is None else ("seq > ? AND seq <= ?", (after, upto))
        removed = db.execute(f"SELECT label FROM passage_deletions WHERE {window}", params).fetchall()
        labels, vectors = self._vectors_where(window, params, db)
        return np.array([r[0] for r in removed], dtype=np.int64), labels, vectors

    @staticmethod
    def _apply_changes(index: VectorIndex, changes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
        """Applies _changes_after's removals, then its additions, to `index`; returns how many there were."""
        removed, labels, vectors = changes
        index.remove(removed)
        index.add(labels, vectors)
        return len(removed) + len(labels)

    def _replay_lexical_after(self, lex_seq: int) -> int:
        removed = self._db.execute("SELECT label FROM deletions WHERE seq > ?", (lex_seq,)).fetchall()
        self._lexical.remove([r[0] for r in removed])
        rows = self._db.execute("SELECT label, text FROM documents WHERE seq > ? ORDER BY label", (lex_seq,)).fetchall()
        self._lexical.add([r[0] for r in rows], [r[1] for r in rows])
        return len(removed) + len(rows)

    def _start_rebuild_beside(self) -> None:
        """Starts building a new vector index from the database as of now, without holding the lock.

        Searches and writes go on against the live index meanwhile. The build reads the passages up to
        the current sequence number (passages are never changed in place, only added and removed), applies
        the writes that arrived since beside (the replay a restart does, under the read lock), then takes
        the write lock for the last few of them and swaps the indexes. Called with the write lock held.
        """
        if self._rebuild_thread is not None and self._rebuild_thread.is_alive():
            return
        self._rebuild_from_seq = self._seq()
        self._rebuild_thread = threading.Thread(
            target=self._rebuild_beside, args=(self._rebuild_from_seq,), name=f"rebuild-{self.name}", daemon=True
        )
        self._rebuild_thread.start()

    def _rebuild_beside(self, from_seq: int) -> None:
        started = time.monotonic()
        # OpenMP's thread count is per calling thread (this one ends with the build): the build leaves a core
        # to the searches (on 2 cores, a compaction on both made a lone HNSW search 80x slower at p50).
        faiss.omp_set_num_threads(all_cores_but_one())
        try:
            db = sqlite3.connect(self.directory / DATABASE, isolation_level=None, check_same_thread=False, timeout=30)
            try:
                rows = db.execute(
                    "SELECT label, vector FROM passages WHERE seq <= ? ORDER BY label", (from_seq,)
                ).fetchall()
            finally:
                db.close()
            labels, vectors = self._unpack_vectors(rows)
            del rows
            index = VectorIndex(self.spec, self.fingerprint.dimension)
            index.rebuild(labels, vectors)
            # The new index is nobody else's until the swap: its snapshot, as of from_seq, is written now
            # without the collection's lock (1.5 GB to write and hash for 1M flat vectors: seconds that
            # searches would otherwise wait). A restart loads it and replays the writes after from_seq,
            # whose deletions the log keeps (_rebuild_from_seq) until a later snapshot covers them.
            with self._snapshot_files:
                if self._closed or self._failed is not None:
                    return
                self._write_vector_snapshot(index, from_seq)
            # The writes made meanwhile are applied beside too, in rounds while they keep coming, as a Reindex
            # does: the write lock is then held for the last few only (an HNSW insert costs ~0.2 ms a vector).
            caught_up, beside = self._catch_up_in_rounds(index, from_seq)
            # Under the lock only the replay of what arrived since, and the swap.
            with self._lock.write():
                if self._closed or self._failed is not None:
                    return
                live, self._index = self._index, index
                try:
                    replayed = self._replay_vectors_after(caught_up)
                except BaseException:
                    self._index = live
                    raise
                self._rebuild_from_seq = None
            log.info(
                "collection %s: vector index rebuilt beside the live one (%d vectors; writes made meanwhile: %d "
                "applied beside, %d under the lock) in %.2fs",
                self.name,
                index.ntotal,
                beside,
                replayed,
                time.monotonic() - started,
            )
        except Exception as exc:  # noqa: BLE001 - the live index keeps serving; the next write tries again
            if self._closed:  # close() abandons a running rebuild (the next start rebuilds, if still needed)
                log.info("collection %s: vector index rebuild abandoned: the collection was closed", self.name)
            elif is_disk_full(exc, self.directory):  # its snapshot has no room: nothing wrong with the index
                log.warning(
                    "collection %s: vector index not rebuilt, the live index keeps serving and a later write tries "
                    "again: %s",
                    self.name,
                    disk_full_message(self.directory, "no room for the rebuilt index's snapshot"),
                )
            else:
                log.exception(
                    "collection %s: rebuilding the vector index failed; the live index keeps serving", self.name
                )
        finally:
            self._rebuild_from_seq = None

    def _rebuild_vectors(self) -> None:
        labels, vectors = self._vectors_where("1", ())
        index = VectorIndex(self.spec, self.fingerprint.dimension)
        index.rebuild(labels, vectors)
        self._index = index

    def _rebuild_lexical(self) -> None:
        lexical = LexicalIndex(self._analyzer)
        cursor = self._db.execute("SELECT label, text FROM documents ORDER BY label")
        while rows := cursor.fetchmany(10_000):
            lexical.add([r[0] for r in rows], [r[1] for r in rows])
        self._lexical = lexical

    def _vectors_where(
        self, where: str, params: tuple, db: sqlite3.Connection | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # No ORDER BY: with it SQLite scans the whole table in label order instead of using passages_seq
        # for "seq > ?" (a replay read every stored vector: 1.5 GB at 1M). Sorted here instead.
        db = self._db if db is None else db
        rows = db.execute(f"SELECT label, vector FROM passages WHERE {where}", params).fetchall()
        labels, vectors = self._unpack_vectors(rows)
        if len(labels) > 1 and (np.diff(labels) < 0).any():
            order = np.argsort(labels, kind="stable")
            labels, vectors = labels[order], vectors[order]
        return labels, vectors

    def _unpack_vectors(self, rows: list) -> tuple[np.ndarray, np.ndarray]:
        dim = self.fingerprint.dimension
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        blobs = [r[-1] for r in rows]
        wrong = [i for i, blob in enumerate(blobs) if len(blob) != 4 * dim]
        if wrong:
            raise CollectionBroken(
                f"{self.directory / DATABASE}: stored vector of passage {labels[wrong[0]]} has "
                f"{len(blobs[wrong[0]]) / 4:g} values, expected {dim}"
            )
        # One join and one view: no Python step per vector (a rebuild beside holds the GIL less).
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(rows), dim)
        return labels, vectors

    def _catch_up_in_rounds(self, index: VectorIndex, after: int) -> tuple[int, int]:
        """Catches `index`, built beside the live one, up with the writes made after sequence number `after`,
        in rounds while they keep coming (at most 4; fewer once a round had at most _CATCH_UP_ENOUGH, or once
        the store closed or failed), so that the write lock only has the last few to apply. Returns the
        sequence number it is up to and how many changes it applied."""
        caught_up, total = after, 0
        for _ in range(4):
            if self._closed or self._failed is not None:
                break
            caught_up, applied = self._catch_up(index, caught_up)
            total += applied
            if applied <= _CATCH_UP_ENOUGH:
                break
        return caught_up, total

    def _catch_up(self, index: VectorIndex, after: int) -> tuple[int, int]:
        """Applies to `index`, a new index not yet swapped in, the changes after sequence number `after`,
        read under the read lock; returns the sequence number it is now up to and how many it applied."""
        with self._lock.read():
            self._ensure_open()
            db = self._reader()
            db.execute("BEGIN")
            try:
                upto = int(db.execute("SELECT value FROM state WHERE key='seq'").fetchone()[0])
                changes = self._changes_after(db, after, upto)
            finally:
                db.execute("COMMIT")
        return upto, self._apply_changes(index, changes)
