"""AsyncSearchClient: SearchClient's methods, arguments, results and errors, awaited on a grpc.aio channel.

Every method is SearchApi's own (client.py): the same request building and response decoding; only
``_invoke`` differs, returning a coroutine, so ``await client.search(...)`` gives what
``SearchClient.search(...)`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from semsearch.client import SearchApi
from semsearch.errors import from_rpc_error

T = TypeVar("T")


class AsyncSearchClient(SearchApi):
    """An asyncio connection to a semsearch server; create it inside the event loop that uses it.

    Args: as SearchClient's (address, timeout, api_key, tls_ca, tls, tls_cert, tls_key, options).
    Every method returns an awaitable of what SearchClient's returns. Use ``async with`` to close it.
    """

    _channels = aio

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _invoke(self, method: str, request, decode: Callable[[Any], T], timeout: float | None) -> T:
        try:
            response = await self._rpc(method)(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:  # grpc.aio.AioRpcError is one
            raise from_rpc_error(exc) from None
        return decode(response)
