"""Checks every request field against the configured limits before anything is changed.

Messages name the field (with its index in a list) and say what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from semsearch_server.config import Limits
from semsearch_server.domain import Document, HybridParams, IndexKind, IndexSpec, SearchMode, string_valued
from semsearch_server.errors import InvalidArgument
from semsearch_server.filtering import validate_attributes

DEFAULT_COLLECTION = "default"
DEFAULT_TOP_K = 10
DEFAULT_SCROLL_LIMIT = 100
MAX_SCROLL_LIMIT = 10_000

# Texts, queries and metadata values are any valid UTF-8 (protobuf checks that), control characters
# and NUL included: real corpora carry them (PDF form feeds, mojibake), and they are stored and returned
# byte for byte; only the model and the lexical index see them normalised away. Ids and metadata keys
# are identifiers: no control characters at all.
_IDENT_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: str, limit: int = 64) -> str:
    """A request value as an error message quotes it: its start and length when it is long."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


class Validator:
    """Validates requests against one set of limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._name_pattern = re.compile(limits.collection_name_pattern)

    def collection_name(self, name: str, field: str = "collection", allow_empty: bool = True) -> str:
        """Returns the collection's name ('' means 'default')."""
        if name == "" and allow_empty:
            return DEFAULT_COLLECTION
        if not self._name_pattern.fullmatch(name) or ".." in name or "/" in name or "\\" in name:
            raise InvalidArgument(
                f"{field}: {_shown(name)} is not a valid collection name; names must match "
                f"{self.limits.collection_name_pattern}"
            )
        return name

    def documents(self, docs: Sequence[Document], field: str = "documents") -> None:
        lim = self.limits
        if not docs:
            raise InvalidArgument(f"{field}: at least one document is required")
        if len(docs) > lim.max_documents_per_request:
            raise InvalidArgument(
                f"{field}: {len(docs)} documents in one request; at most {lim.max_documents_per_request} allowed "
                "(split the batch, or use UpsertStream)"
            )
        seen: dict[str, int] = {}
        for i, doc in enumerate(docs):
            where = f"{field}[{i}]"
            self._id(doc.id, f"{where}.id")
            if doc.id in seen:
                raise InvalidArgument(
                    f"{where}.id: duplicate id {doc.id!r} (also at {field}[{seen[doc.id]}]); "
                    "ids must be unique within a request"
                )
            seen[doc.id] = i
            self.text(doc.text, f"{where}.text")
            self.attributes(doc.attributes, f"{where}.attributes", f"{where}.metadata")

    def ids(self, ids: Sequence[str], field: str = "ids") -> None:
        if not ids:
            raise InvalidArgument(f"{field}: at least one id is required")
        if len(ids) > self.limits.max_ids_per_request:
            raise InvalidArgument(
                f"{field}: {len(ids)} ids in one request; at most {self.limits.max_ids_per_request} allowed"
            )
        seen: set[str] = set()
        for i, doc_id in enumerate(ids):
            self._id(doc_id, f"{field}[{i}]")
            if doc_id in seen:
                raise InvalidArgument(f"{field}[{i}]: duplicate id {doc_id!r}; ids must be unique within a request")
            seen.add(doc_id)

    def text(self, text: str, field: str) -> None:
        if not text or not text.strip():
            raise InvalidArgument(f"{field}: must not be empty or blank")
        if len(text) > self.limits.max_text_chars:
            raise InvalidArgument(f"{field}: {len(text)} characters; at most {self.limits.max_text_chars} allowed")

    def queries(self, queries: Sequence[str], field: str = "queries") -> None:
        if not queries:
            raise InvalidArgument(f"{field}: at least one query is required")
        if len(queries) > self.limits.max_queries_per_request:
            raise InvalidArgument(
                f"{field}: {len(queries)} queries; at most {self.limits.max_queries_per_request} allowed"
            )
        for i, query in enumerate(queries):
            self.text(query, f"{field}[{i}]")

    def texts(self, texts: Sequence[str], field: str = "texts") -> None:
        if not texts:
            raise InvalidArgument(f"{field}: at least one text is required")
        if len(texts) > self.limits.max_documents_per_request:
            raise InvalidArgument(
                f"{field}: {len(texts)} texts; at most {self.limits.max_documents_per_request} allowed"
            )
        for i, text in enumerate(texts):
            self.text(text, f"{field}[{i}]")

    def top_k(self, top_k: int) -> int:
        """Returns the effective top_k (0 means 10)."""
        if top_k == 0:
            return DEFAULT_TOP_K
        if not 1 <= top_k <= self.limits.max_top_k:
            raise InvalidArgument(
                f"top_k: {top_k} is out of range; allowed 1-{self.limits.max_top_k} (0 means {DEFAULT_TOP_K})"
            )
        return top_k

    def min_score(self, min_score: float, mode: SearchMode = SearchMode.DENSE) -> float:
        """min_score bounds the score the mode ranks by: cosine (DENSE), BM25 (LEXICAL), fused (HYBRID)."""
        if not math.isfinite(min_score):
            raise InvalidArgument(f"min_score: {min_score} is not a finite number")
        if mode is SearchMode.DENSE and not -1.0 <= min_score <= 1.0:
            raise InvalidArgument(f"min_score: {min_score} is out of range; cosine scores lie in [-1, 1]")
        return min_score

    def hybrid(self, params: HybridParams | None, defaults: HybridParams) -> HybridParams:
        """The request's fusion parameters with unset ones (None, 0) taken from the server's defaults."""
        if params is None:
            return defaults
        weight = params.dense_weight or defaults.dense_weight
        if not math.isfinite(weight) or not 0.0 < weight <= 1.0:
            raise InvalidArgument(
                f"hybrid.dense_weight: {params.dense_weight} is out of range; allowed (0, 1] "
                f"(0 means the default, {defaults.dense_weight})"
            )
        rrf_k = params.rrf_k or defaults.rrf_k
        if not 1 <= rrf_k <= 100_000:
            raise InvalidArgument(
                f"hybrid.rrf_k: {params.rrf_k} is out of range; allowed 1-100000 "
                f"(0 means the default, {defaults.rrf_k})"
            )
        return HybridParams(params.fusion or defaults.fusion, weight, rrf_k)

    def filter(self, filt: Mapping[str, str], field: str = "filter") -> None:
        self.metadata(filt, field)

    def attributes(self, attributes: Mapping[str, Any], field: str, strings_field: str | None = None) -> None:
        """Typed attributes: the kinds and API limits (filtering.values), and the server's configured limits
        on keys and string values (the string-valued ones are the `metadata` view: strings_field names them)."""
        self.metadata(string_valued(attributes), strings_field or field)
        lim = self.limits
        if len(attributes) > lim.max_metadata_entries:
            raise InvalidArgument(f"{field}: {len(attributes)} entries; at most {lim.max_metadata_entries} allowed")
        for key in attributes:
            self.attribute_key(key, field)
        validate_attributes(attributes, field)

    def attribute_key(self, key: str, field: str) -> None:
        lim = self.limits
        if not isinstance(key, str) or not key or not key.strip():
            raise InvalidArgument(f"{field}: keys must not be empty or blank")
        if len(key) > lim.max_metadata_key_chars:
            raise InvalidArgument(
                f"{field}: key {key[:40]!r}... is {len(key)} characters; at most {lim.max_metadata_key_chars} allowed"
            )
        if _IDENT_FORBIDDEN.search(key):
            raise InvalidArgument(f"{field}: key {key!r} contains a control character; none are allowed in keys")

    def scroll_limit(self, limit: int) -> int:
        """Documents per Scroll page: 0 means 100, at most 10,000."""
        if limit == 0:
            return DEFAULT_SCROLL_LIMIT
        if not 1 <= limit <= MAX_SCROLL_LIMIT:
            raise InvalidArgument(
                f"limit: {limit} is out of range; allowed 1-{MAX_SCROLL_LIMIT} (0 means {DEFAULT_SCROLL_LIMIT})"
            )
        return limit

    def metadata(self, metadata: Mapping[str, str], field: str) -> None:
        lim = self.limits
        if len(metadata) > lim.max_metadata_entries:
            raise InvalidArgument(f"{field}: {len(metadata)} entries; at most {lim.max_metadata_entries} allowed")
        for key, value in metadata.items():
            if not key or not key.strip():
                raise InvalidArgument(f"{field}: keys must not be empty or blank")
            if len(key) > lim.max_metadata_key_chars:
                raise InvalidArgument(
                    f"{field}: key {key[:40]!r}... is {len(key)} characters; "
                    f"at most {lim.max_metadata_key_chars} allowed"
                )
            if _IDENT_FORBIDDEN.search(key):
                raise InvalidArgument(f"{field}: key {key!r} contains a control character; none are allowed in keys")
            if len(value) > lim.max_metadata_value_chars:
                raise InvalidArgument(
                    f"{field}[{key!r}]: value is {len(value)} characters; "
                    f"at most {lim.max_metadata_value_chars} allowed"
                )

    def index_spec(self, spec: IndexSpec) -> None:
        checks = []
        if spec.kind is IndexKind.HNSW:
            checks = [
                ("index.hnsw.m", spec.hnsw_m, 4, 128),
                ("index.hnsw.ef_construction", spec.hnsw_ef_construction, 8, 4096),
                ("index.hnsw.ef_search", spec.hnsw_ef_search, 1, 4096),
            ]
        elif spec.kind is IndexKind.IVF:
            checks = [("index.ivf.nlist", spec.ivf_nlist, 0, 65536), ("index.ivf.nprobe", spec.ivf_nprobe, 1, 65536)]
        for field, value, low, high in checks:
            if not low <= value <= high:
                raise InvalidArgument(
                    f"{field}: {value} is out of range; allowed {low}-{high} (0 means the server default)"
                )

    def _id(self, doc_id: str, field: str) -> None:
        if not doc_id or not doc_id.strip():
            raise InvalidArgument(f"{field}: must not be empty or blank")
        if len(doc_id) > self.limits.max_id_chars:
            raise InvalidArgument(f"{field}: {len(doc_id)} characters; at most {self.limits.max_id_chars} allowed")
        if _IDENT_FORBIDDEN.search(doc_id):
            raise InvalidArgument(f"{field}: {doc_id!r} contains a control character; none are allowed in ids")
