"""The reference semantics of filters (API.md "Typed metadata and filters"), in plain Python.

Deliberately simple: one document at a time, Python's own comparisons (int/float comparison is exact). The
columnar evaluator (index/attribute_index.py) is tested against this module.
"""

from __future__ import annotations

from datetime import datetime

from semsearch_server.filtering.model import All, AnyOf, Condition, Filter, Not, Op, describe, fields_of, show_field
from semsearch_server.filtering.values import Attributes, show_value


def _family(value: object) -> str:
    """Which values compare with which: ints with doubles, but a bool is not a number."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "timestamp"
    return "other"


def _equal(x: object, v: object) -> bool:
    return _family(x) == _family(v) != "other" and x == v


def _holds(op: Op, x: object, v: object) -> bool:
    """The condition on one scalar document value (positive operators only)."""
    if op is Op.EQ:
        return _equal(x, v)
    if op is Op.IN:
        return isinstance(v, tuple | list) and any(_equal(x, e) for e in v)
    if op is Op.CONTAINS:
        return isinstance(x, str) and isinstance(v, str) and v in x
    family = _family(v)
    if family not in ("number", "string", "timestamp") or _family(x) != family:
        return False
    if op is Op.LT:
        return x < v  # type: ignore[operator]
    if op is Op.LTE:
        return x <= v  # type: ignore[operator]
    if op is Op.GT:
        return x > v  # type: ignore[operator]
    if op is Op.GTE:
        return x >= v  # type: ignore[operator]
    return False


def _condition(c: Condition, attributes: Attributes) -> bool:
    if c.op is Op.EXISTS:
        return c.field in attributes
    if c.op is Op.NE:
        return not _condition(Condition(c.field, Op.EQ, c.value), attributes)
    if c.op is Op.NOT_IN:
        return not _condition(Condition(c.field, Op.IN, c.value), attributes)
    if c.op is None or c.field not in attributes:
        return False
    x = attributes[c.field]
    elements = x if isinstance(x, tuple | list) else (x,)
    return any(_holds(c.op, e, c.value) for e in elements)


def matches(tree: Filter | None, attributes: Attributes) -> bool:
    """Whether a document with these attributes passes the filter (None passes everything)."""
    if tree is None:
        return True
    if isinstance(tree, Condition):
        return _condition(tree, attributes)
    if isinstance(tree, All):
        return all(matches(c, attributes) for c in tree.children)
    if isinstance(tree, AnyOf):
        return any(matches(c, attributes) for c in tree.children)
    if isinstance(tree, Not):
        return not matches(tree.child, attributes)
    raise TypeError(f"not a filter: {tree!r}")


def _first_failing(node: Filter, attributes: Attributes) -> Filter:
    """The node to blame for a failing node: inside an all its first failing child, else the node itself."""
    while isinstance(node, All):
        node = next(c for c in node.children if not matches(c, attributes))
    return node


def excluded_by(tree: Filter | None, attributes: Attributes) -> str | None:
    """None when the document matches; else the place and text of the first condition that excludes it and
    the document's values for the keys it mentions, e.g. `where.all[1].condition: year >= 2020, document has
    year = 2019` or `..., document has no year`."""
    if matches(tree, attributes):
        return None
    assert tree is not None
    node = _first_failing(tree, attributes)
    shown = []
    for key in fields_of(node):
        if key in attributes:
            shown.append(f"{show_field(key)} = {show_value(attributes[key])}")
        else:
            shown.append(f"no {show_field(key)}")
    prefix = f"{node.place}: " if node.place else ""
    text = prefix + describe(node)
    return f"{text}, document has {', '.join(shown)}" if shown else text
