"""The Embedder interface the core depends on (the model fingerprint lives in domain.py)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from semsearch_server.domain import ModelFingerprint

__all__ = ["Embedder", "EmbedderWrapper", "FingerprintDescribed", "ModelFingerprint"]


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    @property
    def fingerprint(self) -> ModelFingerprint: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_seq_length(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """Returns an array of shape (len(texts), dimension), float32, each row of unit length."""
        ...

    def token_counts(self, texts: list[str]) -> list[int]:
        """Number of tokens (special tokens included) each text has before truncation."""
        ...


class FingerprintDescribed:
    """Mixin: `dimension` and `max_seq_length` read from the class's `fingerprint`."""

    fingerprint: ModelFingerprint

    @property
    def dimension(self) -> int:
        return self.fingerprint.dimension

    @property
    def max_seq_length(self) -> int:
        return self.fingerprint.max_seq_length


class EmbedderWrapper(FingerprintDescribed):
    """Base of embedders that add behaviour around another one (batching, metrics).

    Attributes:
        inner: the wrapped embedder, which does the work and describes the model.
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.inner.fingerprint

    def token_counts(self, texts: list[str]) -> list[int]:
        return self.inner.token_counts(texts)
