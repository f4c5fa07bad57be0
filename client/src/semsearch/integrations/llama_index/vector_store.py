"""SemsearchVectorStore: a LlamaIndex vector store whose server embeds node texts and query strings itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, TextNode, TransformComponent
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from semsearch.aio import AsyncSearchClient
from semsearch.client import SearchClient
from semsearch.filters import Field, FilterLike
from semsearch.integrations._shared import (
    MATCH_ALL,
    AsyncTwin,
    WarnOnce,
    ensure_collection,
    ensure_collection_async,
    scroll_all,
    scroll_all_async,
)
from semsearch.integrations.llama_index.filters import UnsupportedFilterError, convert_filters
from semsearch.types import Document, Hit

logger = logging.getLogger(__name__)

# The id of the source document a node came from (LlamaIndex's ref_doc_id), kept so that delete(ref_doc_id)
# finds its nodes; stored as an attribute under this reserved key and never shown in the node's metadata.
REF_DOC_KEY = "_llama_ref_doc_id"
_MODES = {
    VectorStoreQueryMode.DEFAULT: "dense",
    VectorStoreQueryMode.MMR: "dense",
    VectorStoreQueryMode.SPARSE: "lexical",
    VectorStoreQueryMode.TEXT_SEARCH: "lexical",
    VectorStoreQueryMode.HYBRID: "hybrid",
}


class ServerEmbedded(TransformComponent):
    """The embedding step of an IngestionPipeline (or VectorStoreIndex transformations) for a SemsearchVectorStore.

    LlamaIndex hands a vector store only nodes that carry an embedding, and embeds on the client those that do
    not; the server embeds every text itself, once, when it is stored. This step marks each node as embedded
    elsewhere (an empty placeholder, never sent) so that every node reaches the store and none is embedded twice.
    """

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        for node in nodes:
            if node.embedding is None:
                node.embedding = []
        return nodes


class SemsearchVectorStore(BasePydanticVectorStore):
    """Nodes in one collection of a semsearch server, queried by ``query_str`` (the server embeds it).

    Modes: DEFAULT (dense), SPARSE and TEXT_SEARCH (lexical, BM25), HYBRID, and MMR (dense candidates re-ranked
    for diversity over the server's embeddings). Filters: MetadataFilters (see ``filters.py``), plus ``where=``
    (a semsearch filter, for bool and datetime values) passed through ``vector_store_kwargs``.

    A node's own ``embedding`` is ignored (logged once per store): the server embeds its text. Ingest with
    ``ServerEmbedded()`` as the embedding step so that LlamaIndex neither drops nor embeds the nodes.

    Args:
        client: a SearchClient.
        collection: the collection; created on first use if it does not exist.
        async_client: an AsyncSearchClient; by default one is made from ``client.settings`` in the running loop.
    """

    stores_text: bool = True
    is_embedding_query: bool = False  # LlamaIndex must send query_str, not a vector
    flat_metadata: bool = True
    collection: str = "default"

    _client: SearchClient = PrivateAttr()
    _async: AsyncTwin = PrivateAttr()
    _ready: bool = PrivateAttr(default=False)
    _ignored_embedding: WarnOnce = PrivateAttr()

    def __init__(
        self, client: SearchClient, collection: str = "default", async_client: AsyncSearchClient | None = None
    ) -> None:
        super().__init__(collection=collection)
        self._client = client
        self._async = AsyncTwin(client, async_client)
        self._ignored_embedding = WarnOnce(
            logger,
            f"SemsearchVectorStore({collection!r}) ignores the nodes' own embeddings: the semsearch server embeds "
            "each text with its model, which also embeds the queries",
        )

    @classmethod
    def class_name(cls) -> str:
        return "SemsearchVectorStore"

    @property
    def client(self) -> SearchClient:
        return self._client

    # -- writes ------------------------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Stores the nodes' texts and metadata (replacing those with the same id); returns their ids."""
        documents = self._documents(nodes)
        self._ensure()
        if documents:
            self._client.upsert(documents, collection=self.collection)
        return [d.id for d in documents]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        documents = self._documents(nodes)
        client = await self._ensure_async()
        if documents:
            await client.upsert(documents, collection=self.collection)
        return [d.id for d in documents]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Deletes every node that came from the source document `ref_doc_id`."""
        self._ensure()
        self._client.delete(collection=self.collection, where=Field(REF_DOC_KEY) == ref_doc_id)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        client = await self._ensure_async()
        await client.delete(collection=self.collection, where=Field(REF_DOC_KEY) == ref_doc_id)

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **kwargs: Any
    ) -> None:
        """Deletes these nodes, or those the filters match (both given: the listed ones the filters match)."""
        where = self._delete_filter(node_ids, filters)
        self._ensure()
        if node_ids is None:
            self._client.delete(collection=self.collection, where=where)
            return
        ids = list(dict.fromkeys(node_ids))
        if where is not None:
            ids = [
                d.id
                for d in _among(
                    self._client.get(ids, collection=self.collection), scroll_all(self._client, self.collection, where)
                )
            ]
        if ids:
            self._client.delete(ids, collection=self.collection)

    async def adelete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **kwargs: Any
    ) -> None:
        where = self._delete_filter(node_ids, filters)
        client = await self._ensure_async()
        if node_ids is None:
            await client.delete(collection=self.collection, where=where)
            return
        ids = list(dict.fromkeys(node_ids))
        if where is not None:
            found = await client.get(ids, collection=self.collection)
            ids = [d.id for d in _among(found, await scroll_all_async(client, self.collection, where))]
        if ids:
            await client.delete(ids, collection=self.collection)

    def clear(self) -> None:
        """Deletes every node of the collection."""
        self._ensure()
        self._client.delete(collection=self.collection, where=MATCH_ALL)

    async def aclear(self) -> None:
        client = await self._ensure_async()
        await client.delete(collection=self.collection, where=MATCH_ALL)

    # -- reads -------------------------------------------------------------------------------------------------
    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **kwargs: Any
    ) -> list[BaseNode]:
        """These nodes (in this order, unknown ones left out), or every node the filters match."""
        self._ensure()
        if node_ids is None:
            return [_node(d) for d in scroll_all(self._client, self.collection, convert_filters(filters))]
        found = self._client.get(list(dict.fromkeys(node_ids)), collection=self.collection)
        if filters is not None:
            found = _among(found, scroll_all(self._client, self.collection, convert_filters(filters)))
        return [_node(d) for d in found]

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **kwargs: Any
    ) -> list[BaseNode]:
        client = await self._ensure_async()
        if node_ids is None:
            return [_node(d) for d in await scroll_all_async(client, self.collection, convert_filters(filters))]
        found = await client.get(list(dict.fromkeys(node_ids)), collection=self.collection)
        if filters is not None:
            found = _among(found, await scroll_all_async(client, self.collection, convert_filters(filters)))
        return [_node(d) for d in found]

    # -- queries -----------------------------------------------------------------------------------------------
    def query(self, query: VectorStoreQuery, where: FilterLike | None = None, **kwargs: Any) -> VectorStoreQueryResult:
        """The best nodes for ``query.query_str``, with their scores, best first.

        Args:
            where: a semsearch filter AND-ed with ``query.filters`` (for bool and datetime values).
        """
        args = self._search_args(query, where)
        self._ensure()
        hits = self._client.search(query.query_str, **args)
        if query.mode == VectorStoreQueryMode.MMR and hits:
            hits = _mmr(hits, self._client.embed([query.query_str, *(h.text for h in hits)]), query)
        return _result(hits)

    async def aquery(
        self, query: VectorStoreQuery, where: FilterLike | None = None, **kwargs: Any
    ) -> VectorStoreQueryResult:
        args = self._search_args(query, where)
        client = await self._ensure_async()
        hits = await client.search(query.query_str, **args)
        if query.mode == VectorStoreQueryMode.MMR and hits:
            hits = _mmr(hits, await client.embed([query.query_str, *(h.text for h in hits)]), query)
        return _result(hits)

    def _search_args(self, query: VectorStoreQuery, where: FilterLike | None) -> dict[str, Any]:
        if not query.query_str:
            raise ValueError(
                "SemsearchVectorStore searches by query_str, which its server embeds; a query embedding alone "
                "cannot be searched (is_embedding_query is False, so LlamaIndex's retrievers send the text)"
            )
        if query.mode not in _MODES:
            raise UnsupportedFilterError(
                f"query mode {query.mode.value!r} is not one semsearch serves: use default (dense), sparse or "
                "text_search (lexical), hybrid, or mmr"
            )
        if query.doc_ids or query.node_ids:
            raise UnsupportedFilterError(
                "restricting a query to doc_ids or node_ids is not something the semsearch service does: "
                "filter on metadata instead"
            )
        top_k = query.similarity_top_k
        if query.mode == VectorStoreQueryMode.HYBRID and query.hybrid_top_k:
            top_k = query.hybrid_top_k
        if query.mode == VectorStoreQueryMode.MMR:
            top_k = max(top_k * 4, 20)  # candidates for the re-ranking
        args: dict[str, Any] = {
            "collection": self.collection,
            "top_k": top_k,
            "mode": _MODES[query.mode],
            "where": convert_filters(query.filters, where),
        }
        if query.mode == VectorStoreQueryMode.HYBRID and query.alpha is not None and 0 < query.alpha <= 1:
            args.update(fusion="weighted", dense_weight=query.alpha)  # LlamaIndex: alpha 1 is pure vector search
        return args

    # -- helpers -----------------------------------------------------------------------------------------------
    def _documents(self, nodes: Sequence[BaseNode]) -> list[Document]:
        if any(n.embedding for n in nodes):
            self._ignored_embedding()
        chosen = {n.node_id: _document(n) for n in nodes}  # the last node with an id wins, as an upsert would
        return list(chosen.values())

    @staticmethod
    def _delete_filter(node_ids: list[str] | None, filters: MetadataFilters | None):
        where = convert_filters(filters)
        if node_ids is None and where is None:
            raise ValueError("delete_nodes needs node_ids or filters: use clear() to delete every node")
        return where

    def _ensure(self) -> None:
        if not self._ready:
            ensure_collection(self._client, self.collection)
            self._ready = True

    async def _ensure_async(self) -> AsyncSearchClient:
        client = self._async.get()
        if not self._ready:
            await ensure_collection_async(client, self.collection)
            self._ready = True
        return client


def _document(node: BaseNode) -> Document:
    if REF_DOC_KEY in node.metadata:
        raise ValueError(f"node {node.node_id!r}: metadata key {REF_DOC_KEY!r} is reserved by SemsearchVectorStore")
    metadata = dict(node.metadata)
    if node.ref_doc_id is not None:
        metadata[REF_DOC_KEY] = node.ref_doc_id
    return Document(id=node.node_id, text=node.get_content(), metadata=metadata)


def _node(document: Document | Hit) -> TextNode:
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

    metadata = dict(document.metadata)
    ref_doc_id = metadata.pop(REF_DOC_KEY, None)
    node = TextNode(id_=document.id, text=document.text, metadata=metadata)
    if ref_doc_id is not None:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref_doc_id)
    return node


def _among(documents: list[Document], matching: list[Document]) -> list[Document]:
    """The documents (in their order) that are among those a filter matched: the server's filter semantics."""
    ids = {d.id for d in matching}
    return [d for d in documents if d.id in ids]


def _result(hits: list[Hit]) -> VectorStoreQueryResult:
    return VectorStoreQueryResult(
        nodes=[_node(h) for h in hits], similarities=[h.score for h in hits], ids=[h.id for h in hits]
    )


def _mmr(hits: list[Hit], vectors, query: VectorStoreQuery) -> list[Hit]:
    from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings

    _, chosen = get_top_k_mmr_embeddings(
        vectors[0].tolist(),
        vectors[1:].tolist(),
        similarity_top_k=query.similarity_top_k,
        embedding_ids=list(range(len(hits))),
        mmr_threshold=query.mmr_threshold,
    )
    return [hits[i] for i in chosen]
