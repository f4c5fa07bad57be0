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
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from semsearch_server.domain import (
    CollectionSettings,
    CollectionState,
    CollectionStatus,
    Document,
    IndexSpec,
    ModelFingerprint,
    Passage,
)
from semsearch_server.errors import DiskFull, FailedPrecondition, SemsearchError, StorageFailed
from semsearch_server.files import StagedFiles, sha256_file
from semsearch_server.filtering import Filter, as_filter, attributes_from_json, decode_attributes
from semsearch_server.index.attribute_index import AttributeIndex
from semsearch_server.index.base import (
    CollectionBroken,
    DenseMatch,
    LexicalMatch,
    LexicalTermScore,
    ModelMismatch,
    ScoreTable,
)
from semsearch_server.index.lexical import Analyzer, LexicalIndex
from semsearch_server.index.local_database import SQL_CHUNK, connect_database
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


# Scroll under a filter matching at most this many documents sorts their ids in memory; past it, it walks
# the id index and skips what does not match (few rows skipped per page when most match).
_SCROLL_SORT_MAX = 50_000
# A snapshot that could not be written (a full disk) is tried again at a write at least this long after
# the failure, doubling up to the maximum: the database holds every write meanwhile, a restart replays them.
SNAPSHOT_RETRY_SECONDS = 2.0
SNAPSHOT_RETRY_MAX_SECONDS = 60.0


class FaissIndexStore(StoreWrites, StoreReindex, StoreRecovery):
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

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, ids: Sequence[str]) -> list[Document]:
        """Found documents in request order."""
        with self._lock.read():
            self._ensure_readable()
            found = self._fetch("id", list(ids))
        return [Document(d[0], d[1], attributes_from_json(d[2])) for d in (found.get(i) for i in ids) if d is not None]

    def get_passages(self, ids: Sequence[str]) -> dict[str, tuple[tuple[Passage, ...], np.ndarray]]:
        with self._lock.read():
            self._ensure_readable()
            rows = self._passage_rows(list(ids))
        out: dict[str, tuple[list[Passage], list[np.ndarray]]] = {}
        for _, doc_id, idx, start, end, blob in rows:
            passages, vectors = out.setdefault(doc_id, ([], []))
            passages.append(Passage(idx, start, end))
            vectors.append(np.frombuffer(blob, dtype=np.float32))
        return {k: (tuple(p), np.vstack(v)) for k, (p, v) in out.items()}

    def _passage_rows(self, ids: list[str]) -> list[tuple]:
        """(passage label, document id, index, start, end, vector) of these documents' passages, in order."""
        out: list[tuple] = []
        db = self._reader()
        for start in range(0, len(ids), SQL_CHUNK):
            chunk = ids[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            out += db.execute(
                "SELECT p.label, d.id, p.idx, p.start, p.end, p.vector FROM passages p "
                f"JOIN documents d ON d.label = p.doc_label WHERE d.id IN ({marks}) ORDER BY p.doc_label, p.idx",
                chunk,
            ).fetchall()
        return out

    def _fetch(self, column: str, keys: list) -> dict:
        """{key: (id, text, metadata, label)} for documents whose column is in keys."""
        out: dict = {}
        db = self._reader()
        for start in range(0, len(keys), SQL_CHUNK):
            chunk = keys[start : start + SQL_CHUNK]
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

    def search_dense(
        self, queries: np.ndarray, top_k: int, filter: Filter | Mapping[str, str] | None, documents: bool = False
    ) -> list[list[DenseMatch]]:
        """Per query: the top_k documents by their best passage's cosine, best first.

        Args:
            documents: also fetch each match's document (text and metadata) in the same read.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock.read():
            self._ensure_readable()
            allowed = self._passages_matching(filter)
            best = [self._best_passages(q, top_k, allowed) for q in queries]
            doc_labels = sorted({doc for row in best for _, _, doc in row})
            docs = self._fetch("label", doc_labels) if documents else self._ids_by_label(doc_labels)
            passages = {label: self._passages.passage(label) for row in best for label, _, _ in row}
        results: list[list[DenseMatch]] = []
        for row in best:
            matches = []
            for label, score, doc_label in row:
                doc = docs.get(doc_label)
                if doc is None:
                    continue
                document = Document(doc[0], doc[1], attributes_from_json(doc[2])) if documents else None
                matches.append(DenseMatch(doc[0], score, passages[label], document))
            results.append(matches)
        return results

    def _ids_by_label(self, doc_labels: list[int]) -> dict[int, tuple[str]]:
        """{label: (id,)} for these documents: a light read when texts are not wanted."""
        return {label: (doc_id,) for doc_id, label in self._id_label_pairs("label", doc_labels)}

    def _id_label_pairs(self, column: str, keys: list) -> list[tuple[str, int]]:
        """(id, label) of the documents whose column is in keys, as one JSON row per chunk (see _fetch)."""
        out: list[tuple[str, int]] = []
        db = self._reader()
        for start in range(0, len(keys), SQL_CHUNK):
            chunk = keys[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            (pairs,) = db.execute(
                f"SELECT json_group_array(json_array(id, label)) FROM documents WHERE {column} IN ({marks})", chunk
            ).fetchone()
            out += [(doc_id, label) for doc_id, label in json.loads(pairs)]
        return out

    def _best_passages(self, query: np.ndarray, top_k: int, allowed: np.ndarray | None) -> list[tuple[int, float, int]]:
        """[(passage label, score, document label)] of the top_k documents' best passages, best first
        (the search widens until it has top_k documents or every passage)."""
        total = self._index.ntotal
        # Enough passages for top_k documents at the collection's passages per document (and a margin),
        # so that one scan usually suffices: a second search costs a second full scan of a flat index.
        per_document = total / max(len(self._lexical), 1)
        want = top_k if per_document <= 1 else int(top_k * per_document * 1.5) + 8
        while True:
            k = max(1, min(want, total))
            scores, labels = self._index.search(query[None, :], k, allowed)
            seen: set[int] = set()
            row: list[tuple[int, float, int]] = []
            doc_labels = self._passages.documents(labels[0])
            for label, doc_label, score in zip(
                labels[0].tolist(), doc_labels.tolist(), scores[0].tolist(), strict=True
            ):
                if label < 0 or doc_label < 0 or doc_label in seen:
                    continue
                seen.add(doc_label)
                row.append((label, float(score), doc_label))
                if len(row) == top_k:
                    return row
            if k >= total or (labels[0] < 0).any():
                return row
            want *= 4

    def _passages_matching(self, filter: Filter | Mapping[str, str] | None) -> np.ndarray | None:
        """The passage labels of the documents the filter matches (None: no filter, every passage).

        The vector index then chooses by their number: exact scoring of just these vectors when they are
        few, FAISS's own search with them as a selector when they are many (VectorIndex.search)."""
        doc_labels = self._documents_matching(filter)
        return None if doc_labels is None else self._passages.of_documents(doc_labels)

    def _documents_matching(self, filter: Filter | Mapping[str, str] | None) -> np.ndarray | None:
        """Sorted labels of the documents the filter matches (None: no filter). Call under the read lock."""
        tree = as_filter(filter)
        if tree is None:
            return None
        return self._attribute_index().evaluate(tree)

    def _attribute_index(self) -> AttributeIndex:
        """The attribute index, built from the database on first use (under the read or write lock, so no
        write lands between the read and the index taking over; writers then keep it in step)."""
        index = self._attributes
        if index is not None:
            return index
        with self._attributes_building:
            if self._attributes is None:
                started = time.monotonic()
                index = AttributeIndex()
                cursor = self._reader().execute("SELECT label, metadata FROM documents")
                while rows := cursor.fetchmany(10_000):
                    index.put_many((label, decode_attributes(metadata)) for label, metadata in rows)
                self._attributes = index
                log.info(
                    "collection %s: attribute index of %d documents built in %.2f s",
                    self.name,
                    len(index),
                    time.monotonic() - started,
                )
            return self._attributes

    def search_lexical(
        self, queries: Sequence[str], top_k: int, filter: Filter | Mapping[str, str] | None, documents: bool = False
    ) -> list[list[LexicalMatch]]:
        with self._lock.read():
            self._ensure_readable()
            allowed = self._documents_matching(filter)
            found = [self._lexical.search(q, top_k, allowed) for q in queries]
            labels = sorted({int(label) for labels, _ in found for label in labels})
            docs = self._fetch("label", labels) if documents else self._ids_by_label(labels)
            spans = self._spans_of(labels) if documents else {}
        results = []
        for query, (labels, scores) in zip(queries, found, strict=True):
            terms = set(self._analyzer.terms(query)) if documents else set()
            matches = []
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True):
                doc = docs.get(label)
                if doc is None:
                    continue
                if documents:
                    passage = self._best_lexical_passage(doc[1], spans.get(label, ()), terms)
                    document = Document(doc[0], doc[1], attributes_from_json(doc[2]))
                    matches.append(LexicalMatch(doc[0], float(score), document, passage))
                else:
                    matches.append(LexicalMatch(doc[0], float(score)))
            results.append(matches)
        return results

    def _spans_of(self, doc_labels: list[int]) -> dict[int, list[Passage]]:
        out: dict[int, list[Passage]] = {}
        db = self._reader()
        for start in range(0, len(doc_labels), SQL_CHUNK):
            chunk = doc_labels[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT doc_label, idx, start, end FROM passages WHERE doc_label IN ({marks}) ORDER BY doc_label, idx",
                chunk,
            )
            for doc_label, idx, begin, end in rows:
                out.setdefault(doc_label, []).append(Passage(idx, begin, end))
        return out

    def _best_lexical_passage(self, text: str, spans: Sequence[Passage], terms: set[str]) -> Passage:
        """The passage with the most occurrences of query terms (the first of equals)."""
        if len(spans) <= 1:
            return spans[0] if spans else Passage(0, 0, len(text))
        positions = [t.start for t in self._analyzer.tokens(text) if t.term in terms]
        counts = [sum(1 for at in positions if p.start <= at < p.end) for p in spans]
        return spans[counts.index(max(counts))]

    def dense_scores(self, query: np.ndarray, ids: Sequence[str]) -> dict[str, DenseMatch]:
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        with self._lock.read():
            self._ensure_readable()
            doc_labels = self._labels_by_id(list(ids))
            if not doc_labels:
                return {}
            id_of = {label: doc_id for doc_id, label in doc_labels.items()}
            labels = self._passages.of_documents(np.fromiter(id_of, dtype=np.int64, count=len(id_of)))
            scores, found = self._index.search(query, len(labels), labels)
            out: dict[str, DenseMatch] = {}
            owners = self._passages.documents(found[0])
            for label, owner, score in zip(found[0].tolist(), owners.tolist(), scores[0].tolist(), strict=True):
                doc_id = id_of.get(owner)
                if label < 0 or doc_id is None or doc_id in out:  # best first: a document's first is its best
                    continue
                out[doc_id] = DenseMatch(doc_id, float(score), self._passages.passage(label))
        return out

    def lexical_scores(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        with self._lock.read():
            self._ensure_readable()
            found = self._labels_by_id(list(ids))
            labels = list(found.values())
            scores = self._lexical.scores(query, labels) if labels else np.zeros(0)
        return {doc_id: float(s) for doc_id, s in zip(found, scores.tolist(), strict=True)}

    def _labels_by_id(self, ids: list[str]) -> dict[str, int]:
        """{id: label} of these documents that exist, in the order given."""
        found = dict(self._id_label_pairs("id", ids))
        return {doc_id: found[doc_id] for doc_id in ids if doc_id in found}

    def explain_lexical(self, query: str, doc_id: str) -> list[LexicalTermScore]:
        with self._lock.read():
            self._ensure_readable()
            found = self._labels_by_id([doc_id])
            if doc_id not in found:
                return []
            terms = self._lexical.explain(query, found[doc_id])
        return [
            LexicalTermScore(
                t.term, t.query_text, float(t.contribution), int(t.term_frequency), int(t.document_frequency)
            )
            for t in terms
        ]

    def score_all(
        self,
        query: str,
        vector: np.ndarray | None,
        filter: Filter | Mapping[str, str] | None,
        dense: bool,
        lexical: bool,
    ) -> ScoreTable:
        with self._lock.read():
            self._ensure_readable()
            db = self._reader()
            doc_labels = self._documents_matching(filter)
            if doc_labels is None:
                rows = db.execute("SELECT label FROM documents").fetchall()
                doc_labels = np.array(sorted(r[0] for r in rows), dtype=np.int64)
            ids_by_label = self._ids_by_label(doc_labels.tolist()) if len(doc_labels) else {}
            dense_scores = None
            if dense and vector is not None:
                # Every live passage's cosine, from the index's own arrays (no copy for flat and HNSW).
                labels, vectors = self._index.all_vectors()
                position, inside = _positions(doc_labels, self._passages.documents(labels))
                dense_scores = np.full(len(doc_labels), -np.inf, dtype=np.float32)
                if inside.any():
                    passage_scores = vectors[inside] @ np.asarray(vector, dtype=np.float32)
                    np.maximum.at(dense_scores, position[inside], passage_scores)
            lexical_scores = None
            if lexical:
                labels, scores = self._lexical.all_scores(query)
                lexical_scores = np.zeros(len(doc_labels), dtype=np.float32)
                position, inside = _positions(doc_labels, labels)
                lexical_scores[position[inside]] = scores[inside]
        return ScoreTable([ids_by_label[label][0] for label in doc_labels.tolist()], dense_scores, lexical_scores)

    def count(self, where: Filter | None = None) -> int:
        """Documents in the collection, or those where matches (from the attribute index: no vector is read)."""
        if where is None:
            return int(self._reader().execute("SELECT COUNT(*) FROM documents").fetchone()[0])
        with self._lock.read():
            self._ensure_readable()
            return len(self._documents_matching(where))

    # -- data management -----------------------------------------------------------------------------
    def scroll(self, where: Filter | None, after: str | None, limit: int) -> list[Document]:
        """Up to limit documents where matches with ids after `after`, in ascending id order (bytewise:
        SQLite compares TEXT with memcmp of UTF-8, and the id's UNIQUE index is in that order)."""
        with self._lock.read():
            self._ensure_readable()
            db = self._reader()
            matching = self._documents_matching(where)
            start = "" if after is None else after
            op = ">" if after is not None else ">="
            if matching is None or len(matching) > _SCROLL_SORT_MAX:
                # Many match: walk the id index from the cursor, keeping the matching rows, a chunk at a time.
                keep = None if matching is None else _membership(matching)
                out: list[Document] = []
                while len(out) < limit:
                    rows = db.execute(
                        f"SELECT id, text, metadata, label FROM documents WHERE id {op} ? ORDER BY id LIMIT ?",
                        (start, max(limit - len(out), 256)),
                    ).fetchall()
                    if not rows:
                        break
                    for doc_id, text, metadata, label in rows:
                        if keep is None or keep(label):
                            out.append(Document(doc_id, text, decode_attributes(metadata)))
                            if len(out) == limit:
                                break
                    start, op = rows[-1][0], ">"
                return out
            # Few match: their ids, sorted bytewise, then one read of the page.
            ids = [doc_id for doc_id, _ in self._id_label_pairs("label", matching.tolist())]
            ids = sorted((i for i in ids if after is None or _bytewise(i) > _bytewise(after)), key=_bytewise)[:limit]
            found = self._fetch("id", ids)
            return [Document(d[0], d[1], attributes_from_json(d[2])) for d in (found[i] for i in ids if i in found)]

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
        """Writes `index` as the FAISS snapshot at `seq`, staged with its checksum. Called with _snapshot_files held."""
        with StagedFiles() as staged:
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
        with StagedFiles() as staged:
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


def _bytewise(doc_id: str) -> bytes:
    """An id's sort key: its UTF-8 bytes (the order SQLite keeps ids in, and Scroll's)."""
    return doc_id.encode("utf-8", "surrogatepass")


def _membership(sorted_labels: np.ndarray) -> Callable[[int], bool]:
    members = set(sorted_labels.tolist())
    return members.__contains__


def _positions(sorted_labels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of labels sits in sorted_labels, and whether it is there at all."""
    if len(sorted_labels) == 0:
        return np.zeros(len(labels), dtype=np.int64), np.zeros(len(labels), dtype=bool)
    position = np.searchsorted(sorted_labels, labels)
    inside = (position < len(sorted_labels)) & (sorted_labels[np.minimum(position, len(sorted_labels) - 1)] == labels)
    return position, inside
