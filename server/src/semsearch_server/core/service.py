"""SearchService: validation, embedding and collections wired together. Imports no grpc."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from semsearch_server import __version__
from semsearch_server.config import Limits
from semsearch_server.core.cursors import decode_cursor, encode_cursor
from semsearch_server.core.ranking import HYBRID_CANDIDATES, Candidate, FusionContext, fuse
from semsearch_server.core.registry import CollectionRegistry
from semsearch_server.core.validation import DEFAULT_TOP_K, Validator
from semsearch_server.deadlines import GIVE_UP_POLL_SECONDS, give_up_if
from semsearch_server.domain import (
    CollectionSettings,
    CollectionStatus,
    Document,
    Fusion,
    Hit,
    HybridParams,
    ModelFingerprint,
    Passage,
    PassageConfig,
    SearchMode,
    SnapshotInfo,
)
from semsearch_server.embedding.base import Embedder
from semsearch_server.embedding.passages import PassageSplitter, ResolvedPassages
from semsearch_server.errors import (
    DeadlineExceeded,
    DiskFull,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SemsearchError,
)
from semsearch_server.filtering import All, Filter, combine, conditions_of_string_map, excluded_by, validate_filter
from semsearch_server.index.base import EmbeddedDocument, IndexStore, LexicalTermScore
from semsearch_server.index.disk_space import SpaceClaim
from semsearch_server.index.local_snapshots import check_snapshot_name

# UpsertStream embeds consecutive messages together up to this many texts (see upsert_stream).
STREAM_EMBED_GROUP = 1024
# ... or up to this many bytes of ids, texts and metadata, whichever comes first (the transport passes
# the server's stream_buffer_bytes).
STREAM_GROUP_BYTES = 8 * 1024 * 1024
_END_OF_STREAM = object()
# Scores recomputed for Explain and scores held by the index may differ by float rounding (or by the
# engine: a stored vector may come from the batch engine); past this the difference is worth a note.
_SCORE_NOTE_TOLERANCE = 1e-4


def _always() -> bool:
    return True


class Explainer(Protocol):
    def explain(
        self, query: str, doc: str, granularity: str, include_attention: bool, attention_layer: int, attention_head: int
    ) -> Any: ...


@dataclass(frozen=True)
class RankingExplanation:
    """How a stored document ranks for a query: Explain's answer to "why (not) this document?"."""

    mode: SearchMode
    score: float  # what Search ranks by in this mode
    dense_score: float
    lexical_score: float
    lexical_terms: list[LexicalTermScore]
    passage: Passage | None
    rank: int  # 1-based among the documents the filter keeps; 0 when not among them
    kth_score: float  # the top_k-th hit's score (0 when fewer hits)
    top_k: int
    fusion: FusionContext | None = None
    dense_rank: int = 0
    lexical_rank: int = 0
    # Set when the request's filter excludes the document (rank is then 0): the condition and its value.
    excluded_by: str = ""


@dataclass(frozen=True)
class ExplainOutcome:
    explanation: Any  # semsearch_server.embedding.explain.Explanation, of the best passage
    index_score: float
    notes: list[str] = field(default_factory=list)
    ranking: RankingExplanation | None = None


@dataclass(frozen=True)
class ServiceInfo:
    model_id: str
    fingerprint: ModelFingerprint
    backend: str
    version: str
    limits: Limits
    collections: list[CollectionStatus]


class SearchService:
    """The service's use cases. Every public method validates all of its input before changing anything.

    Args:
        embedder: turns texts into normalised vectors.
        registry: the collections (already loaded).
        limits: input limits.
        explainer: computes Explain's decomposition; None disables Explain.
        splitter: splits long texts into passages; None stores one vector per document whatever the
            collection's passage settings (embedders without a tokenizer, in unit tests).
        hybrid_defaults: the fusion and its parameters when a HYBRID request leaves them unset.
    """

    def __init__(
        self,
        embedder: Embedder,
        registry: CollectionRegistry,
        limits: Limits,
        explainer: Explainer | None = None,
        splitter: PassageSplitter | None = None,
        hybrid_defaults: HybridParams | None = None,
    ) -> None:
        self.embedder = embedder
        self.registry = registry
        self.limits = limits
        self.validate = Validator(limits)
        self.splitter = splitter
        self.hybrid_defaults = hybrid_defaults or HybridParams()
        self._explainer = explainer
        self._explain_lock = threading.Lock()

    # -- writes --------------------------------------------------------------------------------------
    def upsert(self, collection: str, documents: Sequence[Document], still_wanted: Callable[[], bool] = _always) -> int:
        """Embeds and stores documents (replacing by id), all or nothing; returns the count.

        Args:
            still_wanted: asked after embedding, before committing; False (the caller's deadline
                passed or it cancelled) abandons the write, so a call reported failed changed nothing.

        Raises:
            DiskFull: at once if the collection's disk has not room for the write (claimed before it is
                embedded: ``index/disk_space.py``), or as soon as the disk fills while it waits for its vectors.
        """
        store = self._store(collection)
        self.validate.documents(documents)
        # Room on the disk first: a full disk is said at once, not after the model's queue and the embedding
        # (seconds under load), and a disk that fills meanwhile ends the wait for the vectors.
        with store.claim_space(documents) as room:
            passages = self._split(store, documents)
            vectors = _encode_while_room(self.embedder, _passage_texts(documents, passages), [room])
            if not still_wanted():
                raise DeadlineExceeded("the deadline passed while embedding; nothing was stored")
            return store.upsert(_embedded(documents, passages, vectors), still_wanted)

    def _split(self, store: IndexStore, documents: Sequence[Document]) -> list[tuple[Passage, ...]]:
        return self._split_as(store.settings.passages, documents)

    def _split_as(self, config: PassageConfig, documents: Sequence[Document]) -> list[tuple[Passage, ...]]:
        return split_documents(self.splitter, config, documents)

    def embed_documents(self, documents: Sequence[Document], settings: CollectionSettings) -> list[EmbeddedDocument]:
        """Splits and embeds documents as a collection with these settings stores them (Reindex)."""
        return embed_documents(self.embedder, self.splitter, settings.passages, documents)

    def upsert_stream(
        self,
        batches: Iterable[tuple[str, Sequence[Document]] | None],
        still_wanted: Callable[[], bool] = _always,
        group_bytes: int = STREAM_GROUP_BYTES,
    ) -> int:
        """Applies a stream of (collection, documents) messages in order, each all-or-nothing.

        Consecutive messages are embedded together, up to `STREAM_EMBED_GROUP` texts or `group_bytes`
        of ids, texts and metadata (UTF-8): sorting a larger group by length wastes far less padding
        than one message at a time (on the default model and backend, groups of 1,024 embed 1.6x
        faster than messages of 64), and consecutive messages of a group that go to the same collection
        are stored in one transaction (an id sent twice: the later message wins, as if applied in
        order). A crash therefore leaves a prefix of whole messages stored; a bad message is reported
        after every message before it has been stored.

        A None item says the sender has paused: every message gathered so far is embedded and stored
        before the next item is asked for. The transport yields one after 0.1 s without a message, so
        a slow or stalled stream has every message it sent stored soon after it goes quiet, and holds
        no documents that are not stored (a stream that keeps sending never pauses: its groups stay
        full). When the source raises a SemsearchError (an idle stream closed by the transport), every
        message it gave is stored first and the error says how many documents were; any other
        exception (the client cancelled) stores nothing more: the stream keeps exactly what was stored
        before it.

        Each message claims room on its collection's disk as it arrives (as an Upsert does): on a full disk the
        stream is refused at that message, after the messages before it are stored, without waiting for the
        model; a disk that fills while a group is embedded refuses that group as soon as it fills.

        A group is embedded in a helper thread while this one reads and validates the next group's
        messages and stores the group before, so the model is not left idle waiting for either
        (the service ingested at 0.94x the engine's in-process rate without this).
        """
        stored = 0
        group: list[tuple[IndexStore, Sequence[Document]]] = []
        group_claims: list[SpaceClaim] = []  # each message's room on its collection's disk (see upsert)
        group_texts = 0
        group_size = 0
        # Groups handed to the helper, oldest first: (messages, their passages, future of their vectors, their
        # room on the disk).
        embedding: deque[tuple[list[tuple[IndexStore, Sequence[Document]]], list, Future, list[SpaceClaim]]] = deque()

        def store_oldest() -> None:
            messages, passages, vectors_future, claims = embedding.popleft()
            try:
                store_group(messages, passages, vectors_future, claims)
            finally:
                _release(claims)

        def store_group(
            messages: list[tuple[IndexStore, Sequence[Document]]],
            passages: list,
            vectors_future: Future,
            claims: list[SpaceClaim],
        ) -> None:
            nonlocal stored
            try:
                vectors = _result_while_room(vectors_future, claims)
            except DiskFull as exc:
                raise DiskFull(f"after {stored} documents of the stream were stored: {exc}") from None
            if not still_wanted():
                raise DeadlineExceeded(f"the deadline passed while embedding; {stored} documents were stored")
            embedded = _embedded([d for _, docs in messages for d in docs], passages, vectors)
            offset = 0
            for store, runs in _runs_by_store(messages):
                count = sum(len(m) for m in runs)
                items = embedded[offset : offset + count]
                offset += count
                latest = _last_of_each_id([item.document for item in items])
                try:
                    store.upsert([items[i] for i in latest], still_wanted)
                except SemsearchError as exc:  # a full disk, say: the client learns which prefix is stored
                    raise type(exc)(f"after {stored} documents of the stream were stored: {exc}") from None
                stored += count

        # Set when the stream fails: the helper stops waiting for a group's vectors (it is waited for on exit).
        abandoned = threading.Event()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-embed") as helper:

            def start_embedding() -> None:
                nonlocal group, group_claims, group_texts, group_size
                if group:
                    passages = [p for store, docs in group for p in self._split(store, docs)]
                    texts = _passage_texts([d for _, docs in group for d in docs], passages)
                    vectors = helper.submit(_encode_while_room, self.embedder, texts, group_claims, abandoned)
                    embedding.append((group, passages, vectors, group_claims))
                    group, group_claims, group_texts, group_size = [], [], 0, 0

            def store_everything() -> None:
                start_embedding()
                while embedding:
                    store_oldest()

            messages = iter(batches)
            i = 0
            try:
                while True:
                    try:
                        item = next(messages, _END_OF_STREAM)
                    except SemsearchError as exc:
                        store_everything()
                        raise type(exc)(f"{exc} ({i} messages received, {stored} documents stored)") from None
                    if item is _END_OF_STREAM:
                        break
                    if item is None:
                        store_everything()
                        continue
                    collection, documents = item
                    try:
                        store = self._store(collection)
                        self.validate.documents(documents)
                    except SemsearchError as exc:
                        store_everything()
                        raise type(exc)(f"stream message {i} (after {stored} documents were stored): {exc}") from None
                    try:
                        room = store.claim_space(documents)
                    except DiskFull as exc:  # at once, before this message waits for anything
                        store_everything()
                        raise DiskFull(f"after {stored} documents of the stream were stored: {exc}") from None
                    i += 1
                    group.append((store, documents))
                    group_claims.append(room)
                    group_texts += len(documents)
                    group_size += sum(_document_bytes(d) for d in documents)
                    if group_texts >= STREAM_EMBED_GROUP or group_size >= group_bytes:
                        start_embedding()
                        # The previous group is stored while this one is embedded.
                        while len(embedding) > 1:
                            store_oldest()
                store_everything()
            finally:
                # After a failure, groups not yet embedded are dropped (the helper is waited for on exit).
                abandoned.set()
                for _, _, vectors_future, claims in embedding:
                    vectors_future.cancel()
                    _release(claims)
                _release(group_claims)
        return stored

    def delete(
        self,
        collection: str,
        ids: Sequence[str],
        still_wanted: Callable[[], bool] = _always,
        where: Filter | None = None,
    ) -> int:
        """Deletes by id, or every document where matches (atomically); returns how many were deleted."""
        store = self._store(collection)
        self._chosen_by(ids, where, "delete")
        if not still_wanted():
            raise DeadlineExceeded("the deadline passed before the delete; nothing was deleted")
        if where is not None:
            return store.delete_where(where, still_wanted)
        return store.delete(ids, still_wanted)

    def update_attributes(
        self,
        collection: str,
        ids: Sequence[str],
        where: Filter | None,
        set: Mapping[str, Any],
        unset: Sequence[str],
        still_wanted: Callable[[], bool] = _always,
    ) -> int:
        """Sets and removes attributes of the documents chosen by ids or where, atomically (nothing is
        re-embedded); an unknown id is NOT_FOUND with nothing changed. Returns how many documents changed."""
        store = self._store(collection)
        self._chosen_by(ids, where, "update")
        if not set and not unset:
            raise InvalidArgument("set and unset: both are empty; give at least one attribute to set or a key to unset")
        self.validate.attributes(set, "set")
        for i, key in enumerate(unset):
            self.validate.attribute_key(key, f"unset[{i}]")
            if key in set:
                raise InvalidArgument(f"unset[{i}]: key {key!r} is also in set; a key is either set or unset")
        if len(frozenset(unset)) != len(unset):
            raise InvalidArgument("unset: a key is given twice; each key once")
        if not still_wanted():
            raise DeadlineExceeded("the deadline passed before the update; nothing was changed")
        return store.update_attributes(
            list(ids) if where is None else None, where, dict(set), list(unset), self.validate.limits, still_wanted
        )

    def _chosen_by(self, ids: Sequence[str], where: Filter | None, verb: str) -> None:
        """Validates how a write by ids or by filter chooses its documents: one way, and a filter that is one."""
        if where is None:
            self.validate.ids(ids)
            return
        if ids:
            raise InvalidArgument(f"ids and where: give one of them; a {verb} is by ids or by filter, not both")
        if isinstance(where, All) and not where.children:
            raise InvalidArgument(
                f"where: an empty filter matches every document; {verb} by filter needs a condition "
                "(to empty a collection, delete it)"
            )
        validate_filter(where)

    # -- data management ------------------------------------------------------------------------------
    def count(self, collection: str, where: Filter | None = None) -> int:
        """How many documents where matches (every document without one); no vector is read."""
        store = self._store(collection)
        if where is not None:
            validate_filter(where)
        return store.count(where)

    def scroll(self, collection: str, where: Filter | None, limit: int, cursor: str) -> tuple[list[Document], str]:
        """One page of the documents where matches, in ascending id order (bytewise), and the next page's
        cursor ('' after the last page). A cursor names its collection, and the last id it returned."""
        store = self._store(collection)
        if where is not None:
            validate_filter(where)
        limit = self.validate.scroll_limit(limit)
        after = decode_cursor(cursor, store.name) if cursor else None
        page = store.scroll(where, after, limit + 1)
        if len(page) > limit:
            page = page[:limit]
            return page, encode_cursor(store.name, page[-1].id)
        return page, ""

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, collection: str, ids: Sequence[str]) -> list[Document]:
        store = self._store(collection)
        self.validate.ids(ids)
        return store.get(ids)

    def search(
        self,
        collection: str,
        query: str,
        top_k: int,
        min_score: float,
        filter: Mapping[str, str],
        mode: SearchMode | None = None,
        hybrid: HybridParams | None = None,
        where: Filter | None = None,
    ) -> list[Hit]:
        """The top_k documents for the query in the given mode (None: the collection's default_mode).

        Args:
            filter: the old string map (every key with exactly this value), AND-ed with where.
            where: a filter tree (filtering.model); the hits are the best top_k among what it matches.
        """
        store = self._store(collection)
        self.validate.text(query, "query")
        return self._search(store, [query], top_k, min_score, self._where(filter, where), mode, hybrid)[0]

    def batch_search(
        self,
        collection: str,
        queries: Sequence[str],
        top_k: int,
        min_score: float,
        filter: Mapping[str, str],
        mode: SearchMode | None = None,
        hybrid: HybridParams | None = None,
        where: Filter | None = None,
    ) -> list[list[Hit]]:
        store = self._store(collection)
        self.validate.queries(queries)
        return self._search(store, queries, top_k, min_score, self._where(filter, where), mode, hybrid)

    def _where(self, filter: Mapping[str, str] | None, where: Filter | None) -> Filter | None:
        """The request's filter: the old map (validated as before) AND the tree (validated against its limits)."""
        if filter:
            self.validate.filter(filter)
        if where is not None:
            validate_filter(where)
        return combine(conditions_of_string_map(filter or {}), where)

    def _search(
        self,
        store: IndexStore,
        queries: Sequence[str],
        top_k: int,
        min_score: float,
        filter: Filter | None,
        mode: SearchMode | None,
        hybrid: HybridParams | None,
    ) -> list[list[Hit]]:
        k = self.validate.top_k(top_k)
        mode = mode or store.settings.default_mode
        min_score = self.validate.min_score(min_score, mode)
        if mode is SearchMode.LEXICAL:
            results = store.search_lexical(list(queries), k, filter, documents=True)
            return [
                [
                    Hit(m.doc_id, m.score, m.document.text, m.document.attributes, 0.0, m.score, m.passage)
                    for m in matches
                    if m.score >= min_score and m.document is not None
                ]
                for matches in results
            ]
        vectors = self.embedder.encode(list(queries))
        if mode is SearchMode.DENSE:
            results = store.search_dense(vectors, k, filter, documents=True)
            return [
                [
                    Hit(m.doc_id, m.score, m.document.text, m.document.attributes, m.score, 0.0, m.passage)
                    for m in matches
                    if m.score >= min_score and m.document is not None
                ]
                for matches in results
            ]
        params = self.validate.hybrid(hybrid, self.hybrid_defaults)
        out = []
        for query, vector in zip(queries, vectors, strict=True):
            ranked, _ = self._hybrid_ranking(store, query, vector, k, filter, params)
            top = [(c, score) for c, score in ranked if score >= min_score][:k]
            docs = {d.id: d for d in store.get([c.doc_id for c, _ in top])} if top else {}
            out.append(
                [
                    Hit(c.doc_id, score, docs[c.doc_id].text, docs[c.doc_id].attributes, c.dense, c.lexical, c.passage)
                    for c, score in top
                    if c.doc_id in docs
                ]
            )
        return out

    def _hybrid_ranking(
        self,
        store: IndexStore,
        query: str,
        vector: np.ndarray,
        k: int,
        filter: Filter | None,
        params: HybridParams,
    ) -> tuple[list[tuple[Candidate, float]], FusionContext]:
        """The fused candidate pool for one query, best first, and the context that scored it."""
        pool = max(k, HYBRID_CANDIDATES)
        dense = store.search_dense(vector[None, :], pool, filter)[0]
        lexical = store.search_lexical([query], pool, filter)[0]
        dense_by_id = {m.doc_id: m for m in dense}
        lexical_by_id = {m.doc_id: m.score for m in lexical}
        # Every candidate gets both scores: one list's document may still score on the other signal.
        missing_dense = [m.doc_id for m in lexical if m.doc_id not in dense_by_id]
        if missing_dense:
            dense_by_id.update(store.dense_scores(vector, missing_dense))
        missing_lexical = [m.doc_id for m in dense if m.doc_id not in lexical_by_id]
        if missing_lexical:
            lexical_by_id.update(store.lexical_scores(query, missing_lexical))
        dense_rank = {m.doc_id: i for i, m in enumerate(dense, start=1)}
        lexical_rank = {m.doc_id: i for i, m in enumerate(lexical, start=1)}
        candidates = [
            Candidate(
                doc_id,
                match.score,
                lexical_by_id.get(doc_id, 0.0),
                match.passage,
                dense_rank.get(doc_id, 0),
                lexical_rank.get(doc_id, 0),
            )
            for doc_id, match in dense_by_id.items()
        ]
        return fuse(candidates, params)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.validate.texts(texts)
        return self.embedder.encode(list(texts))

    def explain(
        self,
        collection: str,
        query: str,
        doc_id: str | None,
        doc_text: str | None,
        granularity: str = "word",
        include_attention: bool = False,
        attention_layer: int = -1,
        attention_head: int = -1,
        mode: SearchMode | None = None,
        hybrid: HybridParams | None = None,
        top_k: int = 0,
        filter: Mapping[str, str] | None = None,
        where: Filter | None = None,
    ) -> ExplainOutcome:
        """Decomposes the query-document score; for a stored document, also how it ranks and why.

        The dense breakdown explains the document's best passage for the query (the one its dense
        score comes from); offsets are into the whole document's text.
        """
        if self._explainer is None:
            raise FailedPrecondition("Explain is not available on this server")
        self.validate.text(query, "query")
        query_vector = None
        stored = None
        passages: tuple[Passage, ...] = ()
        passage = None
        if doc_id is not None:
            store = self._store(collection)
            self.validate.ids([doc_id], "doc_id")
            # top_k 0: no rank asked for (it scores every document the filter keeps).
            k = self.validate.top_k(top_k) if top_k else 0
            where = self._where(filter, where)
            docs = store.get([doc_id])
            if not docs:
                raise NotFound(f"doc_id: no document {doc_id!r} in collection {store.name!r}")
            # Why not, under a filter: the condition that hides the document and its value for that key.
            excluded = excluded_by(where, docs[0].attributes) if where is not None else None
            full_text = docs[0].text
            passages, vectors = store.get_passages([doc_id]).get(doc_id, ((Passage(0, 0, len(full_text)),), None))
            best = 0
            if vectors is not None and len(passages) > 1:
                # The dense part explains the passage the document's dense score comes from.
                query_vector = self.embedder.encode([query])[0]
                best = int(np.argmax(vectors @ query_vector))
            passage = passages[best]
            stored = None if vectors is None else vectors[best]
            text = full_text[passage.start : passage.end]
        elif doc_text is not None:
            self.validate.text(doc_text, "doc_text")
            if mode not in (None, SearchMode.DENSE):
                raise InvalidArgument(
                    "mode: LEXICAL and HYBRID explain a stored document (doc_id): BM25 depends on the "
                    "collection's statistics; doc_text is explained in DENSE mode only"
                )
            text = doc_text
        else:
            raise InvalidArgument("target: set doc_id (a stored document) or doc_text (any text)")
        # The eager-attention model and the token pass are not safe to share between threads.
        with self._explain_lock:
            explanation = self._explainer.explain(
                query, text, granularity, include_attention, attention_layer, attention_head
            )
        # An explainer on the engine that embeds queries has just computed Search's vectors: no second pass.
        reuse = getattr(self._explainer, "vectors_match_search", False)
        if query_vector is None:
            query_vector = explanation.query_vector if reuse else self.embedder.encode([query])[0]
        if doc_id is not None:
            index_score = float(query_vector @ stored) if stored is not None else float("nan")
        else:
            doc_vector = explanation.doc_vector if reuse else self.embedder.encode([doc_text])[0]
            index_score = float(query_vector @ doc_vector)
        if passage is not None and passage.start:
            explanation = _shift_doc_segments(explanation, passage.start)
        notes = []
        if explanation.query_truncated:
            notes.append(
                f"the query is longer than the model's {self.embedder.max_seq_length}-token window "
                "and was embedded truncated"
            )
        if explanation.doc_truncated:
            notes.append(
                f"the document is longer than the model's {self.embedder.max_seq_length}-token window "
                "and was embedded truncated"
            )
        if len(passages) > 1:
            notes.append(
                f"the dense part explains passage {passage.index} (of {len(passages)}, counted from 0) "
                f"(characters {passage.start}-{passage.end}), the document's best for this query"
            )
        recomputed = explanation.score
        # `score` is the index's score; the contributions are scaled to add up to it exactly.
        if math.isfinite(index_score):
            explanation = explanation.rescaled(index_score)
        if abs(recomputed - index_score) > _SCORE_NOTE_TOLERANCE:
            notes.append(
                f"the index holds score {index_score:.6f} for this pair (backend {self.embedder.fingerprint.backend}); "
                f"the explanation recomputed {recomputed:.6f} and its contributions are scaled to the index's score"
            )
        ranking = None
        if doc_id is not None:
            ranking = self._rank(store, query, query_vector, doc_id, index_score, passage, mode, hybrid, k, where)
            if excluded is not None:
                ranking = replace(ranking, rank=0, excluded_by=excluded)
        return ExplainOutcome(explanation, index_score, notes, ranking)

    def _rank(
        self,
        store: IndexStore,
        query: str,
        vector: np.ndarray,
        doc_id: str,
        dense_score: float,
        passage: Passage,
        mode: SearchMode | None,
        hybrid: HybridParams | None,
        k: int,
        filter: Filter | None,
    ) -> RankingExplanation:
        """The document's score in the mode, its parts, and (for k > 0) its rank and the k-th hit's score."""
        mode = mode or store.settings.default_mode
        terms = store.explain_lexical(query, doc_id) if mode is not SearchMode.DENSE else []
        lexical_score = float(sum(t.contribution for t in terms))
        fusion = None
        dense_rank = lexical_rank = rank = 0
        kth = 0.0
        if mode is SearchMode.HYBRID:
            params = self.validate.hybrid(hybrid, self.hybrid_defaults)
            ranked, fusion = self._hybrid_ranking(store, query, vector, k or DEFAULT_TOP_K, filter, params)
            in_pool = {c.doc_id: (c, s) for c, s in ranked}
            if doc_id in in_pool:
                candidate, score = in_pool[doc_id]
                dense_rank, lexical_rank = candidate.dense_rank, candidate.lexical_rank
            else:
                score = fusion.score(Candidate(doc_id, dense_score, lexical_score, passage))
            if k:
                kth = ranked[k - 1][1] if len(ranked) >= k else 0.0
                if params.fusion is Fusion.RRF:
                    # Outside both lists a document has no RRF score: it ranks below the whole pool.
                    rank = _rank_in([c.doc_id for c, _ in ranked], [s for _, s in ranked], doc_id) or len(ranked) + 1
                else:
                    table = store.score_all(query, vector, filter, dense=True, lexical=True)
                    rank = _rank_in(table.doc_ids, fusion.weighted(table.dense, table.lexical), doc_id)
        elif mode is SearchMode.LEXICAL:
            score = lexical_score
            if k:
                hits = store.search_lexical([query], k, filter)[0]
                kth = hits[k - 1].score if len(hits) >= k else 0.0
                table = store.score_all(query, None, filter, dense=False, lexical=True)
                rank = _rank_in(table.doc_ids, table.lexical, doc_id)
        else:
            score = dense_score
            if k:
                hits = store.search_dense(vector[None, :], k, filter)[0]
                kth = hits[k - 1].score if len(hits) >= k else 0.0
                table = store.score_all(query, vector, filter, dense=True, lexical=False)
                rank = _rank_in(table.doc_ids, table.dense, doc_id)
        return RankingExplanation(
            mode, score, dense_score, lexical_score, terms, passage, rank, kth, k, fusion, dense_rank, lexical_rank
        )

    # -- collections ---------------------------------------------------------------------------------
    def create_collection(self, name: str, settings: CollectionSettings, exist_ok: bool = False) -> CollectionStatus:
        """Creates a collection (exist_ok: or returns the existing one of that name, with its own settings)."""
        name = self.validate.collection_name(name, "name", allow_empty=False)
        self.validate.index_spec(settings.index)
        return self.registry.create(name, self.resolve_settings(settings), exist_ok).status()

    def resolve_settings(self, settings: CollectionSettings) -> CollectionSettings:
        """Fills in the passage defaults for the running model (kept with the collection)."""
        if self.splitter is None or not settings.passages.enabled:
            return replace(settings, passages=replace(settings.passages, window_tokens=0, overlap_tokens=0))
        return replace(settings, passages=self.splitter.resolve(settings.passages).as_config())

    def delete_collection(self, name: str) -> None:
        name = self.validate.collection_name(name, "name", allow_empty=False)
        self.registry.delete(name)

    def list_collections(self) -> list[CollectionStatus]:
        return self.registry.statuses()

    def reindex(self, collection: str) -> int:
        name = self._resolve(collection)
        return self.registry.reindex(name, self.embed_documents)

    def info(self) -> ServiceInfo:
        fp = self.embedder.fingerprint
        return ServiceInfo(
            model_id=fp.model_name,
            fingerprint=fp,
            backend=fp.backend,
            version=__version__,
            limits=self.limits,
            collections=self.registry.statuses(),
        )

    # -- aliases ----------------------------------------------------------------------------------------
    def set_alias(self, alias: str, collection: str) -> str:
        """Points alias at a collection (creates it, or repoints it atomically); returns the previous target."""
        alias = self.validate.collection_name(alias, "alias", allow_empty=False)
        collection = self.validate.collection_name(collection)
        return self.registry.set_alias(alias, collection)

    def delete_alias(self, alias: str) -> None:
        self.registry.delete_alias(self.validate.collection_name(alias, "alias", allow_empty=False))

    def list_aliases(self) -> list[tuple[str, str]]:
        return sorted(self.registry.aliases().items())

    # -- snapshots --------------------------------------------------------------------------------------
    def create_snapshot(self, collection: str) -> SnapshotInfo:
        """A consistent point-in-time copy of a collection: every write acknowledged before the call is in it."""
        return self.registry.create_snapshot(self._resolve(collection))

    def list_snapshots(self, collection: str = "") -> list[SnapshotInfo]:
        """The snapshots of one collection (or alias), or every snapshot when collection is empty."""
        name = self._resolve(collection) if collection else None
        snapshots = self.registry.list_snapshots()
        return snapshots if name is None else [s for s in snapshots if s.collection == name]

    def delete_snapshot(self, name: str) -> None:
        self.registry.delete_snapshot(check_snapshot_name(name))

    def restore_snapshot(self, name: str, collection: str) -> CollectionStatus:
        """A new collection built from a snapshot (its indexes rebuilt from the snapshot's database)."""
        name = check_snapshot_name(name)
        collection = self.validate.collection_name(collection, allow_empty=False)
        return self.registry.restore_snapshot(name, collection).status()

    def _resolve(self, collection: str) -> str:
        """The collection a request's `collection` field means: '' is default, an alias the one it names.
        Every RPC that takes a collection resolves it here."""
        return self.registry.resolve(self.validate.collection_name(collection))

    def _store(self, collection: str):
        return self.registry.get(self._resolve(collection))

    def close(self) -> None:
        """Flushes every collection, then stops the embedder's worker (if it has one)."""
        self.registry.close()
        close = getattr(self.embedder, "close", None)
        if close is not None:
            close()


def _runs_by_store(
    pending: Sequence[tuple[IndexStore, Sequence[Document]]],
) -> list[tuple[IndexStore, list[Sequence[Document]]]]:
    """Consecutive messages for the same collection, merged: [(store, [documents, ...]), ...] in order."""
    runs: list[tuple[IndexStore, list[Sequence[Document]]]] = []
    for store, docs in pending:
        if runs and runs[-1][0] is store:
            runs[-1][1].append(docs)
        else:
            runs.append((store, [docs]))
    return runs


def _document_bytes(doc: Document) -> int:
    """A document's id, text and attributes in UTF-8 bytes: about what it holds in memory, and on the wire."""
    size = len(doc.id.encode()) + len(doc.text.encode())
    return size + sum(len(k.encode()) + _value_bytes(v) for k, v in doc.attributes.items())


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, tuple | list):
        return sum(_value_bytes(v) for v in value)
    return 8


def _last_of_each_id(docs: Sequence[Document]) -> list[int]:
    """Positions of the last document with each id, in order of those positions."""
    last = {doc.id: i for i, doc in enumerate(docs)}
    return sorted(last.values())


def split_documents(
    splitter: PassageSplitter | None, config: PassageConfig, documents: Sequence[Document]
) -> list[tuple[Passage, ...]]:
    """Each document's passages under a collection's (resolved) passage settings."""
    if splitter is None or not config.enabled:
        return [(Passage(0, 0, len(d.text)),) for d in documents]
    settings = ResolvedPassages(True, config.window_tokens, config.overlap_tokens)
    return splitter.split([d.text for d in documents], settings)


def embed_documents(
    embedder: Embedder, splitter: PassageSplitter | None, config: PassageConfig, documents: Sequence[Document]
) -> list[EmbeddedDocument]:
    """Documents split and embedded as a collection with these passage settings stores them.

    The one code path for Reindex and for the Ray Data bulk path (semsearch_server.bulk), so that both
    store exactly what an upsert through the service would.
    """
    out: list[EmbeddedDocument] = []
    for start in range(0, len(documents), STREAM_EMBED_GROUP):
        chunk = documents[start : start + STREAM_EMBED_GROUP]
        passages = split_documents(splitter, config, chunk)
        out += _embedded(chunk, passages, embedder.encode(_passage_texts(chunk, passages)))
    return out


def _passage_texts(documents: Sequence[Document], passages: Sequence[tuple[Passage, ...]]) -> list[str]:
    return [d.text[p.start : p.end] for d, ps in zip(documents, passages, strict=True) for p in ps]


def _encode_while_room(
    embedder: Embedder, texts: list[str], claims: Sequence[SpaceClaim], abandoned: threading.Event | None = None
) -> np.ndarray:
    """Embeds texts for a write; the wait for the model ends with DiskFull if the disk fills meanwhile, or at
    once once `abandoned` is set (a stream that failed: nobody will store these vectors)."""

    def check() -> None:
        if abandoned is not None and abandoned.is_set():
            raise DeadlineExceeded("the stream failed before this group was embedded; it is not stored")
        for claim in claims:
            claim.check()

    with give_up_if(check):
        return embedder.encode(texts)


def _result_while_room(vectors: Future, claims: Sequence[SpaceClaim]) -> np.ndarray:
    """A stream group's vectors from the helper; DiskFull as soon as the disk fills meanwhile."""
    while True:
        try:
            return vectors.result(timeout=GIVE_UP_POLL_SECONDS)
        except FutureTimeout:
            for claim in claims:
                claim.check()


def _release(claims: Iterable[SpaceClaim]) -> None:
    for claim in claims:
        claim.release()


def _embedded(
    documents: Sequence[Document], passages: Sequence[tuple[Passage, ...]], vectors: np.ndarray
) -> list[EmbeddedDocument]:
    out = []
    offset = 0
    for doc, ps in zip(documents, passages, strict=True):
        out.append(EmbeddedDocument(doc, ps, vectors[offset : offset + len(ps)]))
        offset += len(ps)
    return out


def _rank_in(doc_ids: list[str], scores: np.ndarray, doc_id: str) -> int:
    """1-based rank of doc_id among doc_ids by score (0 when it is not among them).

    The document's own score is taken from the same table, computed the same way as every other's,
    so that rounding cannot rank it behind itself. Equal scores rank in table order (the store's
    order of insertion, as its searches break ties).
    """
    try:
        position = doc_ids.index(doc_id)
    except ValueError:
        return 0
    scores = np.asarray(scores)
    own = scores[position]
    return int(np.count_nonzero(scores > own) + np.count_nonzero(scores[:position] == own)) + 1


def _shift_doc_segments(explanation, offset: int):
    """The explanation of a passage, with its document segments' offsets into the whole text."""
    segments = [replace(s, start=s.start + offset, end=s.end + offset) for s in explanation.doc_segments]
    return replace(explanation, doc_segments=segments)
