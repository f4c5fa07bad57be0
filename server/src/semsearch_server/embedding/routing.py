"""Two engines for one model: the fastest for a single query, the fastest for a batch.

On this project's CPU, OpenVINO bf16 embeds batches ~2x faster than ONNX Runtime fp32, while ONNX
Runtime, running a graph with fused attention, answers a single short query in about half the time
(p50 2.6-3.4 against 5.0-6.9 ms). Both are checked against torch at start-up, so which engine embedded
a text changes its vector by less than the check allows.

Having two engines also keeps searches moving during a large upsert: while the batch engine is busy,
small requests go to the other one instead of waiting for it. On 2 cores, a one-text query embedded by
ONNX Runtime beside a 1,024-text OpenVINO call took p50 6.7-7.1 ms (alone 3.3 ms); queued behind the
call, it waited 0.7 s p50.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from semsearch_server.embedding.base import Embedder, EmbedderWrapper, ModelFingerprint

SMALL_REQUEST_TEXTS = 4
SMALL_REQUEST_TEXTS_WHILE_BUSY = 32


class SizeRoutedEmbedder(EmbedderWrapper):
    """Sends requests of at most `small_max_texts` texts to `small`, everything else to `inner`.

    While `inner` is running a call, requests of up to `small_max_texts_while_busy` texts go to `small`
    too; larger ones wait for `inner`. So the two engines may run at once, one call each: callers that
    want that (MicroBatchingEmbedder's bulk lane) can see it in `serves_small_calls_while_busy`.

    Args:
        inner: the batch (throughput) engine; also describes the model.
        small: the single-query (latency) engine of the same model.
        small_max_texts: the largest request the latency engine takes.
        small_max_texts_while_busy: the largest request it takes while the batch engine is busy.

    Attributes:
        small_max_texts_while_busy: as given (at least `small_max_texts`).
    """

    serves_small_calls_while_busy = True

    def __init__(
        self,
        inner: Embedder,
        small: Embedder,
        small_max_texts: int = SMALL_REQUEST_TEXTS,
        small_max_texts_while_busy: int = SMALL_REQUEST_TEXTS_WHILE_BUSY,
    ) -> None:
        super().__init__(inner)
        self.small = small
        self._small_max = small_max_texts
        self.small_max_texts_while_busy = max(small_max_texts, small_max_texts_while_busy)
        self._inner_calls = 0  # calls running on (or waiting for) inner
        self._calls_lock = threading.Lock()
        self._fingerprint = dataclasses.replace(
            inner.fingerprint,
            backend=f"{inner.fingerprint.backend} (batches) + {small.fingerprint.backend} (<= {small_max_texts} texts)",
        )

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._calls_lock:
            limit = self.small_max_texts_while_busy if self._inner_calls else self._small_max
            to_small = len(texts) <= limit
            if not to_small:
                self._inner_calls += 1
        if to_small:
            return self.small.encode(texts)
        try:
            return self.inner.encode(texts)
        finally:
            with self._calls_lock:
                self._inner_calls -= 1
