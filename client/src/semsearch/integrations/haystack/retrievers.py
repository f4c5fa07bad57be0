"""Retriever components over SemsearchDocumentStore: text queries in dense, lexical (BM25) and hybrid mode.

The server embeds the query, so these take the query text (no text embedder in the pipeline).
"""

from __future__ import annotations

from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from semsearch.integrations.haystack.document_store import SemsearchDocumentStore


class _SemsearchRetriever:
    mode = "dense"

    def __init__(
        self, document_store: SemsearchDocumentStore, filters: dict[str, Any] | None = None, top_k: int = 10
    ) -> None:
        """
        Args:
            document_store: the store searched.
            filters: Haystack filters applied to every query (``run``'s replace them).
            top_k: how many documents to return (``run``'s overrides it).
        """
        if not isinstance(document_store, SemsearchDocumentStore):
            raise ValueError("document_store must be a SemsearchDocumentStore")
        self.document_store = document_store
        self.filters = filters
        self.top_k = top_k

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, document_store=self.document_store.to_dict(), filters=self.filters, top_k=self.top_k
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        params = dict(data["init_parameters"])
        data = {**data, "init_parameters": params}
        params["document_store"] = SemsearchDocumentStore.from_dict(params["document_store"])
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None) -> dict[str, Any]:
        """The best documents for `query`, best first, with their scores."""
        documents = self.document_store.search(
            query, mode=self.mode, filters=self.filters if filters is None else filters, top_k=top_k or self.top_k
        )
        return {"documents": documents}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None
    ) -> dict[str, Any]:
        documents = await self.document_store.search_async(
            query, mode=self.mode, filters=self.filters if filters is None else filters, top_k=top_k or self.top_k
        )
        return {"documents": documents}


@component
class SemsearchDenseRetriever(_SemsearchRetriever):
    """Documents by cosine similarity of the server's embeddings of query and text."""

    mode = "dense"


@component
class SemsearchLexicalRetriever(_SemsearchRetriever):
    """Documents by BM25 over their stored text."""

    mode = "lexical"


@component
class SemsearchHybridRetriever(_SemsearchRetriever):
    """Documents by the server's fusion of dense and lexical scores."""

    mode = "hybrid"
