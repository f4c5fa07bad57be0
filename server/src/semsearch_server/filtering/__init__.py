"""Typed attributes and filters on them: values, the filter tree, its text form and the reference semantics.

Pure Python (plus lark for the text form); the fast columnar evaluator is index/attribute_index.py.
"""

from __future__ import annotations

from semsearch_server.filtering.evaluate import excluded_by, matches
from semsearch_server.filtering.expression import parse, to_text
from semsearch_server.filtering.model import (
    All,
    AnyOf,
    Condition,
    Filter,
    Not,
    Op,
    as_filter,
    combine,
    conditions_of_string_map,
    describe,
    validate_filter,
    without_places,
)
from semsearch_server.filtering.values import (
    AttributeLimits,
    Attributes,
    AttributeValue,
    Scalar,
    attributes_from_json,
    attributes_to_json,
    decode_attributes,
    encode_attributes,
    kind_name,
    normalise,
    normalise_attributes,
    show_value,
    validate_attributes,
)

__all__ = [
    "All",
    "AnyOf",
    "AttributeLimits",
    "AttributeValue",
    "Attributes",
    "Condition",
    "Filter",
    "Not",
    "Op",
    "Scalar",
    "as_filter",
    "attributes_from_json",
    "attributes_to_json",
    "combine",
    "conditions_of_string_map",
    "decode_attributes",
    "describe",
    "encode_attributes",
    "excluded_by",
    "kind_name",
    "matches",
    "normalise",
    "normalise_attributes",
    "parse",
    "show_value",
    "to_text",
    "validate_attributes",
    "validate_filter",
    "without_places",
]
