"""Filter trees on the Milvus store: a Milvus expression that narrows what is read, and the exact test.

Milvus's JSON expressions do not mean what our filters mean (API.md "Typed metadata and filters"): a list
value, a missing key, kinds that differ, int against double, NULL logic under ``not``. So the store never
lets Milvus decide which documents match. It asks Milvus for the rows of a *superset* of the matching
documents (``superset_expression``) and keeps exactly those that ``filtering.evaluate.matches`` keeps
(``matcher``), on the attributes each row holds.

The expression is translated only where it is provably a superset, and is otherwise left out (every row):

- ``field == "s"`` (a string) holds when the value is that string or a list with that string as an
  element: ``meta[field] == "s" or json_contains(meta[field], "s")`` holds in both cases (string equality
  of the stored JSON string and the literal, and list membership, are the same in Milvus as in Python);
- ``field in [...]`` of strings only: the ``or`` of those equalities (an empty list matches nothing; it is
  left out rather than written as a constant);
- ``all``: the ``and`` of the children that translate (dropping a conjunct only widens the set);
- ``any``: the ``or`` of its children if every child translates, else nothing (one untranslated child may
  match any row);
- everything else (``not``, NE, NOT IN, ranges, numbers, booleans, timestamps, EXISTS, CONTAINS): nothing.

Keys and values are always literals (``quote``), never syntax: ``" or 1==1 or "`` matches only itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from semsearch_server.filtering import All, AnyOf, Condition, Filter, Op, as_filter, attributes_from_json, matches


def quote(value: str) -> str:
    """A Milvus expression string literal that means exactly ``value`` (quotes, backslashes, newlines...)."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _string_eq(field: str, value: str) -> str:
    path = f"meta[{quote(field)}]"
    return f"({path} == {quote(value)} or json_contains({path}, {quote(value)}))"


def _superset(node: Filter) -> str | None:
    """A Milvus expression true on every row whose document matches node, or None (no such expression)."""
    if isinstance(node, Condition):
        if node.op is Op.EQ and isinstance(node.value, str):
            return _string_eq(node.field, node.value)
        if (
            node.op is Op.IN
            and isinstance(node.value, tuple | list)
            and node.value
            and all(isinstance(v, str) for v in node.value)
        ):
            return "(" + " or ".join(_string_eq(node.field, v) for v in dict.fromkeys(node.value)) + ")"
        return None
    if isinstance(node, All):
        parts = [p for p in (_superset(c) for c in node.children) if p is not None]
        return None if not parts else parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"
    if isinstance(node, AnyOf):
        parts = [_superset(c) for c in node.children]
        if not parts or any(p is None for p in parts):
            return None
        return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"  # type: ignore[arg-type]
    return None  # Not, and anything else: no expression is a superset we can prove


def superset_expression(filter: Filter | Mapping[str, str] | None) -> str:
    """A Milvus expression on ``meta`` that keeps at least the rows whose documents the filter matches
    ("" when there is none: read every row). Only ``matcher`` decides what matches."""
    tree = as_filter(filter)
    if tree is None:
        return ""
    return _superset(tree) or ""


def matcher(filter: Filter | Mapping[str, str] | None) -> Callable[[Mapping[str, Any]], bool]:
    """The exact test of a row's ``meta`` JSON against the filter (the reference semantics)."""
    tree = as_filter(filter)
    if tree is None:
        return lambda meta: True
    return lambda meta: matches(tree, attributes_from_json(meta or {}))
