"""Haystack's filter syntax as a semsearch filter tree, with Haystack's rules.

Haystack's rules, and how each is kept:

- a missing field is None: ``== None`` is ``not exists(field)``, ``!= None`` is ``exists(field)``;
- ``!=`` and ``not in`` include documents without the field (the server's NE and NOT_IN pass them too);
- ordering (``>``, ``>=``, ``<``, ``<=``) against None matches nothing;
- ordering against a string compares dates: the string must be an ISO 8601 date, else FilterError (as
  ``meta.number > "1"``); it matches documents whose value is a timestamp later (earlier...) than the date,
  or an ISO string after it by code point (the same as by date when both are written in one format);
- ordering against a list or a bool, and ``in``/``not in`` with anything but a list, raise FilterError;
- ``NOT`` negates the AND of its conditions.

Only ``meta.*`` fields can be filtered: the service filters on metadata, not on ``id`` or ``content``; such a
filter is refused with a FilterError saying so rather than dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from haystack.errors import FilterError

from semsearch.filters import Field, Filter, all_of, any_of, exists, not_

_ORDERING = {">": Field.__gt__, ">=": Field.__ge__, "<": Field.__lt__, "<=": Field.__le__}
_LOGICAL = ("AND", "OR", "NOT")


def convert_filters(filters: dict[str, Any] | None) -> Filter | None:
    """A Haystack filter (``{"field": ..., "operator": ..., "value": ...}`` or a logical one) as a semsearch Filter.

    Raises:
        FilterError: a malformed filter, a comparison Haystack refuses, or a field the service cannot filter on.
    """
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise FilterError(f"a filter is a dict, not {type(filters).__name__}")
    if "field" not in filters and "conditions" not in filters:
        raise FilterError(f"{filters!r} is neither a comparison (field, operator, value) nor a logical filter")
    return _convert(filters)


def _convert(node: dict[str, Any]) -> Filter:
    if "field" in node:
        return _comparison(node)
    if "operator" not in node:
        raise FilterError(f"logical filter {node!r} has no 'operator'")
    if "conditions" not in node:
        raise FilterError(f"logical filter {node!r} has no 'conditions'")
    operator, conditions = node["operator"], node["conditions"]
    if operator not in _LOGICAL:
        raise FilterError(f"unknown logical operator {operator!r}: use one of {', '.join(_LOGICAL)}")
    if not isinstance(conditions, list):
        raise FilterError(f"'conditions' of {operator} must be a list")
    parts = [_convert(c) if isinstance(c, dict) else _bad(c) for c in conditions]
    if operator == "AND":
        return all_of(*parts)
    if operator == "OR":
        return any_of(*parts)
    return not_(all_of(*parts))


def _bad(condition: Any) -> Filter:
    raise FilterError(f"a condition is a dict, not {condition!r}")


def _comparison(node: dict[str, Any]) -> Filter:
    for key in ("operator", "value"):
        if key not in node:
            raise FilterError(f"comparison {node!r} has no {key!r}")
    name, operator, value = _key(node["field"]), node["operator"], node["value"]
    field = Field(name)
    if operator == "==":
        return ~exists(name) if value is None else field == _scalar(value, operator)
    if operator == "!=":
        return exists(name) if value is None else field != _scalar(value, operator)
    if operator in ("in", "not in"):
        if not isinstance(value, list):
            raise FilterError(f"'{operator}' needs a list value, not {type(value).__name__}")
        members = [_scalar(v, operator) for v in value if v is not None]
        has_none = len(members) < len(value)
        if operator == "in":
            return field.is_in(members) | ~exists(name) if has_none else field.is_in(members)
        return field.not_in(members) & exists(name) if has_none else field.not_in(members)
    if operator in _ORDERING:
        return _ordering(field, operator, value)
    raise FilterError(f"unknown comparison operator {operator!r}")


def _key(field: Any) -> str:
    if not isinstance(field, str):
        raise FilterError(f"'field' must be a string, not {field!r}")
    if field.startswith("meta."):
        return field.removeprefix("meta.")
    raise FilterError(
        f"cannot filter on {field!r}: the semsearch service filters on metadata only (fields 'meta.<key>')"
    )


def _scalar(value: Any, operator: str) -> Any:
    if isinstance(value, str | bool | int | float | datetime):
        return value
    raise FilterError(f"'{operator}' cannot compare with {value!r} ({type(value).__name__})")


def _ordering(field: Field, operator: str, value: Any) -> Filter:
    compare = _ORDERING[operator]
    if value is None:
        return any_of()  # Haystack: ordering against None matches nothing
    if isinstance(value, bool) or isinstance(value, list | dict | tuple):
        raise FilterError(f"'{operator}' cannot order by {type(value).__name__} {value!r}")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise FilterError(f"'{operator}' compares strings only as ISO 8601 dates, and {value!r} is none") from None
        return compare(field, moment) | compare(field, value)
    if isinstance(value, int | float | datetime):
        return compare(field, value)
    raise FilterError(f"'{operator}' cannot order by {type(value).__name__} {value!r}")
