"""A collection on disk: SQLite is the write-ahead source of truth, FAISS a snapshotted cache of it.

Layout of ``<data_dir>/collections/<name>/``:

- ``manifest.json``: format version, index spec, and the fingerprint of the model whose vectors are stored.
- ``documents.sqlite3``: documents (label, id, text, metadata JSON, float32 vector, seq), a metadata
  key/value table for filters, deletions since the last snapshot, and the write sequence number.
  WAL mode with ``synchronous=FULL``: a write is acknowledged only after its transaction is on disk,
  and a batch is one transaction, so a crash leaves all of it or none of it.
- ``index.faiss`` + ``index.json``: the FAISS index as of sequence number S, with the file's sha256.
  Written to a temporary file and renamed. On open, the snapshot is loaded (if it checks out) and every
  write after S is replayed from SQLite; a missing or damaged snapshot is rebuilt from SQLite.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semsearch_server.domain import CollectionState, CollectionStatus, Document, Hit, IndexSpec, ModelFingerprint
from semsearch_server.errors import FailedPrecondition
from semsearch_server.files import atomic_write, atomic_write_json, sha256_file
from semsearch_server.index.base import CollectionBroken, ModelMismatch
from semsearch_server.index.rwlock import ReadWriteLock
from semsearch_server.index.vector_index import VectorIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "documents.sqlite3"
SNAPSHOT = "index.faiss"
SNAPSHOT_META = "index.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    label    INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector   BLOB NOT NULL,
    seq      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_seq ON documents(seq);
CREATE TABLE IF NOT EXISTS metadata_kv (
    label INTEGER NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (label, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_kv_key_value ON metadata_kv(key, value);
CREATE TABLE IF NOT EXISTS deletions (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO state(key, value) VALUES ('seq', '0');
"""

# Upserts are applied in slices of this many rows' SQL parameters (SQLite's variable limit).
_SQL_CHUNK = 500


def write_manifest(directory: Path, name: str, spec: IndexSpec, fingerprint: ModelFingerprint) -> None:
    atomic_write_json(
        directory / MANIFEST,
        {
            "format_version": FORMAT_VERSION,
            "name": name,
            "index": spec.to_dict(),
            "model": fingerprint.to_dict(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = int(data["format_version"])
        IndexSpec.from_dict(data["index"])
        ModelFingerprint.from_dict(data["model"])
    except FileNotFoundError:
        raise CollectionBroken(f"{path}: missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CollectionBroken(f"{path}: unreadable manifest ({exc})") from None
    if version > FORMAT_VERSION:
        raise CollectionBroken(f"{path}: format version {version} is newer than this server's {FORMAT_VERSION}")
    return data


class FaissIndexStore:
    """One collection: documents and vectors in SQLite, searched through an in-memory FAISS index.

    Open it with :meth:`open` (existing) or :meth:`create` (new).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        spec: IndexSpec,
        fingerprint: ModelFingerprint,
        snapshot_every: int,
        new: bool = False,
    ) -> None:
        self.directory = directory
        self.name = name
        self.spec = spec
        self.fingerprint = fingerprint
        self._snapshot_every = snapshot_every
        self._lock = ReadWriteLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._db = self._connect(new)
        self._index = VectorIndex(spec, fingerprint.dimension)
        self._writes_since_snapshot = 0
        self._closed = False

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, directory: Path, name: str, spec: IndexSpec, fingerprint: ModelFingerprint, snapshot_every: int = 5000
    ) -> FaissIndexStore:
        directory.mkdir(parents=True, exist_ok=False)
        write_manifest(directory, name, spec, fingerprint)
        store = cls(directory, name, spec, fingerprint, snapshot_every, new=True)
        store.snapshot()
        return store

    @classmethod
    def open(
        cls, directory: Path, running: ModelFingerprint, snapshot_every: int = 5000, check_model: bool = True
    ) -> FaissIndexStore:
        """Opens and recovers a collection.

        Args:
            check_model: False opens a collection built by another model without loading its vectors,
                only so that replace_all_vectors() can re-embed its texts (Reindex).

        Raises:
            CollectionBroken: a missing, corrupt or truncated file (the message names it).
            FailedPrecondition: (as ModelMismatch) the stored vectors came from another model.
        """
        manifest = read_manifest(directory)
        spec = IndexSpec.from_dict(manifest["index"])
        stored = ModelFingerprint.from_dict(manifest["model"])
        name = str(manifest.get("name", directory.name))
        db_path = directory / DATABASE
        if not db_path.is_file():
            raise CollectionBroken(f"{db_path}: missing")
        try:
            store = cls(directory, name, spec, stored, snapshot_every)
            store._check_database()
        except sqlite3.DatabaseError as exc:
            raise CollectionBroken(f"{db_path}: {exc}") from None
        if not stored.is_compatible(running):
            if not check_model:
                return store
            store.close(snapshot=False)
            raise ModelMismatch(name, stored, running)
        store.fingerprint = running
        store._recover()
        return store

    def _connect(self, new: bool) -> sqlite3.Connection:
        path = self.directory / DATABASE
        if not new and path.stat().st_size == 0:
            # SQLite would happily treat an emptied file as a new, empty database: silent data loss.
            raise sqlite3.DatabaseError("the file is empty")
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if new:
            db.executescript(_SCHEMA)
        else:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"documents", "metadata_kv", "deletions", "state"} - tables
            if missing:
                db.close()
                raise sqlite3.DatabaseError(f"tables missing: {', '.join(sorted(missing))}")
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

    def _recover(self) -> None:
        """Loads the last good snapshot, then replays every write the snapshot does not have."""
        started = time.monotonic()
        seq = self._seq()
        snap_seq = self._load_snapshot()
        if snap_seq is not None and snap_seq > seq:
            # The database is older than the index built from it: writes were lost outside our control
            # (a restored backup, a replaced file). Serving it would silently drop them.
            raise CollectionBroken(
                f"{self.directory / DATABASE}: at write {seq}, older than the index snapshot ({snap_seq}); "
                "restore the matching database file"
            )
        if snap_seq is None:
            self._rebuild_from_database()
            replayed = "all"
        else:
            replayed = self._replay_after(snap_seq)
            if self._index.ntotal != self.count():
                log.warning(
                    "collection %s: index holds %d vectors but the database %d documents; rebuilding",
                    self.name,
                    self._index.ntotal,
                    self.count(),
                )
                self._rebuild_from_database()
        if self._index.needs_rebuild(self.count()):
            self._rebuild_from_database()
        if snap_seq != seq:
            self._write_snapshot()
        log.info(
            "collection %s: %d documents loaded (snapshot seq %s, database seq %d, replayed %s) in %.2fs",
            self.name,
            self.count(),
            snap_seq,
            seq,
            replayed,
            time.monotonic() - started,
        )

    def _load_snapshot(self) -> int | None:
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

    def _replay_after(self, snap_seq: int) -> int:
        rows = self._db.execute("SELECT label FROM deletions WHERE seq > ?", (snap_seq,)).fetchall()
        self._index.remove(np.array([r[0] for r in rows], dtype=np.int64))
        labels, vectors = self._vectors_where("seq > ?", (snap_seq,))
        self._index.add(labels, vectors)
        return len(rows) + len(labels)

    def _rebuild_from_database(self) -> None:
        labels, vectors = self._vectors_where("1", ())
        self._index = VectorIndex(self.spec, self.fingerprint.dimension)
        self._index.rebuild(labels, vectors)

    def _vectors_where(self, where: str, params: tuple) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute(f"SELECT label, vector FROM documents WHERE {where} ORDER BY label", params).fetchall()
        dim = self.fingerprint.dimension
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.empty((len(rows), dim), dtype=np.float32)
        for i, (_, blob) in enumerate(rows):
            vector = np.frombuffer(blob, dtype=np.float32)
            if vector.shape != (dim,):
                raise CollectionBroken(
                    f"{self.directory / DATABASE}: stored vector of label {labels[i]} has {vector.size} values, "
                    f"expected {dim}"
                )
            vectors[i] = vector
        return labels, vectors

    # -- writes --------------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[Document], vectors: np.ndarray) -> int:
        """Inserts or replaces documents in one transaction; returns once durable."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock.write():
            self._ensure_open()
            labels = self._write_transaction(lambda seq: self._upsert_rows(docs, vectors, seq))
            self._index.add(np.array(labels, dtype=np.int64), vectors)
            self._after_write(len(docs))
        return len(docs)

    def _upsert_rows(self, docs: Sequence[Document], vectors: np.ndarray, seq: int) -> list[int]:
        labels: list[int] = []
        for doc, vector in zip(docs, vectors, strict=True):
            (label,) = self._db.execute(
                "INSERT INTO documents(id, text, metadata, vector, seq) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET text=excluded.text, metadata=excluded.metadata, "
                "vector=excluded.vector, seq=excluded.seq RETURNING label",
                (doc.id, doc.text, json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True), vector.tobytes(), seq),
            ).fetchone()
            labels.append(label)
        for start in range(0, len(labels), _SQL_CHUNK):
            chunk = labels[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM metadata_kv WHERE label IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM deletions WHERE label IN ({marks})", chunk)
        self._db.executemany(
            "INSERT INTO metadata_kv(label, key, value) VALUES (?, ?, ?)",
            [(label, k, v) for label, doc in zip(labels, docs, strict=True) for k, v in doc.metadata.items()],
        )
        return labels

    def delete(self, ids: Sequence[str]) -> int:
        """Deletes documents by id in one transaction; returns how many existed."""
        with self._lock.write():
            self._ensure_open()
            labels = self._write_transaction(lambda seq: self._delete_rows(ids, seq))
            self._index.remove(np.array(labels, dtype=np.int64))
            self._after_write(len(labels))
        return len(labels)

    def _delete_rows(self, ids: Sequence[str], seq: int) -> list[int]:
        labels: list[int] = []
        for start in range(0, len(ids), _SQL_CHUNK):
            chunk = list(ids[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            labels += [r[0] for r in self._db.execute(f"SELECT label FROM documents WHERE id IN ({marks})", chunk)]
        for start in range(0, len(labels), _SQL_CHUNK):
            chunk = labels[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM documents WHERE label IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM metadata_kv WHERE label IN ({marks})", chunk)
        self._db.executemany("INSERT OR REPLACE INTO deletions(label, seq) VALUES (?, ?)", [(lb, seq) for lb in labels])
        return labels

    def replace_all_vectors(self, fingerprint: ModelFingerprint, embed) -> int:
        """Re-embeds every stored text with embed(texts) and records the new model (Reindex)."""
        with self._lock.write():
            self._ensure_open()
            rows = self._db.execute("SELECT label, text FROM documents ORDER BY label").fetchall()
            vectors = embed([r[1] for r in rows]) if rows else np.zeros((0, fingerprint.dimension), np.float32)

            def rewrite(seq: int) -> list[int]:
                self._db.executemany(
                    "UPDATE documents SET vector = ?, seq = ? WHERE label = ?",
                    [
                        (v.tobytes(), seq, r[0])
                        for r, v in zip(rows, np.asarray(vectors, dtype=np.float32), strict=True)
                    ],
                )
                return []

            self._write_transaction(rewrite)
            write_manifest(self.directory, self.name, self.spec, fingerprint)
            self.fingerprint = fingerprint
            self._rebuild_from_database()
            self._write_snapshot()
        return len(rows)

    def _write_transaction(self, apply) -> list[int]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = int(db.execute("SELECT value FROM state WHERE key='seq'").fetchone()[0]) + 1
            result = apply(seq)
            db.execute("UPDATE state SET value=? WHERE key='seq'", (str(seq),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def _after_write(self, changed: int) -> None:
        self._writes_since_snapshot += changed
        # The index holds exactly the stored documents here (both changed under the write lock), so
        # its count stands in for SELECT COUNT(*), which scans the table: ~8 ms per write at 1M rows.
        if self._index.needs_rebuild(self._index.ntotal):
            self._rebuild_from_database()
            self._write_snapshot()
        elif self._writes_since_snapshot >= self._snapshot_every:
            self._write_snapshot()

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, ids: Sequence[str]) -> list[Document]:
        """Found documents in request order."""
        with self._lock.read():
            self._ensure_open()
            found = self._fetch("id", list(ids))
        return [Document(d[0], d[1], d[2]) for d in (found.get(i) for i in ids) if d is not None]

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock.read():
            self._ensure_open()
            marks = ",".join("?" * len(ids))
            rows = (
                self._reader().execute(f"SELECT id, vector FROM documents WHERE id IN ({marks})", list(ids)).fetchall()
            )
        return {r[0]: np.frombuffer(r[1], dtype=np.float32).copy() for r in rows}

    def _fetch(self, column: str, keys: list) -> dict:
        """{key: (id, text, metadata, label)} for documents whose column is in keys."""
        out: dict = {}
        db = self._reader()
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = keys[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            # All matches in one row of JSON, not one row each: the sqlite3 module lets go of the
            # GIL at every step, and with many searches in flight each step's re-acquisition can wait
            # out another thread's time slice (10 rows took 3.9 ms at p50 under 16 clients).
            (matches,) = db.execute(
                "SELECT json_group_array(json_array(label, id, text, json(metadata))) "
                f"FROM documents WHERE {column} IN ({marks})",
                chunk,
            ).fetchone()
            for label, doc_id, text, metadata in json.loads(matches):
                key = label if column == "label" else doc_id
                out[key] = (doc_id, text, metadata, label)
        return out

    def search(self, queries: np.ndarray, top_k: int, min_score: float, filter: Mapping[str, str]) -> list[list[Hit]]:
        with self._lock.read():
            self._ensure_open()
            allowed = self._labels_matching(filter) if filter else None
            scores, labels = self._index.search(queries, top_k, allowed)
            wanted = sorted({int(x) for x in labels.ravel() if x >= 0})
            docs = self._fetch("label", wanted)
        results: list[list[Hit]] = []
        for row_scores, row_labels in zip(scores, labels, strict=True):
            hits = []
            for score, label in zip(row_scores.tolist(), row_labels.tolist(), strict=True):
                if label < 0 or score < min_score or label not in docs:
                    continue
                doc_id, text, metadata, _ = docs[label]
                hits.append(Hit(doc_id, float(score), text, metadata))
            results.append(hits)
        return results

    def _labels_matching(self, filter: Mapping[str, str]) -> np.ndarray:
        clauses = " INTERSECT ".join("SELECT label FROM metadata_kv WHERE key = ? AND value = ?" for _ in filter)
        params = [x for kv in sorted(filter.items()) for x in kv]
        rows = self._reader().execute(clauses, params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def status(self) -> CollectionStatus:
        with self._lock.read():
            return CollectionStatus(
                name=self.name,
                document_count=self.count(),
                index=self.spec,
                state=CollectionState.READY,
                index_trained=self._index.trained,
            )

    # -- snapshots and shutdown ----------------------------------------------------------------------
    def snapshot(self) -> None:
        with self._lock.write():
            if not self._closed:
                self._write_snapshot()

    def _write_snapshot(self) -> None:
        seq = self._seq()
        index_path = self.directory / SNAPSHOT
        atomic_write(index_path, self._index.write)
        meta = {"seq": seq, "sha256": sha256_file(index_path), "count": self._index.ntotal}
        if self.spec.kind.value == "hnsw":
            meta["hnsw"] = self._index.slot_state()
        atomic_write_json(self.directory / SNAPSHOT_META, meta)
        # Deletions older than the snapshot are in it; the log need not keep them.
        self._db.execute("DELETE FROM deletions WHERE seq <= ?", (seq,))
        self._writes_since_snapshot = 0

    def _seq(self) -> int:
        return int(self._db.execute("SELECT value FROM state WHERE key='seq'").fetchone()[0])

    def _ensure_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} has been deleted or the server is shutting down")

    def close(self, snapshot: bool = True) -> None:
        """Writes a final snapshot (so the next start replays nothing) and closes the database."""
        with self._lock.write():
            if self._closed:
                return
            if snapshot:
                self._write_snapshot()
            self._closed = True
            for reader in self._readers:
                reader.close()
            self._db.close()
