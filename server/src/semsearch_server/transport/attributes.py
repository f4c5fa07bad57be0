"""Typed attributes and filters: protobuf <-> the domain's plain Python values and filter tree.

Every node of a filter keeps its place in the request (`where.all[2].condition`), so that the core's
messages (a bad value, the condition that excluded a document) can point at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from semsearch.v1 import search_service_pb2 as pb

from semsearch_server.errors import InvalidArgument
from semsearch_server.filtering import All, AnyOf, Condition, Filter, Not, Op
from semsearch_server.filtering import parse as parse_expression

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# protobuf's own Timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799

_OPS = {
    pb.OPERATOR_EQ: Op.EQ,
    pb.OPERATOR_NE: Op.NE,
    pb.OPERATOR_LT: Op.LT,
    pb.OPERATOR_LTE: Op.LTE,
    pb.OPERATOR_GT: Op.GT,
    pb.OPERATOR_GTE: Op.GTE,
    pb.OPERATOR_IN: Op.IN,
    pb.OPERATOR_NOT_IN: Op.NOT_IN,
    pb.OPERATOR_EXISTS: Op.EXISTS,
    pb.OPERATOR_CONTAINS: Op.CONTAINS,
}
# The kinds read as they are (timestamps and lists are checked and converted by to_value).
_SCALAR_KINDS = frozenset(("string_value", "int_value", "double_value", "bool_value"))
_OP_NAMES = ", ".join(pb.Operator.Name(op).removeprefix("OPERATOR_") for op in _OPS)


def to_datetime(ts: Timestamp, field: str) -> datetime:
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(
            f"{field}: timestamp seconds={ts.seconds} nanos={ts.nanos} is outside 0001-01-01 to 9999-12-31"
        )
    if ts.nanos % 1000:
        raise InvalidArgument(
            f"{field}: timestamp has nanos={ts.nanos}; timestamps are stored to the microsecond "
            "(nanos must be a multiple of 1000)"
        )
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def to_timestamp(value: datetime) -> Timestamp:
    delta = value - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def to_value(value: pb.Value, field: str, in_list: bool = False):
    """A protobuf Value as a plain Python value (a list as a tuple of scalars)."""
    kind = value.WhichOneof("kind")
    if kind in _SCALAR_KINDS:
        return getattr(value, kind)
    if kind == "timestamp_value":
        return to_datetime(value.timestamp_value, field)
    if kind == "list_value":
        if in_list:
            raise InvalidArgument(f"{field}: a list may hold scalars only, not another list")
        return tuple(to_value(v, f"{field}[{i}]", in_list=True) for i, v in enumerate(value.list_value.values))
    raise InvalidArgument(f"{field}: no value is set; set one of string, int, double, bool, timestamp or list")


def to_pb_value(value) -> pb.Value:
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, bool):  # before int: bool is an int in Python
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(double_value=value)
    if isinstance(value, datetime):
        return pb.Value(timestamp_value=to_timestamp(value))
    if isinstance(value, tuple | list):
        return pb.Value(list_value=pb.ValueList(values=[to_pb_value(v) for v in value]))
    raise TypeError(f"not an attribute value: {value!r}")


def to_attributes(metadata: Mapping[str, str], attributes: Mapping[str, pb.Value], field: str) -> dict:
    """A document's two views merged into one map of typed values (the same key in both is refused)."""
    out: dict = dict(metadata)
    if not attributes:
        return out
    for key, value in attributes.items():
        if key in out:
            both = sorted(set(metadata) & set(attributes))
            raise InvalidArgument(
                f"{field}: key {both[0]!r} is in both metadata and attributes; a key may be given in one of them"
            )
        kind = value.WhichOneof("kind")
        if kind in _SCALAR_KINDS:  # most values: no place to name, so none is formatted
            out[key] = getattr(value, kind)
        else:
            out[key] = to_value(value, f"{field}.attributes[{key!r}]")
    return out


def to_pb_attributes(attributes: Mapping) -> dict[str, pb.Value]:
    return {key: to_pb_value(value) for key, value in attributes.items()}


def to_filter(where: pb.Filter, place: str = "where") -> Filter | None:
    """A protobuf Filter as the domain's tree; an unset Filter is None (no filter)."""
    kind = where.WhichOneof("kind")
    if kind is None:
        return None
    return _node(where, place, depth=1)


def has_filter(request, field: str = "where") -> bool:
    return request.HasField(field) and request.where.WhichOneof("kind") is not None


_MAX_DEPTH = 32


def _node(where: pb.Filter, place: str, depth: int) -> Filter:
    if depth > _MAX_DEPTH + 1:  # checked again, with the limit's message, on the finished tree
        raise InvalidArgument(f"{place}: the filter is nested deeper than {_MAX_DEPTH} levels")
    kind = where.WhichOneof("kind")
    if kind == "condition":
        return _condition(where.condition, f"{place}.condition")
    if kind in ("all", "any"):
        filters = where.all.filters if kind == "all" else where.any.filters
        children = tuple(_node(child, f"{place}.{kind}[{i}]", depth + 1) for i, child in enumerate(filters))
        return All(children, place) if kind == "all" else AnyOf(children, place)
    if kind == "not":
        negated = getattr(where, "not")  # a Python keyword: no attribute syntax
        if negated.WhichOneof("kind") is None:
            raise InvalidArgument(f"{place}.not: empty; `not` needs a filter to negate")
        return Not(_node(negated, f"{place}.not", depth + 1), place)
    if kind == "expression":
        return parse_expression(where.expression, f"{place}.expression")
    raise InvalidArgument(f"{place}: unset filter node inside a filter; set condition, all, any, not or expression")


def _condition(condition: pb.Condition, place: str) -> Condition:
    if condition.op not in _OPS:
        allowed = f"allowed {_OP_NAMES}"
        if condition.op == pb.OPERATOR_UNSPECIFIED:
            raise InvalidArgument(f"{place}: op is unspecified; {allowed}")
        raise InvalidArgument(f"{place}: unknown op {condition.op}; {allowed}")
    op = _OPS[condition.op]
    if op is Op.EXISTS:
        value = None
    elif not condition.HasField("value") or condition.value.WhichOneof("kind") is None:
        raise InvalidArgument(f"{place}: {op.name} needs a value")
    else:
        value = to_value(condition.value, f"{place}.value")
    return Condition(condition.field, op, value, place)
