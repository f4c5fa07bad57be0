"""LlamaIndex MetadataFilters as a semsearch filter tree.

Every FilterOperator and condition (AND, OR, NOT: none of the filters matches; nested MetadataFilters too) is
mapped, with LlamaIndex's semantics (those of its SimpleVectorStore) on keys of one kind:

- a missing key fails every operator but NE and NIN, which it passes (the server's rule as well);
- CONTAINS: the list-valued key has the value as an element (LlamaIndex: "metadata array contains value"); on a
  string key it is equality — use TEXT_MATCH for a substring;
- ANY / ALL: the list-valued key has any / all of the values; TEXT_MATCH: substring, case-sensitive;
- IS_EMPTY: the key is missing, "" or an empty list.

On a list-valued key every other comparison holds when it holds for an element (semsearch's rule; LlamaIndex
would compare the whole list). TEXT_MATCH_INSENSITIVE has no counterpart in the service and is refused.

LlamaIndex's MetadataFilter refuses bool and datetime values; pass such conditions as a semsearch filter instead:
``retriever = index.as_retriever(vector_store_kwargs={"where": field("draft") == False})`` — ``where`` (the text
form, a ``semsearch.filters`` tree or a mapping) is AND-ed with the MetadataFilters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from semsearch.filters import Field, Filter, FilterLike, all_of, any_of, not_, to_pb_filter


class UnsupportedFilterError(ValueError):
    """A filter LlamaIndex can express but the semsearch service cannot evaluate."""


def convert_filters(filters: MetadataFilters | None, where: FilterLike | None = None) -> Filter | None:
    """The semsearch filter for MetadataFilters, AND-ed with a semsearch filter `where` (either may be None)."""
    parts = []
    if filters is not None and filters.filters:
        parts.append(_filters(filters))
    if where is not None:
        parts.append(Filter(to_pb_filter(where)))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else all_of(*parts)


def _filters(filters: MetadataFilters) -> Filter:
    parts = [_filters(f) if isinstance(f, MetadataFilters) else _filter(f) for f in filters.filters]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return all_of(*parts)
    if condition == FilterCondition.OR:
        return any_of(*parts)
    if condition == FilterCondition.NOT:
        return not_(any_of(*parts))
    raise UnsupportedFilterError(f"unknown filter condition {condition!r}")


def _filter(f: MetadataFilter) -> Filter:
    key, op, value = f.key, f.operator, f.value
    field = Field(key)
    if op == FilterOperator.IS_EMPTY:
        return (field == "") | ~has_element(key)
    if value is None:
        raise UnsupportedFilterError(f"{key} {op.value} None: only IS_EMPTY takes no value")
    if op == FilterOperator.EQ:
        return field == value
    if op == FilterOperator.NE:
        return field != value
    if op == FilterOperator.GT:
        return field > value
    if op == FilterOperator.GTE:
        return field >= value
    if op == FilterOperator.LT:
        return field < value
    if op == FilterOperator.LTE:
        return field <= value
    if op in (FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY, FilterOperator.ALL):
        values = _list(key, op, value)
        if op == FilterOperator.IN or op == FilterOperator.ANY:
            return field.is_in(values)
        if op == FilterOperator.NIN:
            return field.not_in(values)
        return all_of(*(field == v for v in values))
    if op == FilterOperator.CONTAINS:
        return field == value
    if op == FilterOperator.TEXT_MATCH:
        if not isinstance(value, str):
            raise UnsupportedFilterError(f"{key} text_match needs a string, not {value!r}")
        return field.contains(value)
    if op == FilterOperator.TEXT_MATCH_INSENSITIVE:
        raise UnsupportedFilterError(
            f"{key} text_match_insensitive: the semsearch service matches text case-sensitively only (use TEXT_MATCH)"
        )
    raise UnsupportedFilterError(f"unknown filter operator {op!r}")


def _list(key: str, op: FilterOperator, value: Any) -> list:
    if not isinstance(value, list):
        raise UnsupportedFilterError(f"{key} {op.value} needs a list of values, not {value!r}")
    return value


def has_element(key: str) -> Filter:
    """The key holds a value (a scalar, or a list with at least one element) of any kind."""
    field = Field(key)
    return any_of(
        field >= "",
        field.is_in([True, False]),
        field >= -1.7976931348623157e308,
        field >= datetime(1, 1, 1, tzinfo=UTC),
    )
