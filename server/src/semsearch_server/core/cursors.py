"""Scroll cursors: opaque to clients, checked by the server.

A cursor holds its collection's name and the last id a page returned (the next page starts after it, in
bytewise id order), so a page never repeats or skips a document that stays unchanged, whatever is written
meanwhile, and a cursor of another collection, or a string that is not a cursor, is refused.
"""

from __future__ import annotations

import base64
import binascii
import json

from semsearch_server.errors import InvalidArgument

_VERSION = 1


def encode_cursor(collection: str, after_id: str) -> str:
    data = json.dumps({"v": _VERSION, "c": collection, "a": after_id}, ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, collection: str) -> str:
    """The id a cursor of this collection continues after."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
        version, owner, after = data["v"], data["c"], data["a"]
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise InvalidArgument(
            "cursor: not a cursor this server made; pass a ScrollResponse's next_cursor unchanged, or '' to start"
        ) from None
    if version != _VERSION or not isinstance(after, str) or not isinstance(owner, str):
        raise InvalidArgument("cursor: made by another version of the server; start the scroll again with ''")
    if owner != collection:
        raise InvalidArgument(
            f"cursor: it belongs to a scroll of collection {owner!r}, not {collection!r}; "
            "start a scroll of this collection with ''"
        )
    return after
