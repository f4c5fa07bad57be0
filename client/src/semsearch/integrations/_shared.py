"""What the adapters share: the asyncio twin of a SearchClient, made inside the loop that uses it."""

from __future__ import annotations

import asyncio
import logging

from semsearch.aio import AsyncSearchClient
from semsearch.client import SearchClient
from semsearch.filters import any_of, not_

# Every document: an empty `any` matches none, so its negation matches all (Delete needs a filter to delete all).
MATCH_ALL = not_(any_of())


class AsyncTwin:
    """An AsyncSearchClient built lazily from a SearchClient's settings, one per running event loop.

    A grpc.aio channel belongs to the loop it was made in; frameworks (and pytest-asyncio) may run each call in
    a new loop, so the twin is rebuilt when the running loop is another one. A client given explicitly is used
    as it is.
    """

    def __init__(self, client: SearchClient, given: AsyncSearchClient | None = None) -> None:
        self._client = client
        self._given = given
        self._made: tuple[asyncio.AbstractEventLoop, AsyncSearchClient] | None = None

    def get(self) -> AsyncSearchClient:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._made is None or self._made[0] is not loop:
            self._made = (loop, AsyncSearchClient(**self._client.settings))
        return self._made[1]


class WarnOnce:
    """Logs one message the first time it is called (per adapter instance), then stays quiet."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self._logger = logger
        self._message = message
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._logger.warning(self._message)


def scroll_all(client: SearchClient, collection: str, where=None) -> list:
    """Every document `where` matches, in ascending id order (Scroll, page after page)."""
    documents, cursor = [], ""
    while True:
        page = client.scroll(collection=collection, where=where, limit=10_000, cursor=cursor)
        documents.extend(page.documents)
        cursor = page.next_cursor
        if not cursor:
            return documents


async def scroll_all_async(client: AsyncSearchClient, collection: str, where=None) -> list:
    documents, cursor = [], ""
    while True:
        page = await client.scroll(collection=collection, where=where, limit=10_000, cursor=cursor)
        documents.extend(page.documents)
        cursor = page.next_cursor
        if not cursor:
            return documents


def ensure_collection(client: SearchClient, collection: str) -> None:
    """Creates the collection unless it exists."""
    from semsearch.errors import AlreadyExistsError

    try:
        client.create_collection(collection)
    except AlreadyExistsError:
        pass


async def ensure_collection_async(client: AsyncSearchClient, collection: str) -> None:
    from semsearch.errors import AlreadyExistsError

    try:
        await client.create_collection(collection)
    except AlreadyExistsError:
        pass


MODES = ("dense", "lexical", "hybrid")
