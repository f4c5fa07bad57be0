"""The Milvus store's reads: dense (ANN or exact) and BM25 search, scores, explain, get, count and scroll."""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from semsearch_server.domain import Document
from semsearch_server.domain import Passage as PassageT
from semsearch_server.errors import NotFound
from semsearch_server.filtering import Filter, as_filter, attributes_to_json
from semsearch_server.index.base import DenseMatch, LexicalMatch, LexicalTermScore, ScoreTable, StoreFilter
from semsearch_server.index.milvus_calls import MAX_TOPK, PASSAGES, WORD, row_document
from semsearch_server.index.milvus_filters import matcher

# The Milvus store logs as one logger, whichever of its modules a line comes from.
log = logging.getLogger("semsearch_server.index.milvus_store")


# A filtered dense search scores at most this many matching documents exactly (their vectors read by
# primary key), and searches Milvus's index for more.
EXACT_DOCUMENTS = 2048


def _best_lexical_passage(text: str, spans: Sequence[PassageT], query: str) -> PassageT:
    """The passage with the most occurrences of query terms (the first of equals), as the local store picks it;
    terms are the analyzer's (words, lower-cased)."""
    if len(spans) <= 1:
        return spans[0] if spans else PassageT(0, 0, len(text))
    terms = {w.lower() for w in WORD.findall(query)}
    positions = [m.start() for m in WORD.finditer(text) if m.group().lower() in terms]
    counts = [sum(1 for at in positions if p.start <= at < p.end) for p in spans]
    return spans[counts.index(max(counts))]


class MilvusReads:
    """MilvusIndexStore's reads (a mixin: the state is the store's)."""

    def get(self, ids: Sequence[str]) -> list[Document]:
        """Documents by id through their heads: two primary-key lookups (the heads, then the passage-0 rows of
        the versions they make current), where a ``doc_id`` expression is a scan of the collection in Milvus
        Lite (100+ ms at 30k documents, measured; a scalar index on doc_id did not change that)."""
        if not ids:
            return []
        keys = [f"{v}:0:{d}" for d, (v, _) in self._current_versions(ids).items()]
        found = {r["doc_id"]: row_document(r) for r in self._rows_by_key(keys, ["doc_id", "text", "meta"])}
        return [found[i] for i in ids if i in found]

    def _passage_rows(self, ids: Sequence[str], fields: Sequence[str] = ("vector",)) -> list[dict]:
        """The passage rows of these documents' current versions, as `get` reads them: through the heads,
        then by primary key (``<version>:<index>:<doc_id>`` for each of the version's passages), where a
        ``doc_id`` expression is a scan of the collection in Milvus Lite."""
        if not ids:
            return []
        current = self._current_versions(ids)
        keys = [f"{version}:{i}:{doc_id}" for doc_id, (version, n) in current.items() for i in range(n)]
        return self._rows_by_key(keys, ["doc_id", "version", "passage_index", "start", "end", *fields])

    def get_passages(self, ids: Sequence[str]) -> dict[str, tuple[tuple[PassageT, ...], np.ndarray]]:
        per: dict[str, list[dict]] = defaultdict(list)
        for r in self._passage_rows(ids):
            per[r["doc_id"]].append(r)
        out = {}
        for doc_id, rows in per.items():
            rows.sort(key=lambda r: int(r["passage_index"]))
            passages = tuple(PassageT(int(r["passage_index"]), int(r["start"]), int(r["end"])) for r in rows)
            out[doc_id] = (passages, np.asarray([r["vector"] for r in rows], dtype=np.float32))
        return out

    def search_dense(
        self, queries: np.ndarray, top_k: int, filter: StoreFilter, documents: bool = False
    ) -> list[list[DenseMatch]]:
        versions: dict[str, int] = {}
        found: dict[str, Document] | None = {} if documents else None
        results = self._search_dense(queries, top_k, filter, versions, found)
        return self._with_documents(results, versions, found) if documents else results

    def _with_documents(
        self, results: list[list], versions: Mapping[str, int], known: Mapping[str, Document] | None = None
    ) -> list[list]:
        """The matches with their documents (a match whose document went since is dropped).

        ``known``: documents the search hits already carried (a hit on passage 0 of the version the score
        came from holds its text and metadata), so a collection of one-passage documents is searched in one
        Milvus request. For the others, the hits' rows named the committed version each document was found
        in, so its text and metadata are on one row whose primary key is known (``<version>:0:<doc_id>``): a
        key lookup, where reading by ``doc_id`` is a scan of the collection in Milvus Lite (seconds per
        Search at 20k rows, measured), and the document is the very version the score came from.
        """
        ids = list(dict.fromkeys(m.doc_id for row in results for m in row))
        docs: dict[str, Document] = {i: known[i] for i in ids if known and i in known}
        keys = [f"{versions[i]}:0:{i}" for i in ids if i not in docs]
        docs.update((r["doc_id"], row_document(r)) for r in self._rows_by_key(keys, ["doc_id", "text", "meta"]))
        # Replaced or deleted since the search: read as Get reads (the newest version, or gone).
        missing = [i for i in ids if i not in docs]
        if missing:
            docs.update((d.id, d) for d in self.get(missing))
        return [[dataclasses.replace(m, document=docs[m.doc_id]) for m in row if m.doc_id in docs] for row in results]

    def _search_dense(
        self,
        queries: np.ndarray,
        top_k: int,
        filter: StoreFilter,
        versions: dict[str, int] | None = None,
        documents: dict[str, Document] | None = None,
    ) -> list[list[DenseMatch]]:
        """``documents``, when given, receives the document of each match whose hits included passage 0 of
        the matched version (text and metadata are output fields of the search: measured to cost nothing
        with short texts, where a second request for them cost a round trip).

        Under a filter the matching documents are found exactly first (``_matching``). Few of them: their
        passage vectors are read by primary key and scored here, exactly. Many: Milvus is searched without a
        filter expression (its HNSW with one comes back short at low selectivity, measured) and the hits of
        the matching documents' versions kept, widening until top_k are found; when even the widest search
        has fewer, the matching documents are scored exactly. Either way never fewer than
        min(top_k, matching documents)."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.fingerprint.dimension)
        if as_filter(filter) is None:
            return [self._ann(q, top_k, None, versions, documents) or [] for q in queries]
        wanted = self._matching(filter)
        if len(wanted) <= EXACT_DOCUMENTS:
            return self._exact_dense(queries, top_k, wanted, versions)
        results = []
        for q in queries:
            found = self._ann(q, top_k, wanted, versions, documents)
            results.append(found if found is not None else self._exact_dense(q[None], top_k, wanted, versions)[0])
        return results

    def _ann(
        self,
        q: np.ndarray,
        top_k: int,
        wanted: Mapping[str, int] | None,
        versions: dict[str, int] | None,
        documents: dict[str, Document] | None,
    ) -> list[DenseMatch] | None:
        """The top_k documents by a Milvus search (among the ``wanted`` versions, if given); None when the
        widest search found fewer than min(top_k, len(wanted)) of them."""
        fields = ["doc_id", "version", "passage_index", "start", "end"]
        if documents is not None:
            fields += ["text", "meta"]
        # Over-fetch passages and keep each document's best; widen while passages (or documents the filter
        # leaves out) crowd out the documents wanted.
        limit = min(MAX_TOPK, max(top_k * 3, top_k + 16))
        while True:
            hits = self._call(
                "search",
                lambda limit=limit: self._client.search(
                    self._collection,
                    data=[q.tolist()],
                    anns_field="vector",
                    limit=limit,
                    filter="passage_index >= 0",
                    output_fields=fields,
                    search_params=self._search_params(),
                    consistency_level="Strong",
                    partition_names=[PASSAGES],
                )[0],
            )
            rows = [{**h["entity"], "distance": h["distance"]} for h in hits]
            visible = self._visible(rows)
            if wanted is not None:
                visible = [r for r in visible if wanted.get(r["doc_id"]) == int(r["version"])]
            best: dict[str, DenseMatch] = {}
            for r in visible:
                if r["doc_id"] not in best:  # hits come best first
                    best[r["doc_id"]] = DenseMatch(
                        r["doc_id"],
                        float(r["distance"]),
                        PassageT(int(r["passage_index"]), int(r["start"]), int(r["end"])),
                    )
            if len(best) >= top_k or len(hits) < limit or limit >= MAX_TOPK:
                break
            limit = min(MAX_TOPK, limit * 4)
        if wanted is not None and len(best) < min(top_k, len(wanted)):
            return None
        if versions is not None:
            versions.update((r["doc_id"], int(r["version"])) for r in visible if r["doc_id"] in best)
        if documents is not None:
            # _visible kept one version per document: its passage-0 row, if hit, is the document
            for r in visible:
                if int(r["passage_index"]) == 0 and r["doc_id"] in best:
                    documents[r["doc_id"]] = row_document(r)
        return sorted(best.values(), key=lambda m: -m.score)[:top_k]

    def _exact_dense(
        self, queries: np.ndarray, top_k: int, wanted: Mapping[str, int], versions: dict[str, int] | None
    ) -> list[list[DenseMatch]]:
        """The top_k of the ``wanted`` document versions by best-passage cosine, computed here from their
        stored vectors (read by primary key through the heads; a document replaced since is left out)."""
        rows = [r for r in self._passage_rows(list(wanted)) if wanted.get(r["doc_id"]) == int(r["version"])]
        if not rows:
            return [[] for _ in queries]
        if versions is not None:
            versions.update((r["doc_id"], int(r["version"])) for r in rows)
        vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
        scores = vectors @ np.asarray(queries, dtype=np.float32).T  # (rows, queries)
        results = []
        for column in scores.T:
            best: dict[str, DenseMatch] = {}
            for i in np.argsort(-column, kind="stable").tolist():
                r = rows[i]
                if r["doc_id"] not in best:
                    passage = PassageT(int(r["passage_index"]), int(r["start"]), int(r["end"]))
                    best[r["doc_id"]] = DenseMatch(r["doc_id"], float(column[i]), passage)
            results.append(list(best.values())[:top_k])
        return results

    def _bm25(
        self,
        query: str,
        limit: int,
        filter: StoreFilter = None,
        versions: dict[str, int] | None = None,
    ) -> list[LexicalMatch]:
        """The top ``limit`` documents by BM25 among those the filter keeps, best first.

        Milvus is searched without a filter expression and the metadata filter is applied here: Milvus Lite
        computes BM25 statistics over the rows an expression keeps while they sit in a growing segment
        (measured), so a filtered search would score a document differently from an unfiltered one. This way a
        document's score is the collection's whatever the filter, as in the local store. Rows without text
        (passages after the first, markers, heads) hold no term, so no expression is needed to skip them.
        A filter that keeps few of the matching documents widens the search up to MAX_TOPK hits.
        """
        if not WORD.search(query):
            return []
        want = max(1, min(limit, MAX_TOPK))
        keeps = matcher(filter) if as_filter(filter) is not None else None
        fetch = min(MAX_TOPK, max(want * 4, want + 64)) if keeps else want
        fields = ["doc_id", "version"] + (["meta"] if keeps else [])
        while True:
            hits = self._call(
                "lexical search",
                lambda fetch=fetch: self._client.search(
                    self._collection,
                    data=[query],
                    anns_field="sparse",
                    limit=fetch,
                    output_fields=fields,
                    search_params={"metric_type": "BM25"},
                    consistency_level="Strong",
                    partition_names=[PASSAGES],
                )[0],
            )
            rows = [{**h["entity"], "distance": h["distance"]} for h in hits]
            # Milvus returns BM25 negated (smaller is better); the store's contract is BM25 > 0.
            kept = [r for r in self._visible(rows) if r["distance"] < 0 and (keeps is None or keeps(r["meta"]))]
            if len(kept) >= want or len(hits) < fetch or fetch >= MAX_TOPK:
                if versions is not None:
                    versions.update((r["doc_id"], int(r["version"])) for r in kept[:want])
                return [LexicalMatch(r["doc_id"], -float(r["distance"])) for r in kept[:want]]
            fetch = min(MAX_TOPK, fetch * 4)

    def search_lexical(
        self, queries: Sequence[str], top_k: int, filter: StoreFilter, documents: bool = False
    ) -> list[list[LexicalMatch]]:
        versions: dict[str, int] = {}
        results = [self._bm25(q, top_k, filter, versions) for q in queries]
        if not documents:
            return results
        results = self._with_documents(results, versions)
        spans = self._spans_of(list(dict.fromkeys(m.doc_id for row in results for m in row)))
        return [
            [
                dataclasses.replace(m, passage=_best_lexical_passage(m.document.text, spans.get(m.doc_id, ()), q))
                for m in row
            ]
            for q, row in zip(queries, results, strict=True)
        ]

    def _spans_of(self, ids: list[str]) -> dict[str, list[PassageT]]:
        """Each document's passages (offsets only), in order."""
        if not ids:
            return {}
        rows = self._passage_rows(ids, fields=())
        out: dict[str, list[PassageT]] = defaultdict(list)
        for r in sorted(rows, key=lambda r: int(r["passage_index"])):
            out[r["doc_id"]].append(PassageT(int(r["passage_index"]), int(r["start"]), int(r["end"])))
        return out

    def dense_scores(self, query: np.ndarray, ids: Sequence[str]) -> dict[str, DenseMatch]:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        out: dict[str, DenseMatch] = {}
        for r in self._passage_rows(ids):
            score = float(np.dot(np.asarray(r["vector"], dtype=np.float32), q))
            cur = out.get(r["doc_id"])
            if cur is None or score > cur.score:
                out[r["doc_id"]] = DenseMatch(
                    r["doc_id"], score, PassageT(int(r["passage_index"]), int(r["start"]), int(r["end"]))
                )
        return out

    def _bm25_unfiltered(self, query: str) -> dict[str, float]:
        """Every document's BM25 for the query (up to MAX_TOPK documents), from the collection's ranking.

        Scores for a few ids are taken from that ranking, never from a search restricted to those ids by an
        expression (see ``_bm25``): then they equal what ``search_lexical`` returns, with or without a filter.
        """
        return {m.doc_id: m.score for m in self._bm25(query, MAX_TOPK)}

    def lexical_scores(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        existing = [d.id for d in self.get(ids)]
        if not existing:
            return {}
        scores = self._bm25_unfiltered(query)
        return {i: scores.get(i, 0.0) for i in existing}

    def explain_lexical(self, query: str, doc_id: str) -> list[LexicalTermScore]:
        """Per query word, its BM25 for the document (the word searched alone, unfiltered).

        BM25 is a sum over query tokens, and Milvus's is too (measured: a multi-word score equals the sum of
        its words' scores to float precision), so the contributions add up to ``lexical_scores``.
        ``document_frequency`` counts the documents the word alone matches.
        """
        found = self.get([doc_id])
        if not found:
            raise NotFound(f"document {doc_id!r} not found in collection {self.name!r}")
        doc_tokens = WORD.findall(found[0].text.lower())
        out = []
        for w in WORD.findall(query):
            term = w.lower()
            scores = self._bm25_unfiltered(term)
            out.append(
                LexicalTermScore(
                    term=term,
                    query_text=w,
                    contribution=scores.get(doc_id, 0.0),
                    term_frequency=doc_tokens.count(term),
                    document_frequency=len(scores),
                )
            )
        return out

    def score_all(
        self, query: str, vector: np.ndarray | None, filter: StoreFilter, dense: bool, lexical: bool
    ) -> ScoreTable:
        want_vectors = dense and vector is not None
        if as_filter(filter) is None:
            fields = ["doc_id", "version"] + (["vector"] if want_vectors else [])
            rows = self._visible(self._query("passage_index >= 0", fields))
            ids = sorted({r["doc_id"] for r in rows})
        else:
            # the matching documents exactly, then their passages' vectors by primary key
            wanted = self._matching(filter)
            ids = sorted(wanted)
            rows = []
            if want_vectors:
                rows = [r for r in self._passage_rows(ids) if wanted.get(r["doc_id"]) == int(r["version"])]
        index = {d: i for i, d in enumerate(ids)}
        dense_arr = None
        if want_vectors:
            dense_arr = np.full(len(ids), -np.inf, dtype=np.float32)
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
            for r in rows:
                s = float(np.dot(np.asarray(r["vector"], dtype=np.float32), q))
                i = index[r["doc_id"]]
                dense_arr[i] = max(dense_arr[i], s)
        lex_arr = None
        if lexical:
            lex_arr = np.zeros(len(ids), dtype=np.float32)
            # the same scores as search_lexical's (a document's BM25 does not depend on the filter)
            for m in self._bm25(query, MAX_TOPK):
                if m.doc_id in index:
                    lex_arr[index[m.doc_id]] = m.score
        return ScoreTable(ids, dense_arr, lex_arr)

    def count(self, where: Filter | None = None) -> int:
        """Exact: the filter is evaluated here on every candidate row's attributes (``_matching``)."""
        if where is None:
            rows = self._query("passage_index == 0", ["doc_id", "version"])
            return len({r["doc_id"] for r in self._visible(rows)})
        return len(self._matching(where))

    def scroll(self, where: Filter | None, after: str | None, limit: int) -> list[Document]:
        """The matching documents' ids in bytewise order after ``after``, then the page's documents by
        primary key (the versions that matched)."""
        wanted = self._matching(where)
        start = None if after is None else after.encode()
        ids = sorted((i for i in wanted if start is None or i.encode() > start), key=str.encode)[: max(limit, 0)]
        rows = self._rows_by_key([f"{wanted[i]}:0:{i}" for i in ids], ["doc_id", "text", "meta"])
        found = {r["doc_id"]: row_document(r) for r in rows}
        # A document replaced since it was found: read as Get reads (the newest version), if it still matches.
        missing = [i for i in ids if i not in found]
        if missing:
            keeps = matcher(where)
            found.update((d.id, d) for d in self.get(missing) if keeps(attributes_to_json(d.attributes)))
        return [found[i] for i in ids if i in found]
