"""Haystack Documents to semsearch documents and back.

What is kept: ``id``, ``content`` (the text the server embeds) and ``meta`` with its Python kinds (str, int,
float, bool, datetime, lists of those). What is not: ``embedding`` and ``sparse_embedding`` (the server embeds
the text itself, so a vector computed elsewhere is never stored), ``blob``, and meta keys whose value is None
(Haystack's filters treat a missing field as None, so dropping them changes no filter's answer).
"""

from __future__ import annotations

from typing import Any

from haystack import Document

from semsearch.types import Document as SemsearchDocument
from semsearch.types import Hit

_SCALARS = (str, bool, int, float)


def to_semsearch(document: Document) -> SemsearchDocument:
    """The semsearch document for a Haystack one.

    Raises:
        ValueError: no text content (the server needs text to embed), or a meta value of a kind the service
            does not store (a dict, for instance).
    """
    if not isinstance(document, Document):
        raise ValueError(f"write_documents takes a list of Documents, not {type(document).__name__}")
    if document.content is None:
        raise ValueError(f"Document {document.id!r} has no content: the semsearch server embeds text")
    meta = {key: _check(document.id, key, value) for key, value in document.meta.items() if value is not None}
    return SemsearchDocument(id=document.id, text=document.content, metadata=meta)


def _check(doc_id: str, key: str, value: Any) -> Any:
    from datetime import datetime

    scalars = (*_SCALARS, datetime)
    if isinstance(value, scalars) or isinstance(value, list) and all(isinstance(v, scalars) for v in value):
        return value
    raise ValueError(
        f"Document {doc_id!r}: meta {key!r} is a {type(value).__name__}; semsearch stores str, int, float, bool, "
        "datetime and lists of those"
    )


def from_semsearch(document: SemsearchDocument | Hit) -> Document:
    """A Haystack Document for a stored document or a search hit (with the hit's score)."""
    score = document.score if isinstance(document, Hit) else None
    return Document(id=document.id, content=document.text, meta=dict(document.metadata), score=score)
