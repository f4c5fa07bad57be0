"""SemsearchEmbedding: the semsearch server's Embed RPC as a LlamaIndex BaseEmbedding."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from semsearch.aio import AsyncSearchClient
from semsearch.client import SearchClient
from semsearch.integrations._shared import AsyncTwin


class SemsearchEmbedding(BaseEmbedding):
    """The server's L2-normalised embeddings, from the model that indexes the documents.

    With a SemsearchVectorStore no query or node needs it (the server embeds both); it is there for other
    LlamaIndex parts that want vectors of the same model (Settings.embed_model, semantic splitters, evaluators).
    """

    _client: SearchClient = PrivateAttr()
    _async: AsyncTwin = PrivateAttr()

    def __init__(self, client: SearchClient, async_client: AsyncSearchClient | None = None, **kwargs: Any) -> None:
        super().__init__(model_name=kwargs.pop("model_name", "semsearch"), **kwargs)
        self._client = client
        self._async = AsyncTwin(client, async_client)

    @classmethod
    def class_name(cls) -> str:
        return "SemsearchEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._client.embed(texts).tolist() if texts else []

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._aget_text_embeddings([query]))[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return (await self._async.get().embed(texts)).tolist() if texts else []
