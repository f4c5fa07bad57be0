"""The Embedder interface the core depends on, and the model fingerprint that guards indexes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ModelFingerprint:
    """Everything about a model that decides which vectors it produces.

    Two fingerprints are compatible when vectors from one can be searched with queries from the other:
    the same weights, configuration, dimension, pooling, normalisation and window. The backend
    (torch, onnx, openvino) is recorded but not compared: every backend is checked at start-up to
    agree with torch to cosine >= 0.9999.
    """

    model_name: str
    weights_sha256: str
    dimension: int
    pooling: str
    normalized: bool
    max_seq_length: int
    backend: str

    def compatibility_key(self) -> tuple:
        return (
            self.weights_sha256,
            self.dimension,
            self.pooling,
            self.normalized,
            self.max_seq_length,
        )

    def is_compatible(self, other: ModelFingerprint) -> bool:
        return self.compatibility_key() == other.compatibility_key()

    def short(self) -> str:
        return (
            f"{self.model_name} (weights sha256 {self.weights_sha256[:12]}, dim {self.dimension}, "
            f"{self.pooling} pooling, normalized={self.normalized}, max_seq_length {self.max_seq_length})"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelFingerprint:
        return cls(
            model_name=str(data["model_name"]),
            weights_sha256=str(data["weights_sha256"]),
            dimension=int(data["dimension"]),
            pooling=str(data["pooling"]),
            normalized=bool(data["normalized"]),
            max_seq_length=int(data["max_seq_length"]),
            backend=str(data.get("backend", "torch")),
        )


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
