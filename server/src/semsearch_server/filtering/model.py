"""The filter tree: conditions on attributes combined with all / any / not.

Every node remembers where it came from in the request (`place`) so that errors and Explain's `excluded_by`
can point at it; tree equality for tests ignores places (`without_places`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from semsearch_server.errors import InvalidArgument
from semsearch_server.filtering.values import (
    DEFAULT_LIMITS,
    AttributeLimits,
    AttributeValue,
    check_key,
    check_value,
    kind_name,
    show_value,
)

MAX_DEPTH = 32
MAX_CONDITIONS = 1024


class Op(StrEnum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LTE = "<="
    GT = ">"
    GTE = ">="
    IN = "in"
    NOT_IN = "not in"
    EXISTS = "exists"
    CONTAINS = "contains"


RANGE_OPS = frozenset({Op.LT, Op.LTE, Op.GT, Op.GTE})
_ALL_OPS = "==, !=, <, <=, >, >=, in, not in, exists, contains"


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op | None
    value: AttributeValue | None
    place: str = ""


@dataclass(frozen=True)
class All:
    children: tuple[Filter, ...]
    place: str = ""


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Filter, ...]
    place: str = ""


@dataclass(frozen=True)
class Not:
    child: Filter
    place: str = ""


Filter = Condition | All | AnyOf | Not

# Words the text form reserves (or uses as function names): such field names are written in backquotes.
KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "exists", "true", "false", "timestamp", "all", "any"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def op_label(op: Op) -> str:
    """How messages name an operator: its symbol for comparisons, its upper-case word otherwise."""
    return op.value if op.value[0] in "=!<>" else op.value.upper()


def without_places(tree: Filter) -> Filter:
    """The same tree with every place blanked, for comparing trees built from different requests."""
    if isinstance(tree, Condition):
        return dataclasses.replace(tree, place="")
    if isinstance(tree, All | AnyOf):
        return dataclasses.replace(tree, children=tuple(without_places(c) for c in tree.children), place="")
    return Not(without_places(tree.child))


def show_field(field: str) -> str:
    """A field as the text form writes it: bare when it is an identifier, else in backquotes (` doubled)."""
    if _IDENTIFIER.fullmatch(field) and field not in KEYWORDS:
        return field
    return "`" + field.replace("`", "``") + "`"


def describe(node: Filter) -> str:
    """The node as canonical text (the text form's syntax; `parse(describe(t))` gives back `t`)."""
    if isinstance(node, Condition):
        field = show_field(node.field)
        if node.op is Op.EXISTS:
            return f"exists({field})"
        if node.op is None:
            return f"{field} <unspecified operator> {show_value(node.value)}"
        return f"{field} {node.op.value} {show_value(node.value)}"
    if isinstance(node, Not):
        return f"not {_operand(node.child)}"
    word, name = (" and ", "all") if isinstance(node, All) else (" or ", "any")
    if len(node.children) < 2:
        return f"{name}({', '.join(describe(c) for c in node.children)})"
    return word.join(_operand(c) for c in node.children)


def _operand(node: Filter) -> str:
    """A child written infix: compound children in parentheses, so the tree's shape survives the round trip."""
    text = describe(node)
    if isinstance(node, All | AnyOf) and len(node.children) >= 2:
        return f"({text})"
    return text


def fields_of(node: Filter) -> list[str]:
    """Every key the node mentions, in order of first mention."""
    seen: dict[str, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Condition):
            seen.setdefault(n.field, None)
        elif isinstance(n, Not):
            stack.append(n.child)
        else:
            stack.extend(reversed(n.children))
    return list(seen)


def validate_filter(
    tree: Filter,
    max_depth: int = MAX_DEPTH,
    max_conditions: int = MAX_CONDITIONS,
    limits: AttributeLimits = DEFAULT_LIMITS,
) -> None:
    """Raises InvalidArgument naming the first bad node's place: bad operator/value pairs, depth, size."""
    count = 0
    # (node, depth of the compound nodes above and including it); iterative, so a deep tree cannot overflow
    stack: list[tuple[Filter, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Condition):
            count += 1
            if count > max_conditions:
                total = _count_conditions(tree)
                raise InvalidArgument(
                    f"{tree.place or 'filter'}: {total} conditions; at most {max_conditions} allowed in one filter"
                )
            _validate_condition(node, limits)
            continue
        if not isinstance(node, All | AnyOf | Not):
            raise InvalidArgument(f"{getattr(node, 'place', '') or 'filter'}: {type(node).__name__} is not a filter")
        depth += 1
        if depth > max_depth:
            raise InvalidArgument(
                f"{node.place or 'filter'}: the filter is nested more than {max_depth} levels deep "
                f"(all / any / not); at most {max_depth} allowed"
            )
        children = (node.child,) if isinstance(node, Not) else node.children
        stack.extend((child, depth) for child in reversed(children))


def _count_conditions(tree: Filter) -> int:
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Condition):
            count += 1
        elif isinstance(node, Not):
            stack.append(node.child)
        elif isinstance(node, All | AnyOf):
            stack.extend(node.children)
    return count


def _validate_condition(c: Condition, limits: AttributeLimits) -> None:
    place = c.place or "condition"
    if not c.field:
        raise InvalidArgument(f"{place}: the field must not be empty; name the attribute key to test")
    check_key(c.field, place, limits)
    if c.op is None or not isinstance(c.op, Op):
        raise InvalidArgument(f"{place}: the operator is unspecified; allowed {_ALL_OPS}")
    if c.op is Op.EXISTS:
        return  # the value is ignored
    label = op_label(c.op)
    value = c.value
    if value is None:
        raise InvalidArgument(f"{place}: {label} needs a value")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{place}: {value} is not a finite number; NaN and infinity are not allowed")
    if c.op in (Op.IN, Op.NOT_IN):
        if not isinstance(value, tuple | list):
            raise InvalidArgument(f"{place}: {label} needs a list value, not {_a(kind_name(value))}")
        for i, element in enumerate(value):
            if isinstance(element, tuple | list):
                raise InvalidArgument(f"{place}: {label} list element {i} is a nested list; a list holds scalars only")
    elif isinstance(value, tuple | list):
        if c.op in (Op.EQ, Op.NE):
            raise InvalidArgument(
                f"{place}: {label} compares with a single value, not a list; "
                f"use {'IN' if c.op is Op.EQ else 'NOT IN'} to match any of several values"
            )
        raise InvalidArgument(f"{place}: {label} needs a {_wanted(c.op)} value, not a list")
    elif c.op in RANGE_OPS and isinstance(value, bool):
        raise InvalidArgument(f"{place}: {label} needs a number, string or timestamp value, not a bool")
    elif c.op is Op.CONTAINS and not isinstance(value, str):
        raise InvalidArgument(f"{place}: CONTAINS needs a string value, not {_a(kind_name(value))}")
    check_value(value, place, limits)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _wanted(op: Op) -> str:
    return "string" if op is Op.CONTAINS else "number, string or timestamp"


def conditions_of_string_map(m: Mapping[str, str], place_prefix: str = "filter") -> Filter | None:
    """The old `filter` map as an all of EQ conditions on strings, sorted by key; None when empty."""
    if not m:
        return None
    children = tuple(Condition(key, Op.EQ, m[key], place=f"{place_prefix}[{show_value(key)}]") for key in sorted(m))
    return All(children, place=place_prefix)


def as_filter(filter: Filter | Mapping[str, str] | None) -> Filter | None:
    """A filter as stores take it: a tree, or the old string map (None or empty: no filter)."""
    if filter is None or isinstance(filter, Condition | All | AnyOf | Not):
        return filter
    return conditions_of_string_map(filter)


def combine(*filters: Filter | None) -> Filter | None:
    """AND of the given filters, skipping None (one: itself; none: None)."""
    present = tuple(f for f in filters if f is not None)
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return All(present)
