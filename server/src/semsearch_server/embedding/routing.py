"""Two engines for one model: the fastest for a single query, the fastest for a batch.

On this project's CPU, OpenVINO bf16 embeds batches ~2x faster than ONNX Runtime fp32, while ONNX
Runtime, running a graph with fused attention, answers a single short query in about half the time
(p50 2.6-3.4 against 5.0-6.9 ms). Both are checked against torch at start-up, so which engine embedded
a text changes its vector by less than the check allows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from semsearch_server.embedding.base import Embedder, EmbedderWrapper, ModelFingerprint

SMALL_REQUEST_TEXTS = 4


class SizeRoutedEmbedder(EmbedderWrapper):
    """Sends requests of at most `small_max_texts` texts to `small`, everything else to `inner`.

    Args:
        inner: the batch (throughput) engine; also describes the model.
        small: the single-query (latency) engine of the same model.
        small_max_texts: the largest request the latency engine takes.
    """

    def __init__(self, inner: Embedder, small: Embedder, small_max_texts: int = SMALL_REQUEST_TEXTS) -> None:
        super().__init__(inner)
        self.small = small
        self._small_max = small_max_texts
        self._fingerprint = dataclasses.replace(
            inner.fingerprint,
            backend=f"{inner.fingerprint.backend} (batches) + {small.fingerprint.backend} (<= {small_max_texts} texts)",
        )

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        engine = self.small if len(texts) <= self._small_max else self.inner
        return engine.encode(texts)
