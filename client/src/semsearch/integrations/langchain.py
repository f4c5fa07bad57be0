"""LangChain (langchain-core) adapter: ``pip install 'semsearch-client[langchain]'``.

``SemsearchVectorStore`` is one class, sync and async (async through AsyncSearchClient), with the retrieval mode
as an enum; ``SemsearchEmbeddings`` is the server's Embed RPC as LangChain Embeddings. The server embeds every
text and every query, so the store takes no embedding model: any other one is refused, since documents and
queries would then be embedded by different models.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from semsearch.aio import AsyncSearchClient
from semsearch.client import SearchClient
from semsearch.filters import FilterLike
from semsearch.integrations._shared import (
    MATCH_ALL,
    AsyncTwin,
    ensure_collection,
    ensure_collection_async,
    scroll_all,
    scroll_all_async,
)
from semsearch.types import Document as SemsearchDocument
from semsearch.types import Hit

__all__ = ["RetrievalMode", "SemsearchEmbeddings", "SemsearchVectorStore"]


class RetrievalMode(StrEnum):
    """How queries are matched: the server's search modes."""

    DENSE = "dense"  # cosine of the server's embeddings
    LEXICAL = "lexical"  # BM25 over the stored text
    HYBRID = "hybrid"  # both, fused by the server


class SemsearchEmbeddings(Embeddings):
    """The semsearch server's embeddings (the Embed RPC): L2-normalised, from the model that indexes documents.

    Args:
        client: a SearchClient.
        async_client: an AsyncSearchClient for the a* methods; by default one is made from
            ``client.settings`` inside the running event loop.
    """

    def __init__(self, client: SearchClient, async_client: AsyncSearchClient | None = None) -> None:
        self.client = client
        self._async = AsyncTwin(client, async_client)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.client.embed(list(texts)).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return (await self._async.get().embed(list(texts))).tolist() if texts else []

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


class SemsearchVectorStore(VectorStore):
    """Documents in one collection of a semsearch server, which embeds their text and the queries itself.

    Args:
        client: a SearchClient.
        collection: the collection; created on first write if it does not exist.
        async_client: an AsyncSearchClient; by default one is made lazily from ``client.settings`` in the
            running event loop.
        retrieval_mode: the default mode of every search (``mode=`` overrides it per call).
        embedding: only a SemsearchEmbeddings of the same server, or None; another model is refused.

    Filters (``filter=``) are semsearch filters: the text form (``'year >= 2020 and kind == "drink"'``), a tree
    from ``semsearch.filters`` or a mapping of exact values.
    """

    def __init__(
        self,
        client: SearchClient,
        collection: str = "default",
        async_client: AsyncSearchClient | None = None,
        retrieval_mode: RetrievalMode | str = RetrievalMode.DENSE,
        embedding: Embeddings | None = None,
    ) -> None:
        _refuse_foreign_embedding(embedding)
        self.client = client
        self.collection = collection
        self.retrieval_mode = RetrievalMode(retrieval_mode)
        self._async = AsyncTwin(client, async_client)
        self._embeddings = embedding or SemsearchEmbeddings(client, async_client)
        self._ready = False

    @property
    def embeddings(self) -> Embeddings:
        return self._embeddings

    # -- writes ------------------------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Upserts the texts (an existing id is replaced); returns their ids, made up where none was given."""
        documents = _documents(texts, metadatas, ids)
        self._ensure()
        if documents:
            self.client.upsert(documents, collection=self.collection)
        return [d.id for d in documents]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        documents = _documents(texts, metadatas, ids)
        client = await self._ensure_async()
        if documents:
            await client.upsert(documents, collection=self.collection)
        return [d.id for d in documents]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Deletes these ids (unknown ones are ignored); with ids None, every document of the collection."""
        self._ensure()
        if ids is None:
            self.client.delete(collection=self.collection, where=MATCH_ALL)
        elif ids:
            self.client.delete(list(ids), collection=self.collection)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        client = await self._ensure_async()
        if ids is None:
            await client.delete(collection=self.collection, where=MATCH_ALL)
        elif ids:
            await client.delete(list(ids), collection=self.collection)
        return True

    # -- reads -------------------------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents found, in the order of `ids`; unknown ids are left out."""
        self._ensure()
        return [_to_langchain(d) for d in self.client.get(_unique(ids), collection=self.collection)]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        client = await self._ensure_async()
        return [_to_langchain(d) for d in await client.get(_unique(ids), collection=self.collection)]

    def get_all(self, filter: FilterLike | None = None) -> list[Document]:
        """Every document the filter matches, in id order (Scroll)."""
        self._ensure()
        return [_to_langchain(d) for d in scroll_all(self.client, self.collection, filter)]

    async def aget_all(self, filter: FilterLike | None = None) -> list[Document]:
        client = await self._ensure_async()
        return [_to_langchain(d) for d in await scroll_all_async(client, self.collection, filter)]

    # -- search ------------------------------------------------------------------------------------------------
    def similarity_search(
        self,
        query: str,
        k: int = 4,
        filter: FilterLike | None = None,
        mode: RetrievalMode | str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, mode=mode, **kwargs)]

    async def asimilarity_search(
        self,
        query: str,
        k: int = 4,
        filter: FilterLike | None = None,
        mode: RetrievalMode | str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        found = await self.asimilarity_search_with_score(query, k, filter=filter, mode=mode, **kwargs)
        return [doc for doc, _ in found]

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: FilterLike | None = None,
        mode: RetrievalMode | str | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The k best documents with their scores: cosine (dense), BM25 (lexical) or the fused value (hybrid)."""
        self._ensure()
        hits = self.client.search(query, **self._search_args(k, filter, mode, kwargs))
        return [(_to_langchain(h), h.score) for h in hits]

    async def asimilarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: FilterLike | None = None,
        mode: RetrievalMode | str | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        client = await self._ensure_async()
        hits = await client.search(query, **self._search_args(k, filter, mode, kwargs))
        return [(_to_langchain(h), h.score) for h in hits]

    def _select_relevance_score_fn(self):
        if self.retrieval_mode is RetrievalMode.DENSE:
            return lambda score: (1.0 + score) / 2.0  # cosine in [-1, 1] to [0, 1]
        raise NotImplementedError(
            f"{self.retrieval_mode.value} scores are not bounded, so they have no relevance in [0, 1]: "
            "use similarity_search_with_score, or the dense mode"
        )

    def _search_args(self, k: int, filter: FilterLike | None, mode, extra: dict[str, Any]) -> dict[str, Any]:
        allowed = {"min_score", "fusion", "dense_weight", "rrf_k", "timeout"}
        unknown = set(extra) - allowed
        if unknown:
            raise TypeError(f"unknown search arguments {sorted(unknown)}: use one of {sorted(allowed)}")
        mode = self.retrieval_mode if mode is None else RetrievalMode(mode)
        return {"collection": self.collection, "top_k": k, "where": filter, "mode": mode.value, **extra}

    # -- maximal marginal relevance ----------------------------------------------------------------------------
    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: FilterLike | None = None,
        mode: RetrievalMode | str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """k documents among the fetch_k best, chosen for relevance to the query and diversity among
        themselves, over the server's embeddings of the query and of the candidates' texts."""
        self._ensure()
        hits = self.client.search(query, **self._search_args(fetch_k, filter, mode, kwargs))
        if not hits:
            return []
        vectors = self.client.embed([query, *(h.text for h in hits)])
        return _mmr(hits, vectors, k, lambda_mult)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: FilterLike | None = None,
        mode: RetrievalMode | str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        client = await self._ensure_async()
        hits = await client.search(query, **self._search_args(fetch_k, filter, mode, kwargs))
        if not hits:
            return []
        vectors = await client.embed([query, *(h.text for h in hits)])
        return _mmr(hits, vectors, k, lambda_mult)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        raise NotImplementedError(
            "semsearch searches by query text, which its server embeds; it has no search by a given vector"
        )

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], *args: Any, **kwargs: Any):
        raise NotImplementedError(
            "semsearch searches by query text, which its server embeds; it has no search by a given vector"
        )

    # -- construction and retrievers ---------------------------------------------------------------------------
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        client: SearchClient | None = None,
        collection: str = "default",
        **kwargs: Any,
    ) -> SemsearchVectorStore:
        """A store over `collection` holding these texts (added to what it holds already)."""
        if client is None:
            raise ValueError("from_texts needs client=SearchClient(...): the server embeds and stores the texts")
        store = cls(client=client, collection=collection, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        client: SearchClient | None = None,
        collection: str = "default",
        **kwargs: Any,
    ) -> SemsearchVectorStore:
        if client is None:
            raise ValueError("afrom_texts needs client=SearchClient(...): the server embeds and stores the texts")
        store = cls(client=client, collection=collection, embedding=embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    def as_retriever(
        self, mode: RetrievalMode | str | None = None, filter: FilterLike | None = None, **kwargs: Any
    ) -> VectorStoreRetriever:
        """A retriever over this store; mode (dense, lexical, hybrid) and filter apply to every query, besides
        LangChain's own ``search_type`` ("similarity" or "mmr") and ``search_kwargs`` (``k``, ...)."""
        search_kwargs = dict(kwargs.pop("search_kwargs", None) or {})
        if mode is not None:
            search_kwargs["mode"] = RetrievalMode(mode).value
        if filter is not None:
            search_kwargs["filter"] = filter
        return super().as_retriever(search_kwargs=search_kwargs, **kwargs)

    # -- the collection ----------------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._ready:
            ensure_collection(self.client, self.collection)
            self._ready = True

    async def _ensure_async(self) -> AsyncSearchClient:
        client = self._async.get()
        if not self._ready:
            await ensure_collection_async(client, self.collection)
            self._ready = True
        return client


def _refuse_foreign_embedding(embedding: Embeddings | None) -> None:
    if embedding is not None and not isinstance(embedding, SemsearchEmbeddings):
        raise ValueError(
            f"SemsearchVectorStore takes no embedding model ({type(embedding).__name__} given): the semsearch "
            "server embeds every stored text and every query with its own model, so vectors from another model "
            "would not be comparable with them. Leave embedding unset (or pass SemsearchEmbeddings)."
        )


def _documents(texts: Iterable[str], metadatas: list[dict] | None, ids: list[str | None] | None) -> list:
    texts = list(texts)
    metadatas = list(metadatas) if metadatas is not None else [{}] * len(texts)
    ids = list(ids) if ids is not None else [None] * len(texts)
    if not len(texts) == len(metadatas) == len(ids):
        raise ValueError(
            f"{len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids: give one of each per text"
        )
    return [
        SemsearchDocument(id=doc_id or str(uuid.uuid4()), text=text, metadata=dict(metadata or {}))
        for text, metadata, doc_id in zip(texts, metadatas, ids, strict=True)
    ]


def _to_langchain(document: SemsearchDocument | Hit) -> Document:
    return Document(id=document.id, page_content=document.text, metadata=dict(document.metadata))


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _mmr(hits: list[Hit], vectors, k: int, lambda_mult: float) -> list[Document]:
    chosen = maximal_marginal_relevance(vectors[0], vectors[1:].tolist(), lambda_mult=lambda_mult, k=k)
    return [_to_langchain(hits[i]) for i in chosen]
