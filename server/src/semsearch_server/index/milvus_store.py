"""Collections on Milvus: the semsearch process keeps no durable state, so replicas are stateless.

Layout: one Milvus collection ``<prefix><name>`` per semsearch collection, one row per passage:

- ``pk`` ``"<version>:<index>:<doc_id>"``, ``doc_id``, ``version`` (the write that produced the row),
  ``passage_index`` / ``start`` / ``end`` (the passage's character offsets in the text);
- ``text``: the whole document text on passage 0 only ("" on the others), so that BM25, which Milvus computes
  per row from this field (``Function`` BM25 -> ``sparse``, SPARSE_INVERTED_INDEX, metric BM25), scores
  documents rather than passages, and a long text is stored once;
- ``meta`` (JSON, on every row: filters apply to passages without a join), ``vector`` (the passage's
  normalised embedding; metric IP, so a distance is the cosine).

Passage rows are in the default partition; the bookkeeping rows (commit markers and document heads, below)
in the partition ``meta``, which searches leave out. A collection created before that partition existed
gets it on open; its older bookkeeping rows stay where they were (filtered out by ``passage_index``).

The settings and the model fingerprint are collection properties (``semsearch.settings``,
``semsearch.fingerprint``), written by the same call that creates the collection and checked on open.

Atomicity without transactions. Milvus writes rows, not transactions, so a write is made visible by a
*commit marker*: ``upsert`` (1) inserts every passage row of the batch under a fresh version V (new primary
keys: the rows of the previous versions are untouched), (2) points each document's head row (pk
``h:<doc_id>``, ``passage_index`` -2) at V and its passage count, and names in it the version readers used
until then (``meta.previous_version`` / ``previous_passages``: the newest committed version the old head
named), (3) inserts one marker row (pk ``<V>:marker``, ``passage_index`` -1, ``doc_id`` "") and (4) deletes,
by primary key, the rows of the versions the old head named (a doc_id expression would scan the
collection). Readers ignore rows whose version has no marker: search, among a document's rows, uses the
newest committed version; ``get`` reads the head and uses the newest committed of the two versions it names
(two primary-key lookups, no scan). Both agree at every step: a crash before (3) leaves the whole batch
invisible (heads still name the previous version, which readers use), a crash after (3) leaves all of it
visible, so the batch is atomic and no document is ever seen half-replaced (with some passages of the new
version and some of the old). ``delete`` finds the rows through the heads and deletes them by primary key,
then the heads: a crash in between leaves heads whose rows are gone, read as deleted. Opening a collection
repairs what crashes left (superseded versions; uncommitted rows older than ``STALE_SECONDS``, which no live
writer can still be committing; heads that lag behind their document's newest committed version, which a
crash could leave before heads were written ahead of the marker). Every request uses consistency level
Strong, so an acknowledged write is visible to the next read of any replica.

Scores: dense is IP of normalised vectors = cosine, as in the local store. Lexical is Milvus's BM25 (k1 1.2,
b 0.75, idf ``ln(1 + (N - n + 0.5) / (n + 0.5))``) returned as a negative distance and negated here, so it
is > 0 like the local store's. Its statistics (N, n, average length) are Milvus's, per segment and counting
every row of the passages' partition (passage rows with empty text too; and heads and markers written
before they had a partition of their own), so its values differ from a classic BM25 over documents;
rankings agree closely. Tokenisation is Milvus's ``standard`` analyzer (Unicode words, lowercased; no
stemming or stopwords). BM25 is searched without a filter expression and the metadata filter
applied to the hits (``_bm25``), so that, as in the local store, a filter decides which documents match and
never their scores. A lexical hit's passage is the one with the most query words, as in the local store.

Filters mean exactly what ``filtering.evaluate.matches`` says, as on the local store: Milvus is asked at most
for a superset of the matching rows (``milvus_filters``) and each candidate row's ``meta`` is tested here.
Count, Scroll and the writes by filter read the matching documents' passage-0 rows (``_matching``: O(rows the
superset expression keeps) per request, every document's when nothing translates). Delete by filter and
UpdateAttributes choose their documents under the write lock and write as ``delete`` and ``upsert`` do;
UpdateAttributes writes a new version of each document with its stored passages and vectors.

This module holds the store's state, its low-level queries, status, repair and close; the other jobs are
modules of their own: ``milvus_writes`` and ``milvus_reads`` (mixed into MilvusIndexStore),
``milvus_versions`` (committed versions, document heads), ``milvus_calls`` (the layout's names and limits,
expressions, Milvus's errors as the domain's), ``milvus_filters``; ``milvus_provider`` holds
MilvusStoreProvider.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from semsearch_server.domain import (
    CollectionSettings,
    CollectionState,
    CollectionStatus,
    Document,
    IndexKind,
    ModelFingerprint,
)
from semsearch_server.index.base import CollectionBroken, StoreFilter
from semsearch_server.index.disk_space import NO_CLAIM, SpaceClaim
from semsearch_server.index.milvus_calls import (
    HEAD,
    INSERT_CHUNK,
    MAX_TOPK,
    META,
    STALE_SECONDS,
    T,
    and_,
    call,
    in_,
    is_released,
)
from semsearch_server.index.milvus_filters import matcher, quote, superset_expression
from semsearch_server.index.milvus_reads import MilvusReads
from semsearch_server.index.milvus_versions import Head, Versions
from semsearch_server.index.milvus_writes import MilvusWrites

log = logging.getLogger(__name__)


class MilvusIndexStore(MilvusReads, MilvusWrites):
    """One semsearch collection in one Milvus collection (see the module docstring for the guarantees)."""

    def __init__(
        self,
        client: Any,
        collection: str,
        name: str,
        settings: CollectionSettings,
        fingerprint: ModelFingerprint,
    ) -> None:
        self._client = client
        self._collection = collection
        self.name = name
        self.settings = settings
        self.fingerprint = fingerprint
        self._versions = Versions()
        self._unflushed_rows = 0
        self._last_version = 0
        self._version_lock = threading.Lock()
        self._write_lock = threading.Lock()

    # -- low level ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``call``, loading the collection again first if Milvus released it (a Milvus that restarted
        serves its collections only once they are loaded again)."""
        try:
            return call(what, fn)
        except CollectionBroken as exc:
            if not is_released(exc.__cause__):
                raise
        log.warning("collection %r: Milvus had released it (restarted?); loading it again", self.name)
        call("load", lambda: self._client.load_collection(self._collection))
        return call(what, fn)

    def _query(self, expr: str, fields: list[str], limit: int | None = None) -> list[dict]:
        kwargs: dict[str, Any] = {"filter": expr, "output_fields": fields, "consistency_level": "Strong"}
        if limit is not None:
            kwargs["limit"] = max(1, min(limit, MAX_TOPK))
            return self._call("query", lambda: list(self._client.query(self._collection, **kwargs)))

        def read_all() -> list[dict]:  # an iterator: one query's window is capped at MAX_TOPK rows
            it = self._client.query_iterator(
                self._collection, batch_size=4096, filter=expr, output_fields=fields, consistency_level="Strong"
            )
            out: list[dict] = []
            try:
                while page := it.next():
                    out.extend(page)
            finally:
                it.close()
            return out

        return self._call("query", read_all)

    def _new_version(self) -> int:
        with self._version_lock:
            v = max(time.time_ns() // 1000, self._last_version + 1)
            self._last_version = v
            return v

    def _visible(self, rows: list[dict]) -> list[dict]:
        """Rows of committed versions, and of each document only its newest committed version."""
        if not rows:
            return rows
        committed = self._versions.committed(self, {int(r["version"]) for r in rows})
        rows = [r for r in rows if int(r["version"]) in committed]
        newest: dict[str, int] = {}
        for r in rows:
            newest[r["doc_id"]] = max(newest.get(r["doc_id"], 0), int(r["version"]))
        return [r for r in rows if int(r["version"]) == newest[r["doc_id"]]]

    def _matching(self, filter: StoreFilter) -> dict[str, int]:
        """{doc_id: version} of every document the filter matches, exactly (milvus_filters): the passage-0
        rows of the superset expression, each document's newest committed version, tested with ``matches``.

        With an expression, a document's newest committed row may be one the expression leaves out (its
        current attributes fail) while a superseded row still in Milvus (before the write deleted it, or after
        a crash) passes: so each found version is checked against the document's head, as ``get`` reads it."""
        expr = superset_expression(filter)
        keeps = matcher(filter)
        rows = self._visible(self._query(and_("passage_index == 0", expr), ["doc_id", "version", "meta"]))
        found = {r["doc_id"]: int(r["version"]) for r in rows if keeps(r["meta"])}
        if expr and found:
            current = self._current_versions(list(found))
            found = {d: v for d, v in found.items() if d in current and current[d][0] == v}
        return found

    def _search_params(self) -> dict:
        spec = self.settings.index
        if spec.kind is IndexKind.HNSW:
            return {"metric_type": "IP", "params": {"ef": max(spec.hnsw_ef_search, 1)}}
        if spec.kind is IndexKind.IVF:
            return {"metric_type": "IP", "params": {"nprobe": max(spec.ivf_nprobe, 1)}}
        return {"metric_type": "IP", "params": {}}

    def claim_space(self, docs: Sequence[Document]) -> SpaceClaim:
        """Nothing to claim: Milvus's disk is not this server's, and Milvus says when it is full."""
        return NO_CLAIM

    def status(self) -> CollectionStatus:
        return CollectionStatus(
            name=self.name,
            document_count=self.count(),
            index=self.settings.index,
            state=CollectionState.READY,
            passages=self.settings.passages,
            default_mode=self.settings.default_mode,
        )

    def repair(self) -> None:
        """Removes what interrupted writes left: superseded versions, and old uncommitted rows."""
        rows = self._query("passage_index >= 0", ["doc_id", "version"])
        versions = {int(r["version"]) for r in rows}
        committed = self._versions.committed(self, versions)
        cutoff = time.time_ns() // 1000 - STALE_SECONDS * 1_000_000
        stale = sorted(v for v in versions - committed if v < cutoff)
        newest: dict[str, int] = {}
        for r in rows:
            if int(r["version"]) in committed:
                newest[r["doc_id"]] = max(newest.get(r["doc_id"], 0), int(r["version"]))
        self._repair_heads(rows, newest)
        pairs = {(r["doc_id"], int(r["version"])) for r in rows if r["doc_id"] in newest}
        old = sorted((d, v) for d, v in pairs if v < newest[d])
        if stale:
            log.warning("collection %r: removing rows of %d uncommitted writes", self.name, len(stale))
            self._call("delete", lambda: self._client.delete(self._collection, filter=in_("version", stale)))
        for d, v in old:
            expr = and_(f"doc_id == {quote(d)}", f"version == {v}")
            self._call("delete", lambda expr=expr: self._client.delete(self._collection, filter=expr))

    def _repair_heads(self, rows: list[dict], newest: Mapping[str, int]) -> None:
        """Points heads that lag behind the newest committed version at it (before the previous-version
        fields, a head was written after the commit marker, so a crash in between left it behind; a head
        is also created for committed rows that have none). Heads are only ever moved forward: a head
        naming a newer version than the rows read here belongs to a write still under way elsewhere."""
        heads = {
            r["doc_id"]: Head.of(r)
            for r in self._query(f"passage_index == {HEAD}", ["doc_id", "version", "end", "meta"])
        }
        passages: dict[tuple[str, int], int] = defaultdict(int)
        for r in rows:
            passages[(r["doc_id"], int(r["version"]))] += 1
        fixed = []
        for doc_id, version in newest.items():
            head = heads.get(doc_id)
            if head is not None and max(v for v, _ in head.versions) >= version:
                continue
            fixed.append(
                {
                    "pk": f"h:{doc_id}",
                    "doc_id": doc_id,
                    "version": version,
                    "passage_index": HEAD,
                    "start": 0,
                    "end": passages[(doc_id, version)],
                    "text": "",
                    "meta": {},
                    "vector": [0.0] * self.fingerprint.dimension,
                }
            )
        if fixed:
            log.warning(
                "collection %r: %d document heads behind their committed version; repaired", self.name, len(fixed)
            )
        for i in range(0, len(fixed), INSERT_CHUNK):
            chunk = fixed[i : i + INSERT_CHUNK]
            self._call(
                "upsert (heads)", lambda chunk=chunk: self._client.upsert(self._collection, chunk, partition_name=META)
            )

    def snapshot(self) -> None:
        self._call("flush", lambda: self._client.flush(self._collection))

    def close(self, snapshot: bool = True) -> None:
        """Nothing to persist: Milvus holds the collection; the client is the provider's."""
