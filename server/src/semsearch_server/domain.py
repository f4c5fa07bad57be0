"""Domain types shared by core, embedding and index (transport converts protobuf messages to and from these).

They sit below every other package so that none of core/, index/ or embedding/ imports another
for its types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


def string_valued(attributes: Mapping[str, Any]) -> dict[str, str]:
    """The string-valued attributes: the `metadata` view old clients read (filtering.values has the kinds)."""
    return {key: value for key, value in attributes.items() if isinstance(value, str)}


@dataclass(frozen=True)
class Document:
    """A stored text. attributes holds typed values (str, int, float, bool, datetime, tuples of those)."""

    id: str
    text: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> dict[str, str]:
        return string_valued(self.attributes)


@dataclass(frozen=True)
class Passage:
    """A window of a document's text: ``text[start:end]``; index counts the document's passages from 0."""

    index: int
    start: int
    end: int


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is what the hits are ranked by in the mode searched."""

    id: str
    score: float
    text: str
    attributes: Mapping[str, Any]
    dense_score: float = 0.0
    lexical_score: float = 0.0
    passage: Passage | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return string_valued(self.attributes)


class SearchMode(StrEnum):
    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


class Fusion(StrEnum):
    WEIGHTED = "weighted"
    RRF = "rrf"


@dataclass(frozen=True)
class HybridParams:
    """How HYBRID fuses the dense and the lexical list (defaults: the better fusion on the benchmark)."""

    fusion: Fusion = Fusion.WEIGHTED
    # 0.6: the issue's own reference weighting of passages and BM25. On SciFact train it scores 0.748
    # nDCG@10 against 0.745 for 0.5 and 0.736 for 0.4, and within 0.001 at candidate pools of 50 to 400
    # (benchmarks/RESULTS.md): a plateau, not a peak tuned to the split.
    dense_weight: float = 0.6
    rrf_k: int = 60


@dataclass(frozen=True)
class PassageConfig:
    """How a collection splits long texts. window_tokens 0: the model's window less its special tokens."""

    enabled: bool = True
    window_tokens: int = 0
    overlap_tokens: int = 0

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "window_tokens": self.window_tokens, "overlap_tokens": self.overlap_tokens}

    @classmethod
    def from_dict(cls, data: dict | None) -> PassageConfig:
        if data is None:  # collections made before passages existed: one vector per document
            return cls(enabled=False)
        return cls(
            enabled=bool(data.get("enabled", True)),
            window_tokens=int(data.get("window_tokens", 0)),
            overlap_tokens=int(data.get("overlap_tokens", 0)),
        )


class IndexKind(StrEnum):
    FLAT = "flat"
    HNSW = "hnsw"
    IVF = "ivf"


@dataclass(frozen=True)
class IndexSpec:
    """How a collection's vectors are indexed; chosen at CreateCollection and kept in its manifest."""

    kind: IndexKind = IndexKind.FLAT
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: chosen from the collection size when the index is trained
    ivf_nprobe: int = 16

    def to_dict(self) -> dict:
        return {
            "kind": self.kind.value,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "hnsw_ef_search": self.hnsw_ef_search,
            "ivf_nlist": self.ivf_nlist,
            "ivf_nprobe": self.ivf_nprobe,
        }

    @classmethod
    def from_dict(cls, data: dict) -> IndexSpec:
        return cls(
            kind=IndexKind(data.get("kind", "flat")),
            hnsw_m=int(data.get("hnsw_m", 32)),
            hnsw_ef_construction=int(data.get("hnsw_ef_construction", 200)),
            hnsw_ef_search=int(data.get("hnsw_ef_search", 128)),
            ivf_nlist=int(data.get("ivf_nlist", 0)),
            ivf_nprobe=int(data.get("ivf_nprobe", 16)),
        )


class CollectionState(StrEnum):
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class CollectionSettings:
    """Everything chosen at CreateCollection and kept with the collection."""

    index: IndexSpec = field(default_factory=IndexSpec)
    passages: PassageConfig = field(default_factory=PassageConfig)
    default_mode: SearchMode = SearchMode.DENSE


@dataclass(frozen=True)
class CollectionStatus:
    name: str
    document_count: int
    index: IndexSpec
    state: CollectionState
    message: str = ""
    index_trained: bool = True
    passages: PassageConfig = field(default_factory=PassageConfig)
    default_mode: SearchMode = SearchMode.DENSE


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot file of a collection (local store): what ListSnapshots shows."""

    name: str
    collection: str
    created_at: float  # seconds since the epoch (UTC)
    size_bytes: int
    document_count: int
    model_id: str


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
