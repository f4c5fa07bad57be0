"""Domain types the core works with (transport converts protobuf messages to and from these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, str]


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
class CollectionStatus:
    name: str
    document_count: int
    index: IndexSpec
    state: CollectionState
    message: str = ""
    index_trained: bool = True
