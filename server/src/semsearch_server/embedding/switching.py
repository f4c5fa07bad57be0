"""Serving on the torch model while a first start builds the fast engines, then on those.

A first start (nothing cached for this model) has to load torch anyway: to describe the model, to
export it for ONNX Runtime and OpenVINO and to check that those agree with it. The exports and the
checks take most of a first start (measured here: 25-40 s of 40-56 s on a shared machine), and
nothing in them is needed to answer a search correctly: torch is the reference the other engines
are checked against. So a first start serves on torch as soon as the model is loaded and switches
to the faster engines once they are built and checked in the background; later starts find all of
it cached and start on the fast engines directly.

Until the single-query engine is built, small requests (a search's query) do not wait for the bulk
request running on torch or OpenVINO: torch embeds them beside it (`Interim`), as a plain
sentence-transformers loop serving a query while it embeds a batch would, and once OpenVINO serves the
batches, the same IR compiled for one query does (`Interim.take_small_requests_on`); and a large request runs in
chunks, so that the engine switched to takes over the rest of it.

Vectors from torch and from the engine that replaces it agree to cosine >= 0.9999 (the agreement
check is what allows the switch), so documents written before the switch are searched like those
written after it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from semsearch_server.embedding.base import Embedder, EmbedderWrapper, FingerprintDescribed, ModelFingerprint
from semsearch_server.embedding.routing import SMALL_REQUEST_TEXTS, SMALL_REQUEST_TEXTS_WHILE_BUSY, SizeRoutedEmbedder
from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder


class SwitchingEmbedder(EmbedderWrapper):
    """Delegates to one engine until `switch_to` hands it another; calls already running finish on the old one.

    Attributes:
        inner: the engine answering new calls now.
        switched: set once `switch_to` has run (tests and start-up logs wait on it).
    """

    def __init__(self, first: Embedder) -> None:
        super().__init__(first)
        self.switched = threading.Event()

    def switch_to(self, engine: Embedder) -> None:
        if engine.dimension != self.inner.dimension:
            raise ValueError(f"cannot switch engines: dimension {self.inner.dimension} -> {engine.dimension}")
        self.inner = engine  # one attribute store: a call sees the old engine or the new one, never a mix
        self.switched.set()

    def encode(self, texts: list[str]) -> np.ndarray:
        chunk = getattr(self.inner, "chunk_texts", 0)
        if not chunk or len(texts) <= chunk:
            return self.inner.encode(texts)
        # A large request while the engines are being built: in chunks, each on the engine serving when
        # it starts, so that a switch takes effect within one chunk rather than after the whole request.
        return np.concatenate([self.inner.encode(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])

    @property
    def serves_small_calls_while_busy(self) -> bool:
        return bool(getattr(self.inner, "serves_small_calls_while_busy", False))

    def __getattr__(self, name: str) -> Any:
        # What concrete engines carry beyond the protocol (model_path, small, close) is the current one's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class SwitchingExplainer:
    """Explains with one explainer until `switch_to` hands it another (the one of the new engine)."""

    def __init__(self, first: Any) -> None:
        self.current = first

    def switch_to(self, explainer: Any) -> None:
        self.current = explainer

    @property
    def vectors_match_search(self) -> bool:
        return bool(getattr(self.current, "vectors_match_search", False))

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        return self.current.explain(*args, **kwargs)


class _TorchBeside(FingerprintDescribed):
    """torch's `encode_beside` as an engine: a call that does not wait for the one torch is running."""

    def __init__(self, torch: SentenceTransformerEmbedder) -> None:
        self._torch = torch

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._torch.fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._torch.encode_beside(texts)

    def token_counts(self, texts: list[str]) -> list[int]:
        return self._torch.token_counts(texts)


class Interim(SizeRoutedEmbedder):
    """What a first start serves on while it builds: `inner` (torch, then OpenVINO) for batches, torch beside
    it for small requests, which so never queue behind a bulk request; described as `inner` alone.

    Args:
        inner: the batch engine.
        torch: the loaded torch model (the reference every engine is checked against).
        small_max_texts_while_busy: the largest request torch takes beside a running batch.
    """

    def __init__(
        self,
        inner: Embedder,
        torch: SentenceTransformerEmbedder,
        small_max_texts_while_busy: int = SMALL_REQUEST_TEXTS_WHILE_BUSY,
    ) -> None:
        super().__init__(inner, _TorchBeside(torch), small_max_texts_while_busy=small_max_texts_while_busy)
        self._small_max = 0  # while `inner` is idle it takes small requests too (OpenVINO: faster than torch)

    # Any request larger than one the latency engine would take runs in MicroBatchingEmbedder's bulk
    # lane: grouped with a search's query, a torch upsert of 16 abstracts kept it waiting 3-8 s under load.
    bulk_above_texts = SMALL_REQUEST_TEXTS
    # SwitchingEmbedder cuts larger requests into chunks of this many texts: an UpsertStream's group of
    # 1,024 abstracts on torch, once started, would run on torch for minutes after OpenVINO took over.
    chunk_texts = 64

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.inner.fingerprint

    def take_small_requests_on(self, engine: Embedder) -> None:
        """Small requests go to `engine` from now on, whether `inner` is busy or not (an OpenVINO model
        compiled for single queries: beside the batches it answers a query 2-4x sooner than torch)."""
        self.small = engine  # one attribute store: a call sees torch or the new engine
        self._small_max = SMALL_REQUEST_TEXTS
