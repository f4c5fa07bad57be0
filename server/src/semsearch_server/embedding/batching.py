"""Groups concurrent encode() calls into one model call."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from semsearch_server.deadlines import GIVE_UP_POLL_SECONDS, can_give_up, check_give_up, remaining
from semsearch_server.embedding.base import Embedder, EmbedderWrapper
from semsearch_server.errors import DeadlineExceeded


class _Request:
    __slots__ = ("done", "error", "result", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


def _wait_for(attempt: Callable[[float | None], bool], timeout: float | None, interruptible: bool) -> bool:
    """Calls attempt(seconds) (None: no limit) until it succeeds, or until the deadline passes (False); with
    `interruptible`, in steps of GIVE_UP_POLL_SECONDS, asking the call's give-up check between them (which
    raises to end the wait)."""
    if not interruptible:
        return attempt(None if timeout is None else max(timeout, 0.0))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        check_give_up()
        step = GIVE_UP_POLL_SECONDS if deadline is None else min(GIVE_UP_POLL_SECONDS, deadline - time.monotonic())
        if attempt(max(step, 0.0)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


class MicroBatchingEmbedder(EmbedderWrapper):
    """An Embedder that runs the encode() calls of many threads as few, larger model calls.

    The model is called by one thread at a time. A caller that finds the model idle and nobody
    waiting calls it directly, in its own thread, with no wait, so a single client is as fast as
    without batching. Callers that arrive while the model is busy queue up; when it is free, a
    dedicated worker thread takes the queue (up to `max_batch` texts, or one request if that alone
    is larger) and, if more than one request was waiting (load is high), waits at most
    `max_wait_ms` more for others to fill the batch. The group is sorted by length, encoded in one
    inner call, and each caller gets its own rows; if the inner call fails, every caller in the
    group gets the exception.

    A caller with a deadline (``semsearch_server.deadlines``) is not held past it: a queued request
    whose deadline passes leaves the queue (or, already in a running group, its rows are dropped) and
    the caller gets DeadlineExceeded; so does a bulk request still waiting for the bulk lane. A caller with a
    give-up check (``deadlines.give_up_if``: a write whose disk filled meanwhile) is never served directly in
    its own thread, so that its wait can end: it is queued, and leaves the queue (or the group's result) with
    the check's error as soon as the check raises.

    With `bulk_lane`, a request of more than `max_batch` texts (an upsert, say; or more than the inner
    embedder's `bulk_above_texts`, if lower) does not take the model from the others: it runs in its
    caller's thread beside the grouped calls, one bulk request at a time. Only for an inner embedder
    that can serve both at once without one waiting for the other (two engines, routing.py); otherwise
    a search that arrives during a 1,024-text upsert waits for all of it (~0.8 s here).

    Args:
        inner: the embedder doing the work.
        max_batch: texts per grouped call.
        max_wait_ms: the longest a queued request waits for others to join it.
        bulk_lane: run requests of more than `max_batch` texts beside the grouped calls; None: whenever
            the inner embedder says it can (`serves_small_calls_while_busy`), asked per call, since
            a first start switches engines while serving (switching.py).

    Attributes:
        inner: the wrapped embedder.
    """

    def __init__(
        self, inner: Embedder, max_batch: int = 32, max_wait_ms: float = 2.0, bulk_lane: bool | None = False
    ) -> None:
        super().__init__(inner)
        self._max_batch = max_batch
        self._bulk_lane = bulk_lane
        self._bulk_lock = threading.Lock()  # one bulk request at a time
        self._max_wait = max_wait_ms / 1000.0
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._busy = False  # a model call is running, in a caller's thread or the worker's
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
        self._worker.start()

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        timeout = remaining()
        interruptible = can_give_up()
        if len(texts) > self._bulk_above() and self.bulk_lane:
            # The bulk request itself runs in this thread: only its wait for the lane can end early.
            if not self._acquire_bulk_lane(timeout, interruptible):
                raise DeadlineExceeded("the deadline passed while waiting for the model; nothing was embedded")
            try:
                if self._closed:
                    raise RuntimeError("the embedder is closed")
                return self.inner.encode(texts)
            finally:
                self._bulk_lock.release()
        request = _Request(texts)
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedder is closed")
            direct = not self._busy and not self._queue and not interruptible
            if direct:
                self._busy = True
            else:
                self._queue.append(request)
                self._cond.notify_all()
        if direct:
            try:
                return self.inner.encode(texts)
            finally:
                self._release()
        try:
            done = self._wait(request, timeout, interruptible)
        except BaseException:  # the caller gave up: its texts need not be embedded
            self._withdraw(request)
            raise
        if not done:
            self._withdraw(request)
            raise DeadlineExceeded("the deadline passed while waiting for the model; nothing was embedded")
        if request.error is not None:
            raise request.error
        return request.result

    def _bulk_above(self) -> int:
        # An engine that is slow per batch (torch, while a first start builds) asks for a lower bar, so
        # that a search's query never waits in the group queue behind an upsert's texts.
        return min(self._max_batch, getattr(self.inner, "bulk_above_texts", self._max_batch))

    @staticmethod
    def _wait(request: _Request, timeout: float | None, interruptible: bool) -> bool:
        return _wait_for(request.done.wait, timeout, interruptible)

    def _acquire_bulk_lane(self, timeout: float | None, interruptible: bool) -> bool:
        def acquire(seconds: float | None) -> bool:
            return self._bulk_lock.acquire(timeout=-1 if seconds is None else seconds)

        return _wait_for(acquire, timeout, interruptible)

    def _withdraw(self, request: _Request) -> None:
        """Takes a request nobody waits for out of the queue (one already in a running group is left to it)."""
        with self._cond:
            if request in self._queue:
                self._queue.remove(request)

    @property
    def bulk_lane(self) -> bool:
        """Whether requests of more than `max_batch` texts run beside the grouped calls."""
        if self._bulk_lane is None:
            return bool(getattr(self.inner, "serves_small_calls_while_busy", False))
        return self._bulk_lane

    def close(self) -> None:
        """Stops the worker; requests still queued fail, later encode() calls raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            # Only the worker waits for a free model, and only when requests are queued; waking it
            # for nothing after every lone request costs that request a GIL hand-off.
            if self._queue:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._busy or not self._queue):
                    self._cond.wait()
                if self._closed:
                    pending = list(self._queue)
                    self._queue.clear()
                    break
                self._busy = True
                if len(self._queue) > 1:
                    deadline = time.monotonic() + self._max_wait
                    while self._queued_texts() < self._max_batch and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                group = self._take_group()
            try:
                self._encode_group(group)
            finally:
                self._release()
        for request in pending:
            request.error = RuntimeError("the embedder was closed before this request ran")
            request.done.set()

    def _queued_texts(self) -> int:
        return sum(len(r.texts) for r in self._queue)

    def _take_group(self) -> list[_Request]:
        group = [self._queue.popleft()]
        size = len(group[0].texts)
        while self._queue and size + len(self._queue[0].texts) <= self._max_batch:
            size += len(self._queue[0].texts)
            group.append(self._queue.popleft())
        return group

    def _encode_group(self, group: list[_Request]) -> None:
        texts = [text for request in group for text in request.texts]
        # Longest last, so an inner embedder that cuts fixed-size batches pads each to similar lengths.
        order = np.argsort([len(t) for t in texts], kind="stable")
        try:
            vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
            vectors[order] = self.inner.encode([texts[i] for i in order])
        except BaseException as exc:  # noqa: BLE001 - handed to every caller, who re-raises it
            for request in group:
                request.error = exc
                request.done.set()
            return
        start = 0
        for request in group:
            request.result = vectors[start : start + len(request.texts)]
            start += len(request.texts)
            request.done.set()
