"""A local collection's reads: dense and lexical search, scores, explain, get, count and scroll."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from semsearch_server.domain import Document, Passage
from semsearch_server.filtering import Filter, as_filter, attributes_from_json, decode_attributes, matches
from semsearch_server.filtering.model import fields_of
from semsearch_server.index.attribute_index import AttributeIndex
from semsearch_server.index.base import DenseMatch, LexicalMatch, LexicalTermScore, ScoreTable
from semsearch_server.index.filter_cache import FilterMatch, filter_key
from semsearch_server.index.local_database import SQL_CHUNK
from semsearch_server.index.vector_index import AllowedLabels

# The local store logs as one logger, whichever of its modules a line comes from.
log = logging.getLogger("semsearch_server.index.faiss_store")


# Scroll under a filter matching at most this many documents sorts their ids in memory; past it, it walks
# the id index and skips what does not match (few rows skipped per page when most match).
_SCROLL_SORT_MAX = 50_000


class StoreReads:
    """FaissIndexStore's reads (a mixin: the state is the store's)."""

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
            allowed, unevaluated, share = self._dense_plan(filter)
            best = []
            for q in queries:
                row = None if unevaluated is None else self._candidate_passages(q, top_k, unevaluated, share)
                if row is None:
                    if unevaluated is not None and allowed is None:  # the estimate misled: evaluate fully
                        allowed = self._passages_matching(filter)
                    row = self._best_passages(q, top_k, allowed)
                best.append(row)
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
        want = self._passages_wanted(top_k)
        while True:
            k = max(1, min(want, total))
            scores, labels = self._index.search(query[None, :], k, allowed)
            row = _best_per_document(labels[0], scores[0], self._passages.documents(labels[0]), top_k)
            if len(row) == top_k or k >= total or (labels[0] < 0).any():
                return row
            want *= 4

    def _passages_wanted(self, top_k: int) -> int:
        """Enough passages for top_k documents at the collection's passages per document (and a margin), so
        that one scan usually suffices: a second search costs a second full scan of a flat index."""
        per_document = self._index.ntotal / max(len(self._lexical), 1)
        return top_k if per_document <= 1 else int(top_k * per_document * 1.5) + 8

    def _dense_plan(
        self, filter: Filter | Mapping[str, str] | None
    ) -> tuple[AllowedLabels | None, Filter | None, float]:
        """How a dense search applies the filter, chosen by its estimated share as a query planner does
        (Qdrant's cardinality estimate against its full_scan_threshold): (allowed passages, None, 1) from the
        cache or a full evaluation, or, for a filter not cached whose estimated share the vector index
        post-filters (VectorIndex.post_filters), (None, the filter, its share): the unfiltered search is
        over-fetched and only its candidates' attributes are checked (_candidate_passages), no column
        scanned; asked again in the same state, it is evaluated and cached (the cached answer's search costs
        less than the check). (None, None, 1) without a filter."""
        tree = as_filter(filter)
        if tree is None:
            return None, None, 1.0
        attributes = self._attribute_index()
        key, state = filter_key(tree), (attributes.version, self._passages.version)
        match = self._filter_cache.get(key, state)
        if match is None:
            share = attributes.estimate_share(tree)
            post_filtered = share is not None and share > 0 and self._index.post_filters(share)
            if post_filtered and not self._filter_cache.seen_before(key, state):  # asked again: cache it
                return None, tree, share
            match = self._evaluate_into_cache(tree, attributes, key, state)
        return self._passages_of(match), None, 1.0

    def _candidate_passages(
        self, query: np.ndarray, top_k: int, tree: Filter, share: float
    ) -> list[tuple[int, float, int]] | None:
        """_best_passages under a filter checked on the candidates only: the unfiltered search for 2 / share
        times the passages top_k documents need, the filter tested on those documents' attributes (the
        reference evaluator, on their stored metadata), the best top_k that pass. None when fewer pass and
        the search did not see every passage: the caller then evaluates the filter and answers as before,
        so the answer is never short."""
        total = self._index.ntotal
        k = max(1, min(total, math.ceil(2 * self._passages_wanted(top_k) / share)))
        scores, labels = self._index.search(query[None, :], k)
        doc_labels = self._passages.documents(labels[0])
        passing = self._documents_passing(tree, sorted({d for d in doc_labels.tolist() if d >= 0}))
        row = _best_per_document(labels[0], scores[0], doc_labels, top_k, passing)
        if len(row) == top_k:
            return row
        return row if k >= total and not (labels[0] < 0).any() else None

    def _documents_passing(self, tree: Filter, doc_labels: list[int]) -> set[int]:
        """The documents among these that the filter matches, each checked on its own stored metadata."""
        passing: set[int] = set()
        keys = fields_of(tree)  # the only values the check reads
        db = self._reader()
        for start in range(0, len(doc_labels), SQL_CHUNK):
            chunk = doc_labels[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT label, metadata FROM documents WHERE label IN ({marks})", chunk).fetchall()
            passing.update(label for label, metadata in rows if matches(tree, decode_attributes(metadata, keys)))
        return passing

    def _passages_matching(self, filter: Filter | Mapping[str, str] | None) -> AllowedLabels | None:
        """The passage labels of the documents the filter matches (None: no filter, every passage).

        The vector index then chooses by their number: exact scoring of just these vectors when they are
        few, FAISS's own search with them as a selector when they are many (VectorIndex.search)."""
        match = self._filter_match(filter)
        return None if match is None else self._passages_of(match)

    def _passages_of(self, match: FilterMatch) -> AllowedLabels:
        if match.passages is None:  # computed in the state the entry was checked against: the lock is held
            match.passages = AllowedLabels(self._passages.of_documents(match.documents))
        return match.passages

    def _documents_matching(self, filter: Filter | Mapping[str, str] | None) -> np.ndarray | None:
        """Sorted labels (read-only) of the documents the filter matches (None: no filter). Call under the
        read or write lock."""
        match = self._filter_match(filter)
        return None if match is None else match.documents

    def _filter_match(self, filter: Filter | Mapping[str, str] | None) -> FilterMatch | None:
        """The filter's answer in the collection's current state, from the cache when it was asked before in
        this state (index/filter_cache.py). Call under the read or write lock."""
        tree = as_filter(filter)
        if tree is None:
            return None
        attributes = self._attribute_index()
        key, state = filter_key(tree), (attributes.version, self._passages.version)
        match = self._filter_cache.get(key, state)
        return self._evaluate_into_cache(tree, attributes, key, state) if match is None else match

    def _evaluate_into_cache(
        self, tree: Filter, attributes: AttributeIndex, key: Hashable, state: tuple
    ) -> FilterMatch:
        """The filter evaluated over every document, cached for this state."""
        documents = attributes.evaluate(tree)
        documents.flags.writeable = False
        match = FilterMatch(documents)
        self._filter_cache.put(key, state, match)
        return match

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


def _best_per_document(
    labels: np.ndarray, scores: np.ndarray, doc_labels: np.ndarray, top_k: int, keep: set[int] | None = None
) -> list[tuple[int, float, int]]:
    """[(passage label, score, document label)] of each document's first passage in this ranked row (its best),
    best first, up to top_k documents; with keep, only the documents in it."""
    seen: set[int] = set()
    row: list[tuple[int, float, int]] = []
    for label, doc_label, score in zip(labels.tolist(), doc_labels.tolist(), scores.tolist(), strict=True):
        if label < 0 or doc_label < 0 or doc_label in seen or (keep is not None and doc_label not in keep):
            continue
        seen.add(doc_label)
        row.append((label, float(score), doc_label))
        if len(row) == top_k:
            break
    return row


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
