"""SemsearchDocumentStore: a Haystack DocumentStore whose documents a semsearch server stores and embeds."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from haystack import Document, default_from_dict, default_to_dict
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy
from haystack.utils import Secret, deserialize_secrets_inplace

from semsearch.client import SearchClient
from semsearch.integrations._shared import (
    MATCH_ALL,
    MODES,
    AsyncTwin,
    WarnOnce,
    ensure_collection,
    ensure_collection_async,
    scroll_all,
    scroll_all_async,
)
from semsearch.integrations.haystack.converters import from_semsearch, to_semsearch
from semsearch.integrations.haystack.filters import convert_filters

logger = logging.getLogger(__name__)
_BATCH = 256  # documents per Upsert: far below the message-size limit for texts of a few KiB


class SemsearchDocumentStore:
    """Documents in one collection of a semsearch server, which embeds their text itself.

    Writes keep ``id``, ``content`` and ``meta`` (with their Python kinds); a Document's own ``embedding`` is
    ignored (logged once per store), since queries are embedded by the server's model and vectors from another
    model would not be comparable. Filters use Haystack's syntax and rules (see ``filters.py``); retrieval is by
    query text in dense, lexical (BM25) or hybrid mode (see the retrievers).

    Args:
        address: the server's host:port (default ``SEMSEARCH_ADDRESS`` or localhost:50051).
        collection: the collection; created on first use if it does not exist.
        api_key: a ``Secret`` (default: the ``SEMSEARCH_API_KEY`` variable, if set) or a plain string.
        timeout: default deadline of every call, in seconds.
    """

    def __init__(
        self,
        address: str | None = None,
        collection: str = "default",
        api_key: Secret | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if api_key is None:
            api_key = Secret.from_env_var("SEMSEARCH_API_KEY", strict=False)
        elif isinstance(api_key, str):
            api_key = Secret.from_token(api_key)
        self.address = address
        self.collection = collection
        self.api_key = api_key
        self.timeout = timeout
        self.client = SearchClient(address, timeout=timeout, api_key=api_key.resolve_value() or "")
        self._async = AsyncTwin(self.client)
        self._ready = False
        self._ignored_embedding = WarnOnce(
            logger,
            f"SemsearchDocumentStore({collection!r}) ignores the Documents' own embeddings: the semsearch server "
            "embeds each text with its model, which also embeds the queries",
        )

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, address=self.address, collection=self.collection, api_key=self.api_key.to_dict(), timeout=self.timeout
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemsearchDocumentStore:
        data = {**data, "init_parameters": dict(data["init_parameters"])}
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)

    # -- the collection ------------------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._ready:
            ensure_collection(self.client, self.collection)
            self._ready = True

    async def _ensure_async(self):
        client = self._async.get()
        if not self._ready:
            await ensure_collection_async(client, self.collection)
            self._ready = True
        return client

    # -- the DocumentStore protocol ------------------------------------------------------------------------------
    def count_documents(self) -> int:
        self._ensure()
        return self.client.count(collection=self.collection)

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        """Every document the filter matches (all without one), in ascending id order."""
        where = convert_filters(filters)
        self._ensure()
        return [from_semsearch(d) for d in scroll_all(self.client, self.collection, where)]

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Writes documents; NONE means FAIL. Returns how many were written.

        Raises:
            DuplicateDocumentError: FAIL, and an id exists already or twice among `documents`.
            ValueError: not a list of Documents, or one without content.
        """
        documents = self._check(documents)
        self._ensure()
        existing = {d.id for d in self.client.get(_unique_ids(documents), collection=self.collection)}
        batch = _apply_policy(documents, policy, existing)
        for start in range(0, len(batch), _BATCH):
            self.client.upsert(batch[start : start + _BATCH], collection=self.collection)
        return len(batch)

    def delete_documents(self, document_ids: list[str]) -> None:
        """Deletes these ids; unknown ones are ignored."""
        self._ensure()
        if document_ids:
            self.client.delete(list(document_ids), collection=self.collection)

    # -- extended operations -------------------------------------------------------------------------------------
    def delete_all_documents(self, recreate_index: bool = False) -> None:
        """Deletes every document; with recreate_index the collection is dropped and created again."""
        self._ensure()
        if recreate_index:
            self.client.delete_collection(self.collection)
            self.client.create_collection(self.collection)
        else:
            self.client.delete(collection=self.collection, where=MATCH_ALL)

    def delete_by_filter(self, filters: dict[str, Any]) -> int:
        """Deletes every document the filter matches, atomically; returns how many."""
        where = _required(filters)
        self._ensure()
        return self.client.delete(collection=self.collection, where=where)

    def update_by_filter(self, filters: dict[str, Any], meta: dict[str, Any]) -> int:
        """Sets these meta fields on every document the filter matches (texts untouched); returns how many."""
        where = _required(filters)
        self._ensure()
        return self.client.update_attributes(set=_meta(meta), collection=self.collection, where=where)

    def count_documents_by_filter(self, filters: dict[str, Any]) -> int:
        where = convert_filters(filters)
        self._ensure()
        return self.client.count(collection=self.collection, where=where)

    # -- async twins ---------------------------------------------------------------------------------------------
    async def count_documents_async(self) -> int:
        client = await self._ensure_async()
        return await client.count(collection=self.collection)

    async def filter_documents_async(self, filters: dict[str, Any] | None = None) -> list[Document]:
        where = convert_filters(filters)
        client = await self._ensure_async()
        return [from_semsearch(d) for d in await scroll_all_async(client, self.collection, where)]

    async def write_documents_async(
        self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE
    ) -> int:
        documents = self._check(documents)
        client = await self._ensure_async()
        existing = {d.id for d in await client.get(_unique_ids(documents), collection=self.collection)}
        batch = _apply_policy(documents, policy, existing)
        for start in range(0, len(batch), _BATCH):
            await client.upsert(batch[start : start + _BATCH], collection=self.collection)
        return len(batch)

    async def delete_documents_async(self, document_ids: list[str]) -> None:
        client = await self._ensure_async()
        if document_ids:
            await client.delete(list(document_ids), collection=self.collection)

    async def delete_all_documents_async(self, recreate_index: bool = False) -> None:
        client = await self._ensure_async()
        if recreate_index:
            await client.delete_collection(self.collection)
            await client.create_collection(self.collection)
        else:
            await client.delete(collection=self.collection, where=MATCH_ALL)

    async def delete_by_filter_async(self, filters: dict[str, Any]) -> int:
        where = _required(filters)
        client = await self._ensure_async()
        return await client.delete(collection=self.collection, where=where)

    async def update_by_filter_async(self, filters: dict[str, Any], meta: dict[str, Any]) -> int:
        where = _required(filters)
        client = await self._ensure_async()
        return await client.update_attributes(set=_meta(meta), collection=self.collection, where=where)

    async def count_documents_by_filter_async(self, filters: dict[str, Any]) -> int:
        where = convert_filters(filters)
        client = await self._ensure_async()
        return await client.count(collection=self.collection, where=where)

    # -- retrieval (the retrievers call these) -------------------------------------------------------------------
    def search(
        self, query: str, mode: str = "dense", filters: dict[str, Any] | None = None, top_k: int = 10
    ) -> list[Document]:
        """The top_k documents for the query text, best first, each with its score."""
        where = convert_filters(filters)
        self._ensure()
        hits = self.client.search(query, collection=self.collection, top_k=top_k, mode=_mode(mode), where=where)
        return [from_semsearch(h) for h in hits]

    async def search_async(
        self, query: str, mode: str = "dense", filters: dict[str, Any] | None = None, top_k: int = 10
    ) -> list[Document]:
        where = convert_filters(filters)
        client = await self._ensure_async()
        hits = await client.search(query, collection=self.collection, top_k=top_k, mode=_mode(mode), where=where)
        return [from_semsearch(h) for h in hits]

    # -- helpers -------------------------------------------------------------------------------------------------
    def _check(self, documents: Iterable[Document]) -> list[Document]:
        if isinstance(documents, str | bytes) or not isinstance(documents, Iterable):
            raise ValueError("write_documents takes a list of Documents")
        documents = list(documents)
        if any(not isinstance(d, Document) for d in documents):
            raise ValueError("write_documents takes a list of Documents")
        if any(d.embedding is not None or d.sparse_embedding is not None for d in documents):
            self._ignored_embedding()
        return documents


def _apply_policy(documents: list[Document], policy: DuplicatePolicy, existing: set[str]) -> list:
    """The semsearch documents to upsert under `policy` (NONE is FAIL), one per id."""
    if policy == DuplicatePolicy.NONE:
        policy = DuplicatePolicy.FAIL
    chosen: dict[str, Document] = {}
    for document in documents:
        if policy == DuplicatePolicy.FAIL and (document.id in existing or document.id in chosen):
            raise DuplicateDocumentError(f"ID '{document.id}' already exists.")
        if policy == DuplicatePolicy.SKIP and (document.id in existing or document.id in chosen):
            logger.warning("ID %r already exists: skipped", document.id)
            continue
        chosen[document.id] = document  # OVERWRITE: the last one with an id wins
    return [to_semsearch(d) for d in chosen.values()]


def _unique_ids(documents: list[Document]) -> list[str]:
    return list(dict.fromkeys(d.id for d in documents))


def _required(filters: dict[str, Any]):
    where = convert_filters(filters)
    if where is None:
        raise ValueError("a filter is required: use delete_all_documents() to delete everything")
    return where


def _meta(meta: dict[str, Any]) -> dict[str, Any]:
    return to_semsearch(Document(id="-", content="", meta=meta)).metadata


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
