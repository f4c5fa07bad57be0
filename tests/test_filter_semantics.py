"""The reference semantics (filtering/evaluate.py) rule by rule, excluded_by's messages, the attribute JSON
encoding and the attribute limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from semsearch_server.errors import InvalidArgument
from semsearch_server.filtering import (
    All,
    AnyOf,
    AttributeLimits,
    Condition,
    Not,
    Op,
    decode_attributes,
    encode_attributes,
    excluded_by,
    kind_name,
    matches,
    normalise,
    parse,
    show_value,
    validate_attributes,
)
from semsearch_server.filtering.values import INT64_MAX, INT64_MIN

T0 = datetime(2024, 1, 1, tzinfo=UTC)
BIG = 2**53 + 1

# (filter text, attributes, expected)
CASES = [
    # a missing key fails everything but != and not in
    ("a == 1", {}, False),
    ("a != 1", {}, True),
    ("a < 1", {}, False),
    ("a in [1]", {}, False),
    ("a not in [1]", {}, True),
    ('a contains "x"', {}, False),
    ("exists(a)", {}, False),
    ("not a == 1", {}, True),
    ("not a != 1", {}, False),
    # numbers: ints and doubles compare exactly as Python does
    ("a == 1", {"a": 1.0}, True),
    ("a == 1.0", {"a": 1}, True),
    ("a < 1.5", {"a": 1}, True),
    ("a > 0.5", {"a": 1}, True),
    (f"a == {float(2**53)!r}", {"a": BIG}, False),
    (f"a > {float(2**53)!r}", {"a": BIG}, True),
    (f"a == {BIG}", {"a": float(2**53)}, False),
    (f"a < {BIG}", {"a": float(2**53)}, True),
    (f"a >= {BIG}", {"a": float(2**53)}, False),
    (f"a == {INT64_MAX}", {"a": 2.0**63}, False),
    (f"a < {INT64_MAX}", {"a": 2.0**63}, False),
    ("a > 1e300", {"a": INT64_MAX}, False),
    ("a < -1e300", {"a": INT64_MIN}, False),
    ("a == 0.0", {"a": -0.0}, True),
    ("a == -0.0", {"a": 0}, True),
    # bools are not numbers
    ("a == 1", {"a": True}, False),
    ("a == true", {"a": 1}, False),
    ("a != 1", {"a": True}, True),
    ("a == true", {"a": True}, True),
    ("a in [1, 0]", {"a": False}, False),
    ("a in [false]", {"a": False}, True),
    ("a > 0", {"a": True}, False),
    # another kind than the condition's fails it, so != / not in pass
    ('a == "1"', {"a": 1}, False),
    ('a != "1"', {"a": 1}, True),
    ('a < "b"', {"a": 1}, False),
    ('a not in ["1"]', {"a": 1}, True),
    ("a < 5", {"a": "1"}, False),
    ('a < timestamp("2024-01-01T00:00:00Z")', {"a": 1}, False),
    ('a contains "1"', {"a": 1}, False),
    # strings by code point, timestamps with timestamps
    ('a < "b"', {"a": "a"}, True),
    ('a < "a"', {"a": "B"}, True),
    ('a > "z"', {"a": "é"}, True),
    ('a < "\\uffff"', {"a": "😀"}, False),
    ('a >= "ab"', {"a": "ab"}, True),
    ('a < timestamp("2024-01-01T00:00:00Z")', {"a": T0 - timedelta(microseconds=1)}, True),
    ('a <= timestamp("2024-01-01T01:00:00+01:00")', {"a": T0}, True),
    ('a == timestamp("2024-01-01T00:00:00Z")', {"a": T0.astimezone(timezone(timedelta(hours=-5)))}, True),
    # lists: any element; != and not in are exact negations
    ('tags == "ml"', {"tags": ("db", "ml")}, True),
    ('tags != "ml"', {"tags": ("db", "ml")}, False),
    ('tags != "ml"', {"tags": ("db", "x")}, True),
    ('tags in ["x", "ml"]', {"tags": ("db", "ml")}, True),
    ('tags not in ["x", "ml"]', {"tags": ("db", "ml")}, False),
    ('tags not in ["x"]', {"tags": ("db", "ml")}, True),
    ("n > 5", {"n": (1, 10)}, True),
    ("n < 5", {"n": (1, 10)}, True),
    ("n > 5 and n < 5", {"n": (1, 10)}, True),
    ("n > 20", {"n": (1, 10)}, False),
    ('tags == "ml"', {"tags": ()}, False),
    ('tags != "ml"', {"tags": ()}, True),
    ("exists(tags)", {"tags": ()}, True),
    ("tags not in []", {"tags": ()}, True),
    ("tags in []", {"tags": ("x",)}, False),
    ("m == 1", {"m": ("1", 1.0, True)}, True),
    ('m contains "b"', {"m": (1, "abc")}, True),
    # contains: substring, case-sensitive
    ('t contains "Wine"', {"t": "red wine"}, False),
    ('t contains "wine"', {"t": "red wine"}, True),
    ('t contains ""', {"t": ""}, True),
    # exists: whatever the value
    ("exists(a)", {"a": False}, True),
    ("exists(a)", {"a": ""}, True),
    ("exists(a)", {"b": 1}, False),
    # empty all / any
    ("all()", {}, True),
    ("any()", {}, False),
    ("not any()", {"a": 1}, True),
    ("a == 1 or b == 2", {"b": 2}, True),
    ("a == 1 and b == 2", {"b": 2}, False),
]


@pytest.mark.parametrize("text,attributes,expected", CASES, ids=[f"{c[0]}|{c[1]}" for c in CASES])
def test_matches(text, attributes, expected):
    tree = parse(text)
    assert matches(tree, attributes) is expected
    assert matches(Not(tree), attributes) is (not expected)


def test_none_matches_everything():
    assert matches(None, {}) and matches(None, {"a": 1})
    assert excluded_by(None, {}) is None


def test_unvalidated_oddities_do_not_raise():
    assert matches(Condition("a", Op.IN, 1), {"a": 1}) is False
    assert matches(Condition("a", None, 1), {"a": 1}) is False
    assert matches(Condition("a", Op.LT, True), {"a": 0}) is False


def test_excluded_by_messages():
    tree = All(
        (
            Condition("lang", Op.EQ, "en", "where.all[0].condition"),
            Condition("year", Op.GTE, 2020, "where.all[1].condition"),
        ),
        "where",
    )
    assert excluded_by(tree, {"lang": "en", "year": 2020}) is None
    assert excluded_by(tree, {"lang": "en", "year": 2019}) == (
        "where.all[1].condition: year >= 2020, document has year = 2019"
    )
    assert excluded_by(tree, {"lang": "en"}) == "where.all[1].condition: year >= 2020, document has no year"
    assert excluded_by(tree, {"lang": "de"}) == ('where.all[0].condition: lang == "en", document has lang = "de"')
    anyof = AnyOf((Condition("a", Op.EQ, 1), Condition("b", Op.EQ, 2), Condition("a", Op.EQ, 5)), "where.any")
    assert excluded_by(anyof, {"a": 3}) == "where.any: a == 1 or b == 2 or a == 5, document has a = 3, no b"
    negated = Not(Condition("tags", Op.IN, ("x",)), "where.not")
    assert excluded_by(negated, {"tags": ("x", "y")}) == (
        'where.not: not tags in ["x"], document has tags = ["x", "y"]'
    )
    nested = All((All((Condition("t", Op.LT, T0, "inner"),), "mid"),), "outer")
    assert excluded_by(nested, {"t": T0}) == (
        'inner: t < timestamp("2024-01-01T00:00:00Z"), document has t = timestamp("2024-01-01T00:00:00Z")'
    )
    assert excluded_by(AnyOf((), "where"), {}) == "where: any()"
    assert (
        excluded_by(Condition("odd key", Op.EXISTS, None, "w"), {}) == "w: exists(`odd key`), document has no `odd key`"
    )


def test_excluded_by_points_into_the_text():
    tree = parse('lang == "en" and year >= 2020')
    assert excluded_by(tree, {"lang": "en", "year": 1999}) == (
        "where.expression at column 18: year >= 2020, document has year = 1999"
    )


def test_kind_name_and_show_value():
    assert [kind_name(v) for v in ("", 1, 1.0, True, T0, ())] == [
        "string",
        "int",
        "double",
        "bool",
        "timestamp",
        "list",
    ]
    assert show_value('a"b') == '"a\\"b"'
    assert show_value(T0 + timedelta(microseconds=120)) == 'timestamp("2024-01-01T00:00:00.00012Z")'
    assert show_value((1, 2.0, False, "x")) == '[1, 2.0, false, "x"]'
    assert show_value(datetime(5, 1, 1, tzinfo=UTC)) == 'timestamp("0005-01-01T00:00:00Z")'


# -- JSON encoding ------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_scalar = st.one_of(
    _text,
    st.integers(INT64_MIN, INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e300, -0.0, 5e-324, 1.0, 2.0**63]),
    st.booleans(),
    st.datetimes(timezones=st.just(UTC)),
)
_value = st.one_of(_scalar, st.lists(_scalar, max_size=5).map(tuple))
_attributes = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20), _value
)


def _tagged(value):
    if isinstance(value, tuple):
        return ("list", tuple(_tagged(v) for v in value))
    if isinstance(value, datetime):  # fold carries no meaning in UTC
        return ("timestamp", value.astimezone(UTC).isoformat())
    return (kind_name(value), repr(value))


@settings(max_examples=300, deadline=None)
@given(_attributes)
def test_encode_decode_round_trip_is_exact(attributes):
    validate_attributes(attributes, "attributes")
    text = encode_attributes(attributes)
    decoded = decode_attributes(text)
    assert {k: _tagged(v) for k, v in decoded.items()} == {k: _tagged(v) for k, v in attributes.items()}
    assert encode_attributes(decoded) == text  # deterministic


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",))), _text))
def test_old_string_maps_read_back_exactly(mapping):
    old = json.dumps(mapping, ensure_ascii=False, sort_keys=True)  # what versions before attributes wrote
    assert decode_attributes(old) == mapping
    assert all(type(v) is str for v in decode_attributes(old).values())
    assert decode_attributes(encode_attributes(mapping)) == mapping


def test_encoding_details():
    assert encode_attributes({"lang": "en"}) == '{"lang":"en"}'
    assert encode_attributes({"t": T0}) == '{"t":{"$ts":1704067200000000}}'
    assert encode_attributes({"n": 1, "f": 1.0, "b": True, "l": [1, "x"]}) == '{"b":true,"f":1.0,"l":[1,"x"],"n":1}'
    assert encode_attributes({"é": "ü", "a": "日本"}) == '{"a":"日本","é":"ü"}'  # UTF-8, keys in code point order
    assert decode_attributes('{"t": {"$ts": -1}}')["t"] == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    for value in (1e300, -0.0, 5e-324):
        back = decode_attributes(encode_attributes({"x": value}))["x"]
        assert type(back) is float and repr(back) == repr(value)
    for bad in ("[]", '{"a": null}', '{"a": {"x": 1}}', '{"a": [[1]]}', '{"a": NaN}'):
        with pytest.raises(ValueError):
            decode_attributes(bad)


# -- limits -------------------------------------------------------------------------------------------------

LIMIT_CASES = [
    ({f"k{i}": 1 for i in range(65)}, "attributes: 65 keys; at most 64 allowed"),
    ({"": 1}, "attributes['']: keys must not be empty"),
    ({"k" * 257: 1}, "... (257 characters)]: key is 257 bytes; at most 256 allowed"),
    ({"é" * 129: 1}, "is 258 bytes; at most 256 allowed"),
    ({"a\x00b": 1}, "contains a control character"),
    ({"a\x7f": 1}, "contains a control character"),
    ({"s": "x" * 65537}, "attributes['s']: string of 65537 bytes; at most 65536 allowed"),
    ({"s": "é" * 32769}, "string of 65538 bytes"),
    ({"s": "\ud800"}, "attributes['s']: string is not valid UTF-8"),
    ({"l": tuple(range(1025))}, "attributes['l']: list of 1025 elements; at most 1024 allowed"),
    ({"l": (1, (2,))}, "attributes['l'][1]: nested list"),
    ({"l": (1, float("nan"))}, "attributes['l'][1]: nan is not a finite number"),
    ({"f": float("inf")}, "attributes['f']: inf is not a finite number"),
    ({"i": 2**63}, "attributes['i']: integer 9223372036854775808 does not fit in 64 bits"),
    ({"i": INT64_MIN - 1}, "does not fit in 64 bits"),
    ({"t": datetime(2024, 1, 1)}, "attributes['t']: timestamp 2024-01-01T00:00:00 has no time zone"),
    ({"t": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))}, "is out of range"),
    ({"x": None}, "attributes['x']: a NoneType is not an attribute value"),
    ({"x": {"a": 1}}, "a dict is not an attribute value"),
]


@pytest.mark.parametrize("attributes,message", LIMIT_CASES, ids=[m for _, m in LIMIT_CASES])
def test_attribute_limits(attributes, message):
    with pytest.raises(InvalidArgument) as caught:
        validate_attributes(attributes, "attributes")
    assert message in str(caught.value)


def test_values_at_the_limits_pass():
    validate_attributes({f"k{i}": 1 for i in range(64)}, "a")
    validate_attributes({"k" * 256: "x" * 65536, "l": tuple(range(1024)), "m": [1, "x"]}, "a")
    validate_attributes({"i": INT64_MAX, "j": INT64_MIN, "t": datetime(9999, 12, 31, tzinfo=UTC), "e": ()}, "a")
    validate_attributes({"s": "\x00 control characters are fine in values"}, "a")
    with pytest.raises(InvalidArgument, match="3 keys; at most 2"):
        validate_attributes({"a": 1, "b": 2, "c": 3}, "a", AttributeLimits(max_keys=2))


def test_normalise():
    plus_two = datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert normalise(plus_two).utcoffset() == timedelta(0) and normalise(plus_two) == T0
    assert normalise([1, plus_two]) == (1, T0)
