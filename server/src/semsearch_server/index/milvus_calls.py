"""The Milvus store's layout (property keys, partitions, marker rows, Milvus's limits) and the helpers
every request goes through: expressions, row decoding, and Milvus's errors as the domain's."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from semsearch_server.domain import Document
from semsearch_server.errors import SemsearchError, StoreUnreachable
from semsearch_server.filtering import attributes_from_json
from semsearch_server.index.base import CollectionBroken
from semsearch_server.index.milvus_filters import quote

SETTINGS_KEY = "semsearch.settings"
FINGERPRINT_KEY = "semsearch.fingerprint"
FORMAT_KEY = "semsearch.format"
FORMAT_VERSION = "1"
MAX_TEXT_BYTES = 65_535  # Milvus VARCHAR limit
MAX_ID_BYTES = 1_024
MAX_TOPK = 16_384  # Milvus's largest search limit

STALE_SECONDS = 600
# Rows written by one store between flushes (see upsert).
FLUSH_ROWS = 2048
# Primary keys per lookup expression.
KEY_CHUNK = 1000
INSERT_CHUNK = 256
MARKER = -1
# Passage rows live in the default partition, heads and commit markers in META, so that a search, limited to
# the passages' partition, never visits them: with one head per document they were half the collection's
# rows and vectors (zero vectors), and a search over both took 1.5-1.9x as long (30k documents, measured).
# Reads by primary key and expressions span both partitions.
PASSAGES = "_default"
META = "meta"
HEAD = -2
WORD = re.compile(r"\w+", re.UNICODE)
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}

T = TypeVar("T")


def in_(field: str, values: Sequence[Any]) -> str:
    items = ", ".join(quote(v) if isinstance(v, str) else str(int(v)) for v in values)
    return f"{field} in [{items}]"


def row_document(row: Mapping[str, Any]) -> Document:
    """The Document a passage-0 row holds (its text and metadata)."""
    return Document(id=row["doc_id"], text=row["text"], attributes=attributes_from_json(row["meta"]))


def and_(*parts: str) -> str:
    return " and ".join(f"({p})" for p in parts if p)


def is_unreachable(exc: BaseException) -> bool:
    """A Milvus that cannot be reached or did not answer in time (not one that rejected the request)."""
    import grpc

    for e in (exc, exc.__cause__):
        if isinstance(e, grpc.RpcError) and e.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            return True
        if type(e).__name__ in ("MilvusUnavailableException", "ConnectionNotExistException"):
            return True
        if getattr(e, "code", None) == 2:  # pymilvus: "Fail connecting to server"
            return True
        text = str(e).lower()
        if any(s in text for s in ("fail connecting", "unavailable", "deadline exceeded", "connection refused")):
            return True
    return False


def is_released(exc: BaseException | None) -> bool:
    """A request refused because the collection is not loaded (Milvus released it, e.g. after a restart)."""
    text = str(exc).lower()
    return exc is not None and (getattr(exc, "code", None) == 101 or "released" in text or "not loaded" in text)


def call(what: str, fn: Callable[[], T]) -> T:
    """Runs one Milvus request; a Milvus that cannot be reached becomes the domain error Unavailable."""
    try:
        return fn()
    except SemsearchError:
        raise
    except Exception as exc:  # pymilvus raises MilvusException and grpc errors alike
        if is_unreachable(exc):
            raise StoreUnreachable(f"Milvus is unreachable ({what}): {exc}; retry when it is back") from exc
        raise CollectionBroken(f"Milvus rejected {what}: {exc}") from exc
