"""SearchService: validation, embedding and collections wired together. Imports no grpc."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from semsearch_server import __version__
from semsearch_server.config import Limits
from semsearch_server.core.models import CollectionStatus, Document, Hit, IndexSpec
from semsearch_server.core.registry import CollectionRegistry
from semsearch_server.core.validation import Validator
from semsearch_server.embedding.base import Embedder, ModelFingerprint
from semsearch_server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SemsearchError,
)
from semsearch_server.index.base import IndexStore

# UpsertStream embeds consecutive messages together up to this many texts (see upsert_stream).
STREAM_EMBED_GROUP = 1024
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
class ExplainOutcome:
    explanation: Any  # semsearch_server.embedding.explain.Explanation
    index_score: float
    notes: list[str] = field(default_factory=list)


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
    """

    def __init__(
        self, embedder: Embedder, registry: CollectionRegistry, limits: Limits, explainer: Explainer | None = None
    ) -> None:
        self.embedder = embedder
        self.registry = registry
        self.limits = limits
        self.validate = Validator(limits)
        self._explainer = explainer
        self._explain_lock = threading.Lock()

    # -- writes --------------------------------------------------------------------------------------
    def upsert(self, collection: str, documents: Sequence[Document], still_wanted: Callable[[], bool] = _always) -> int:
        """Embeds and stores documents (replacing by id), all or nothing; returns the count.

        Args:
            still_wanted: asked after embedding, before committing; False (the caller's deadline
                passed or it cancelled) abandons the write, so a call reported failed changed nothing.
        """
        store = self._store(collection)
        self.validate.documents(documents)
        vectors = self.embedder.encode([d.text for d in documents])
        if not still_wanted():
            raise DeadlineExceeded("the deadline passed while embedding; nothing was stored")
        return store.upsert(documents, vectors)

    def upsert_stream(
        self, batches: Iterable[tuple[str, Sequence[Document]]], still_wanted: Callable[[], bool] = _always
    ) -> int:
        """Applies a stream of (collection, documents) messages in order, each all-or-nothing.

        Consecutive messages are embedded together, up to `STREAM_EMBED_GROUP` texts: sorting a larger
        group by length wastes far less padding than one message at a time (on the default model and
        backend, groups of 1,024 embed 1.6x faster than messages of 64), and consecutive messages of
        a group that go to the same collection are stored in one transaction (an id sent twice: the
        later message wins, as if applied in order). A crash therefore leaves a prefix of whole
        messages stored; a bad message is reported after every message before it has been stored.
        The response only comes at the end of the stream, so nothing is acknowledged earlier.

        A group is embedded in a helper thread while this one reads and validates the next group's
        messages and stores the group before, so the model is not left idle waiting for either
        (the service ingested at 0.94x the engine's in-process rate without this).
        """
        stored = 0
        group: list[tuple[IndexStore, Sequence[Document]]] = []
        group_texts = 0
        # Groups handed to the helper, oldest first: (messages, future of their vectors).
        embedding: deque[tuple[list[tuple[IndexStore, Sequence[Document]]], Future]] = deque()

        def store_oldest() -> None:
            nonlocal stored
            messages, vectors_future = embedding.popleft()
            vectors = vectors_future.result()
            if not still_wanted():
                raise DeadlineExceeded(f"the deadline passed while embedding; {stored} documents were stored")
            offset = 0
            for store, runs in _runs_by_store(messages):
                docs = [d for m in runs for d in m]
                run_vectors = vectors[offset : offset + len(docs)]
                offset += len(docs)
                latest = _last_of_each_id(docs)
                store.upsert([docs[i] for i in latest], run_vectors[latest])
                stored += len(docs)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-embed") as helper:

            def start_embedding() -> None:
                nonlocal group, group_texts
                if group:
                    texts = [d.text for _, docs in group for d in docs]
                    embedding.append((group, helper.submit(self.embedder.encode, texts)))
                    group, group_texts = [], 0

            def store_everything() -> None:
                start_embedding()
                while embedding:
                    store_oldest()

            try:
                for i, (collection, documents) in enumerate(batches):
                    try:
                        store = self._store(collection)
                        self.validate.documents(documents)
                    except SemsearchError as exc:
                        store_everything()
                        raise type(exc)(f"stream message {i} (after {stored} documents were stored): {exc}") from None
                    group.append((store, documents))
                    group_texts += len(documents)
                    if group_texts >= STREAM_EMBED_GROUP:
                        start_embedding()
                        # The previous group is stored while this one is embedded.
                        while len(embedding) > 1:
                            store_oldest()
                store_everything()
            finally:
                # After a failure, groups not yet embedded are dropped (the helper is waited for on exit).
                for _, vectors_future in embedding:
                    vectors_future.cancel()
        return stored

    def delete(self, collection: str, ids: Sequence[str], still_wanted: Callable[[], bool] = _always) -> int:
        store = self._store(collection)
        self.validate.ids(ids)
        if not still_wanted():
            raise DeadlineExceeded("the deadline passed before the delete; nothing was deleted")
        return store.delete(ids)

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, collection: str, ids: Sequence[str]) -> list[Document]:
        store = self._store(collection)
        self.validate.ids(ids)
        return store.get(ids)

    def search(self, collection: str, query: str, top_k: int, min_score: float, filter: Mapping[str, str]) -> list[Hit]:
        store = self._store(collection)
        self.validate.text(query, "query")
        return self._search(store, [query], top_k, min_score, filter)[0]

    def batch_search(
        self, collection: str, queries: Sequence[str], top_k: int, min_score: float, filter: Mapping[str, str]
    ) -> list[list[Hit]]:
        store = self._store(collection)
        self.validate.queries(queries)
        return self._search(store, queries, top_k, min_score, filter)

    def _search(
        self, store: IndexStore, queries: Sequence[str], top_k: int, min_score: float, filter: Mapping[str, str]
    ) -> list[list[Hit]]:
        k = self.validate.top_k(top_k)
        min_score = self.validate.min_score(min_score)
        self.validate.filter(filter)
        return store.search(self.embedder.encode(list(queries)), k, min_score, filter)

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
    ) -> ExplainOutcome:
        """Decomposes the query-document score into token and pair contributions."""
        if self._explainer is None:
            raise FailedPrecondition("Explain is not available on this server")
        self.validate.text(query, "query")
        stored = None
        if doc_id is not None:
            store = self._store(collection)
            self.validate.ids([doc_id], "doc_id")
            docs = store.get([doc_id])
            if not docs:
                raise NotFound(f"doc_id: no document {doc_id!r} in collection {store.name!r}")
            text = docs[0].text
            stored = store.get_vectors([doc_id]).get(doc_id)
        elif doc_text is not None:
            self.validate.text(doc_text, "doc_text")
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
        query_vector = explanation.query_vector if reuse else self.embedder.encode([query])[0]
        if doc_id is not None:
            index_score = float(query_vector @ stored) if stored is not None else float("nan")
        else:
            doc_vector = explanation.doc_vector if reuse else self.embedder.encode([doc_text])[0]
            index_score = float(query_vector @ doc_vector)
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
        recomputed = explanation.score
        # `score` is the index's score; the contributions are scaled to add up to it exactly.
        explanation = explanation.rescaled(index_score)
        if abs(recomputed - index_score) > _SCORE_NOTE_TOLERANCE:
            notes.append(
                f"the index holds score {index_score:.6f} for this pair (backend {self.embedder.fingerprint.backend}); "
                f"the explanation recomputed {recomputed:.6f} and its contributions are scaled to the index's score"
            )
        return ExplainOutcome(explanation, index_score, notes)

    # -- collections ---------------------------------------------------------------------------------
    def create_collection(self, name: str, spec: IndexSpec) -> CollectionStatus:
        name = self.validate.collection_name(name, "name", allow_empty=False)
        self.validate.index_spec(spec)
        return self.registry.create(name, spec).status()

    def delete_collection(self, name: str) -> None:
        name = self.validate.collection_name(name, "name", allow_empty=False)
        self.registry.delete(name)

    def list_collections(self) -> list[CollectionStatus]:
        return self.registry.statuses()

    def reindex(self, collection: str) -> int:
        name = self.validate.collection_name(collection)
        return self.registry.reindex(name, self.embedder.encode)

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

    def _store(self, collection: str):
        return self.registry.get(self.validate.collection_name(collection))

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


def _last_of_each_id(docs: Sequence[Document]) -> list[int]:
    """Positions of the last document with each id, in order of those positions."""
    last = {doc.id: i for i, doc in enumerate(docs)}
    return sorted(last.values())
