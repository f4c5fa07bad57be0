"""Typed attribute values: what a document may carry, how it is checked, stored as JSON and shown in messages.

Attributes are schemaless, so every value carries its kind; the JSON kept in the `metadata` column keeps that
kind exactly (int vs double vs bool, timestamps tagged) while an old all-string map stays byte-for-byte what the
string-only code wrote.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from semsearch_server.errors import InvalidArgument

Scalar = str | int | float | bool | datetime
AttributeValue = Scalar | tuple[Scalar, ...]
Attributes = Mapping[str, AttributeValue]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_KEY_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
_ALLOWED_KINDS = "string, int, double, bool, timestamp or a list of those"


@dataclass(frozen=True)
class AttributeLimits:
    """Per-document attribute limits (API.md: 64 keys, keys 1-256 bytes, strings 64 KiB, lists 1,024)."""

    max_keys: int = 64
    max_key_bytes: int = 256
    max_string_bytes: int = 65536
    max_list_elements: int = 1024


DEFAULT_LIMITS = AttributeLimits()


def _shown(text: str, limit: int = 64) -> str:
    """A request string as a message quotes it: its start and length when it is long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def kind_name(value: object) -> str:
    """The API's name for the value's kind (bool is tested before int: bool subclasses int)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, tuple | list):
        return "list"
    return type(value).__name__


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch (exact integer arithmetic, any time zone)."""
    return (value - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, the fraction only when there is one (trailing zeros dropped)."""
    v = value.astimezone(UTC)
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    if v.microsecond:
        text += "." + f"{v.microsecond:06d}".rstrip("0")
    return text + "Z"


def show_value(value: object) -> str:
    """A value as messages and the text form write it: it parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime):
        return f'timestamp("{format_timestamp(value)}")'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return repr(value)


def check_value(value: object, where: str, limits: AttributeLimits = DEFAULT_LIMITS, in_list: bool = False) -> None:
    """Raises InvalidArgument (prefixed with `where`) unless `value` is an attribute value within the limits."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidArgument(f"{where}: integer {value} does not fit in 64 bits; allowed -2**63 to 2**63-1")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where}: {value} is not a finite number; NaN and infinity are not allowed")
        return
    if isinstance(value, str):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"{where}: string is not valid UTF-8 (it holds a lone surrogate)") from None
        if size > limits.max_string_bytes:
            raise InvalidArgument(f"{where}: string of {size} bytes; at most {limits.max_string_bytes} allowed (UTF-8)")
        return
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgument(f"{where}: timestamp {value.isoformat()} has no time zone; it must be tz-aware")
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise InvalidArgument(
                f"{where}: timestamp {value.isoformat()} is out of range; years 1-9999 (UTC)"
            ) from None
        return
    if isinstance(value, tuple | list):
        if in_list:
            raise InvalidArgument(f"{where}: nested list; a list holds scalars only")
        if len(value) > limits.max_list_elements:
            raise InvalidArgument(f"{where}: list of {len(value)} elements; at most {limits.max_list_elements} allowed")
        for i, element in enumerate(value):
            check_value(element, f"{where}[{i}]", limits, in_list=True)
        return
    raise InvalidArgument(f"{where}: a {type(value).__name__} is not an attribute value; allowed {_ALLOWED_KINDS}")


def check_key(key: object, where: str, limits: AttributeLimits = DEFAULT_LIMITS) -> None:
    """Keys are identifiers: 1..max_key_bytes UTF-8 bytes, no control characters."""
    if not isinstance(key, str):
        raise InvalidArgument(f"{where}: keys must be strings, not {type(key).__name__}")
    if not key:
        raise InvalidArgument(f"{where}: keys must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{where}: key is not valid UTF-8 (it holds a lone surrogate)") from None
    if size > limits.max_key_bytes:
        raise InvalidArgument(f"{where}: key is {size} bytes; at most {limits.max_key_bytes} allowed (UTF-8)")
    if _KEY_FORBIDDEN.search(key):
        raise InvalidArgument(f"{where}: key contains a control character; none are allowed in keys")


def validate_attributes(attributes: Attributes, field: str, limits: AttributeLimits = DEFAULT_LIMITS) -> None:
    """Raises InvalidArgument naming `field[key]` (and the list index) for the first value past the limits."""
    if len(attributes) > limits.max_keys:
        raise InvalidArgument(f"{field}: {len(attributes)} keys; at most {limits.max_keys} allowed")
    valid_keys = _VALID_KEYS.setdefault(limits.max_key_bytes, set())
    for key, value in attributes.items():
        if key in valid_keys and _plainly_within(value, limits):
            continue  # the common case, checked without formatting a place for a message
        where = f"{field}[{_shown(key) if isinstance(key, str) else repr(key)}]"
        check_key(key, where, limits)
        check_value(value, where, limits)
        if len(valid_keys) < _VALID_KEYS_KEPT:
            valid_keys.add(key)


# Keys that passed check_key, by the limit they passed: documents repeat their keys, and checking and
# naming each again took a third of validate_attributes' time (6.1 against 3.9-4.7 ms for 1,000 documents of 10).
_VALID_KEYS: dict[int, set[str]] = {}
_VALID_KEYS_KEPT = 10_000


def _plainly_within(value: object, limits: AttributeLimits, in_list: bool = False) -> bool:
    """True for a value check_value certainly accepts, decided cheaply (False: let check_value decide)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):  # ASCII has no lone surrogates, and its length is its size in bytes
        return value.isascii() and len(value) <= limits.max_string_bytes
    if isinstance(value, tuple | list) and not in_list:
        return len(value) <= limits.max_list_elements and all(_plainly_within(v, limits, True) for v in value)
    return False


def normalise(value: AttributeValue | list[Scalar]) -> AttributeValue:
    """The canonical form of a valid value: lists as tuples, timestamps in UTC."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, tuple | list):
        return tuple(normalise(v) for v in value)  # type: ignore[misc]
    return value


def normalise_attributes(attributes: Attributes) -> dict[str, AttributeValue]:
    return {key: normalise(value) for key, value in attributes.items()}


def _to_json(value: Any) -> Any:
    if isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, datetime):
        return {"$ts": to_micros(value)}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    raise TypeError(f"not an attribute value: {value!r}")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$ts": to_micros(value)}
    raise TypeError(f"not an attribute value: {value!r}")


# orjson: keys sorted (deterministic), timestamps through _json_default. Values are validated before they
# are stored (no NaN or infinity, ints within 64 bits), which orjson relies on: it writes NaN as null.
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def encode_attributes(attributes: Attributes) -> str:
    """The JSON for the `metadata` column: deterministic, and read by every version (old versions wrote
    string-only maps with json.dumps; decode_attributes reads those and these alike).

    orjson, not json: 0.45 against 8.6 ms for 1,000 documents of 10 attributes, which kept an upsert of
    them at 0.75x one without attributes (benchmarks/filtered_search.py)."""
    return orjson.dumps(attributes, default=_json_default, option=_ORJSON_OPTIONS).decode()


def _from_json(value: Any, in_list: bool = False) -> AttributeValue:
    if isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, dict):
        micros = value.get("$ts")
        if len(value) == 1 and isinstance(micros, int) and not isinstance(micros, bool):
            return from_micros(micros)
    if isinstance(value, list) and not in_list:
        return tuple(_from_json(v, in_list=True) for v in value)  # type: ignore[misc]
    raise ValueError(f"stored metadata holds {value!r}, which is not an attribute value")


def attributes_to_json(attributes: Attributes) -> dict[str, Any]:
    """The attributes as a JSON object (what encode_attributes writes, before it is text): for stores that
    keep a JSON field of their own (Milvus's `meta`)."""
    return {key: _to_json(value) for key, value in attributes.items()}


def attributes_from_json(data: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Inverse of attributes_to_json (a JSON object already parsed, e.g. by SQLite's json())."""
    return {key: _from_json(value) for key, value in data.items()}


def decode_attributes(text: str, keys: Iterable[str] | None = None) -> dict[str, AttributeValue]:
    """Inverse of encode_attributes; ValueError for JSON that encode_attributes cannot have written.

    Args:
        keys: decode only these keys (those a filter mentions), when given.
    """
    data = orjson.loads(text)  # NaN and Infinity are not JSON: refused, as old versions never wrote them
    if not isinstance(data, dict):
        raise ValueError("stored metadata is not a JSON object")
    if keys is not None:
        return {key: _from_json(data[key]) for key in keys if key in data}
    return {key: _from_json(value) for key, value in data.items()}
