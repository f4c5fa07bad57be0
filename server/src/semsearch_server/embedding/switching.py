"""Serving on the torch model while a first start builds the fast engines, then on those.

A first start (nothing cached for this model) has to load torch anyway: to describe the model, to
export it for ONNX Runtime and OpenVINO and to check that those agree with it. The exports and the
checks take most of a first start (measured here: 25-40 s of 40-56 s on a shared machine), and
nothing in them is needed to answer a search correctly: torch is the reference the other engines
are checked against. So a first start serves on torch as soon as the model is loaded and switches
to the faster engines once they are built and checked in the background; later starts find all of
it cached and start on the fast engines directly.

Vectors from torch and from the engine that replaces it agree to cosine >= 0.9999 (the agreement
check is what allows the switch), so documents written before the switch are searched like those
written after it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from semsearch_server.embedding.base import Embedder, EmbedderWrapper


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
        return self.inner.encode(texts)

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
