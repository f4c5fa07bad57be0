"""Limits for client streams: how many may be open, and how long one may stay silent.

The sync gRPC server gives every open stream a worker thread for as long as it is open, silent or not.
`StreamGate` caps how many streams are open (server-wide and per client address), so together with a
thread pool sized for them (transport/server.py) open streams never take the threads unary calls need.
`StreamFeed` reads a stream's messages in a thread of its own, so the handler can notice a pause (and
store what it has) and a silence past the idle timeout (and end the stream with its own status).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from semsearch_server.config import ServerConfig
from semsearch_server.errors import DeadlineExceeded, ResourceExhausted, SemsearchError

# No message for this long: the stream has paused, and what it sent so far is stored (see upsert_stream).
PAUSE_SECONDS = 0.1
# Messages read ahead of the handler, at most; past it the reader waits and gRPC flow control holds
# the client back, so a stream never buffers more than this many messages beyond its groups.
_READ_AHEAD = 2


@dataclass(frozen=True)
class StreamLimits:
    """The stream options of ServerConfig."""

    max_streams: int = ServerConfig.max_streams
    max_streams_per_peer: int = ServerConfig.max_streams_per_peer
    idle_seconds: float = ServerConfig.stream_idle_seconds
    buffer_bytes: int = ServerConfig.stream_buffer_bytes

    @classmethod
    def from_config(cls, config: ServerConfig) -> StreamLimits:
        return cls(
            config.max_streams, config.max_streams_per_peer, config.stream_idle_seconds, config.stream_buffer_bytes
        )


class StreamCancelled(Exception):
    """The client cancelled the stream, its deadline passed or its connection dropped: nobody is listening."""


def peer_address(peer: str) -> str:
    """A gRPC peer string without its port ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7")."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class StreamGate:
    """Counts open streams and refuses one past `max_streams` (or past `max_streams_per_peer` from one address)."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open = 0
        self._by_address: Counter[str] = Counter()

    @contextlib.contextmanager
    def admit(self, peer: str) -> Iterator[None]:
        """Holds one stream slot for the `with` block.

        Raises:
            ResourceExhausted: the server-wide or the per-address limit is reached; nothing was read.
        """
        address = peer_address(peer)
        per_peer = self.limits.max_streams_per_peer
        with self._lock:
            if self._open >= self.limits.max_streams:
                raise ResourceExhausted(
                    f"too many open UpsertStreams: the server allows max_streams={self.limits.max_streams} at once "
                    "and all are in use; finish a stream before opening another, or retry later"
                )
            if per_peer and self._by_address[address] >= per_peer:
                raise ResourceExhausted(
                    f"too many open UpsertStreams from {address}: the server allows max_streams_per_peer={per_peer} "
                    "from one client address; finish a stream before opening another"
                )
            self._open += 1
            self._by_address[address] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                self._by_address[address] -= 1
                if not self._by_address[address]:
                    del self._by_address[address]


_END = object()


class StreamFeed:
    """A stream's messages, read in a thread of its own so that waiting for them can time out.

    Iterating yields each message, and None once no message has come for `PAUSE_SECONDS` (once per
    silence). It raises DeadlineExceeded once no message has come for `idle_seconds` (0: never), and
    StreamCancelled when the client is gone.
    """

    def __init__(self, requests: Iterator[Any], idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.received = 0
        self._queue: queue.Queue = queue.Queue(maxsize=_READ_AHEAD)
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(requests,), name="stream-reader", daemon=True)
        self._reader.start()

    def _read(self, requests: Iterator[Any]) -> None:
        try:
            for request in requests:
                if not self._put(request):
                    return
            self._put(_END)
        except SemsearchError as exc:  # a message that does not decode (decoding.py): the caller's error
            self._put(exc)
        except Exception as exc:  # grpc.RpcError when the client cancels or the connection drops
            self._put(StreamCancelled(f"the client went away: {exc!r}"))

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=PAUSE_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        last = time.monotonic()
        paused = False
        while True:
            # Until the pause is reported, wake after PAUSE_SECONDS; then sleep until a message or the
            # idle deadline, so a silent stream costs no wake-ups.
            if not paused:
                timeout: float | None = PAUSE_SECONDS
            elif self.idle_seconds:
                timeout = max(0.0, last + self.idle_seconds - time.monotonic())
            else:
                timeout = None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                silent = time.monotonic() - last
                if self.idle_seconds and silent >= self.idle_seconds:
                    raise DeadlineExceeded(
                        f"UpsertStream idle: no message for {silent:.1f} s, past stream_idle_seconds="
                        f"{self.idle_seconds:g}; the server closed the stream"
                    ) from None
                if not paused:
                    paused = True
                    yield None
                continue
            if item is _END:
                return
            if isinstance(item, (StreamCancelled, SemsearchError)):
                raise item
            self.received += 1
            last = time.monotonic()
            paused = False
            yield item

    def close(self) -> None:
        """Stops reading ahead; the reader thread ends once the call is over (gRPC ends its iterator)."""
        self._closed.set()
