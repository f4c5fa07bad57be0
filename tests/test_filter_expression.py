"""The filter text form: the API.md examples, every error with its place and column, and the round trip
parse(to_text(tree)) == tree on random valid trees; plus validate_filter's messages."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semsearch_server.errors import InvalidArgument
from semsearch_server.filtering import (
    All,
    AnyOf,
    Condition,
    Not,
    Op,
    combine,
    conditions_of_string_map,
    describe,
    parse,
    to_text,
    validate_filter,
    without_places,
)
from semsearch_server.filtering.values import INT64_MAX, INT64_MIN, kind_name

C = Condition
TS = datetime(2024, 1, 1, tzinfo=UTC)


def strict(tree):
    """The tree with places dropped and every value tagged with its kind and repr: == on dataclasses would
    take 1 == 1.0 == True and 0.0 == -0.0."""
    if isinstance(tree, Condition):
        return ("cond", tree.field, tree.op, _tagged(tree.value))
    if isinstance(tree, Not):
        return ("not", strict(tree.child))
    return (type(tree).__name__, tuple(strict(c) for c in tree.children))


def _tagged(value):
    if isinstance(value, tuple):
        return ("list", tuple(_tagged(v) for v in value))
    if isinstance(value, datetime):
        return ("timestamp", value.astimezone(UTC).isoformat())
    return (kind_name(value), repr(value))


EXAMPLES = [
    (
        'year >= 2020 and lang in ["en", "de"] and not exists(draft)',
        All((C("year", Op.GTE, 2020), C("lang", Op.IN, ("en", "de")), Not(C("draft", Op.EXISTS, None)))),
    ),
    (
        '(tags == "ml" or title contains "wine") and published < timestamp("2024-01-01T00:00:00Z")',
        All((AnyOf((C("tags", Op.EQ, "ml"), C("title", Op.CONTAINS, "wine"))), C("published", Op.LT, TS))),
    ),
    ("`odd key` != 1", C("odd key", Op.NE, 1)),
    ("a == -1.5e3", C("a", Op.EQ, -1500.0)),
    ("s == 'it\\'s'", C("s", Op.EQ, "it's")),
    ("a == 1", C("a", Op.EQ, 1)),
    ("a == 1.0", C("a", Op.EQ, 1.0)),
    ("a == +2", C("a", Op.EQ, 2)),
    ("a == -0.0", C("a", Op.EQ, -0.0)),
    ("a == 1e3", C("a", Op.EQ, 1000.0)),
    ("a == true", C("a", Op.EQ, True)),
    ("a != false", C("a", Op.NE, False)),
    ("a <= 3 or b > 4.5", AnyOf((C("a", Op.LTE, 3), C("b", Op.GT, 4.5)))),
    ("a not in [1, 'x', true]", C("a", Op.NOT_IN, (1, "x", True))),
    ("a in []", C("a", Op.IN, ())),
    ("x.y-z_1 == 1", C("x.y-z_1", Op.EQ, 1)),
    ("`a``b` == 1", C("a`b", Op.EQ, 1)),
    ("`and` == 1", C("and", Op.EQ, 1)),
    ("exists(`odd key`)", C("odd key", Op.EXISTS, None)),
    ('s == "\\n\\u00e9\\ud83d\\ude00\\"\\\\"', C("s", Op.EQ, '\né😀"\\')),
    ('s == "é😀"', C("s", Op.EQ, "é😀")),
    ('t == timestamp("2024-01-01T02:00:00.5+02:00")', C("t", Op.EQ, TS + timedelta(microseconds=500000))),
    ('t == timestamp("0001-01-01T00:00:00.000001Z")', C("t", Op.EQ, datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))),
    # precedence: not > and > or
    (
        "a == 1 or b == 2 and not c == 3",
        AnyOf((C("a", Op.EQ, 1), All((C("b", Op.EQ, 2), Not(C("c", Op.EQ, 3)))))),
    ),
    ("not (a == 1 or b == 2)", Not(AnyOf((C("a", Op.EQ, 1), C("b", Op.EQ, 2))))),
    # parentheses keep their grouping as a node
    ("(a == 1 and b == 2) and c == 3", All((All((C("a", Op.EQ, 1), C("b", Op.EQ, 2))), C("c", Op.EQ, 3)))),
    ("a == 1 and b == 2 and c == 3", All((C("a", Op.EQ, 1), C("b", Op.EQ, 2), C("c", Op.EQ, 3)))),
    ("((a == 1))", C("a", Op.EQ, 1)),
    ("all()", All(())),
    ("any()", AnyOf(())),
    ("all(a == 1)", All((C("a", Op.EQ, 1),))),
    ("any(a == 1, b == 2 or c == 3)", AnyOf((C("a", Op.EQ, 1), AnyOf((C("b", Op.EQ, 2), C("c", Op.EQ, 3)))))),
    (f"a == {INT64_MAX} or a == {INT64_MIN}", AnyOf((C("a", Op.EQ, INT64_MAX), C("a", Op.EQ, INT64_MIN)))),
    ("  a\n==\t1  ", C("a", Op.EQ, 1)),
]


@pytest.mark.parametrize("text,expected", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_examples_parse_to_the_expected_trees(text, expected):
    tree = parse(text)
    assert strict(tree) == strict(expected)
    assert strict(parse(to_text(tree))) == strict(expected)


def test_places_carry_the_column_of_each_node():
    tree = parse('year >= 2020 and lang in ["en", "de"] and not exists(draft)')
    assert tree.place == "where.expression at column 1"
    assert [c.place for c in tree.children] == [
        "where.expression at column 1",
        "where.expression at column 18",
        "where.expression at column 43",
    ]
    assert tree.children[2].child.place == "where.expression at column 47"
    assert parse("a == 1", place="q").place == "q at column 1"


def test_timestamps_are_normalised_to_utc():
    value = parse('t == timestamp("2024-01-01T01:00:00+01:00")').value
    assert value == TS and value.utcoffset() == timedelta(0)


ERRORS = [
    ("", "where.expression: empty expression"),
    ("   ", "where.expression: empty expression"),
    ("a == 1 and b ==", "unexpected end of expression at column 16; expected a value"),
    ('a in ["x", ]', 'unexpected "]" at column 12; expected a value'),
    ("a in [1,]", 'where.expression: unexpected "]" at column 9; expected a value'),
    ("foo(a)", "where.expression: unknown function foo at column 1"),
    ("a == foo(1)", "unknown function foo at column 6"),
    ("a == 99999999999999999999", "integer 99999999999999999999 at column 6 does not fit in 64 bits"),
    (f"a == {INT64_MIN - 1}", "does not fit in 64 bits"),
    ("a == 1e999", "number 1e999 at column 6 is too large for a double"),
    ("a = 1", "unexpected character '=' at column 3"),
    ("a == 1 b == 2", 'unexpected "b" at column 8; expected "and", "or" or the end of the expression'),
    ("a", "unexpected end of expression at column 2; expected an operator"),
    ("a 1", 'unexpected "1" at column 3; expected an operator'),
    ('a == "open', "unterminated string at column 6"),
    ("`open == 1", "unterminated backquoted field at column 1"),
    ("(a == 1", "unexpected end of expression at column 8"),
    ("a == 1)", 'unexpected ")" at column 7'),
    ("and == 1", "and at column 1 is a keyword"),
    ("exists == 1", "exists at column 1 is a keyword"),
    ("a == nan", "nan at column 6 is not a value"),
    ("a == inf", "inf at column 6 is not a value"),
    ("A == 1 AND b == 2", 'unexpected "AND" at column 8'),
    ("exists(a, b)", "exists at column 1 takes one field"),
    ("exists()", "exists at column 1 takes one field"),
    ("exists(a == 1)", "exists at column 1 takes one field"),
    ("all(a)", "field a at column 5 needs an operator"),
    ('t < timestamp("2024-01-01")', "timestamp '2024-01-01' at column 5 is not RFC 3339"),
    ('t < timestamp("2024-02-30T00:00:00Z")', "at column 5 is not RFC 3339"),
    ('t < timestamp("2024-01-01T00:00:00.1234567Z")', "at column 5 is not RFC 3339"),
    ('t < timestamp("0001-01-01T00:00:00+01:00")', "at column 5 is not RFC 3339"),
    ("t < timestamp(1)", "timestamp at column 5 takes one string"),
    ('s == "\\x41"', "invalid escape \\x in the string at column 7"),
    ('s == "\\ud800"', "unpaired surrogate \\ud800 in the string at column 7"),
    ('s == "\\udc00x"', "unpaired surrogate"),
    ('s == "\\u12"', "needs four hex digits"),
    ("a in [[1]]", "nested list at column 7"),
    # validate_filter runs on the parsed tree, naming the node by its column
    ("a in 1", "where.expression at column 1: IN needs a list value"),
    ("b == 1 and a not in 'x'", "where.expression at column 12: NOT IN needs a list value"),
    ("a == [1]", "where.expression at column 1: == compares with a single value, not a list; use IN"),
    ("a < true", "where.expression at column 1: < needs a number, string or timestamp value, not a bool"),
    ("a >= [1]", "where.expression at column 1: >= needs a number, string or timestamp value, not a list"),
    ("a contains 1", "where.expression at column 1: CONTAINS needs a string value, not an int"),
    ("`` == 1", "where.expression at column 1: the field must not be empty"),
    ("not " * 40 + "a == 1", "nested more than 32 levels deep"),
    ("not " * 2000 + "a == 1", "nested too deeply"),
    (" or ".join(["a == 1"] * 1025), "1025 conditions; at most 1024 allowed"),
]


@pytest.mark.parametrize("text,message", ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_errors_name_the_place_and_column(text, message):
    with pytest.raises(InvalidArgument) as caught:
        parse(text)
    text_of_error = str(caught.value)
    assert text_of_error.startswith("where.expression")
    assert message in text_of_error
    assert text_of_error == "where.expression: empty expression; write a condition such as year >= 2020" or (
        "column" in text_of_error or "conditions" in text_of_error
    )


def test_no_lark_exception_escapes_on_garbage():
    for text in ["((((", "]", "a in [", "==", "'", "\\", "a == 1 and or b == 2", "a ==== 1", "\x00", "a == 1,2"]:
        with pytest.raises(InvalidArgument, match="column"):
            parse(text)


# -- validate_filter on trees built directly (as the proto decoding builds them) --------------------------------

P = "where.all[2].condition"
BAD_TREES = [
    (C("a", Op.IN, "x", P), f"{P}: IN needs a list value"),
    (C("a", Op.NOT_IN, 1, P), f"{P}: NOT IN needs a list value"),
    (C("a", Op.IN, (1, (2,)), P), f"{P}: IN list element 1 is a nested list"),
    (C("a", Op.LT, True, P), f"{P}: < needs a number, string or timestamp value, not a bool"),
    (C("a", Op.GTE, (1,), P), f"{P}: >= needs a number, string or timestamp value, not a list"),
    (C("a", Op.CONTAINS, 1.5, P), f"{P}: CONTAINS needs a string value, not a double"),
    (C("a", Op.CONTAINS, None, P), f"{P}: CONTAINS needs a value"),
    (C("a", Op.EQ, ("x",), P), f"{P}: == compares with a single value, not a list; use IN"),
    (C("a", Op.NE, ("x",), P), f"{P}: != compares with a single value, not a list; use NOT IN"),
    (C("a", Op.EQ, math.nan, P), f"{P}: nan is not a finite number"),
    (C("a", Op.LT, math.inf, P), f"{P}: inf is not a finite number"),
    (C("a", Op.IN, (1.0, -math.inf), P), f"{P}[1]: -inf is not a finite number"),
    (C("", Op.EQ, 1, P), f"{P}: the field must not be empty"),
    (C("a\nb", Op.EQ, 1, P), "contains a control character"),
    (C("a", None, 1, P), f"{P}: the operator is unspecified; allowed ==, !="),
    (C("a", Op.EQ, None, P), f"{P}: == needs a value"),
    (C("a", Op.EQ, 2**63, P), f"{P}: integer {2**63} does not fit in 64 bits"),
    (C("a", Op.EQ, "x" * 65537, P), f"{P}: string of 65537 bytes; at most 65536 allowed"),
    (C("a", Op.EQ, datetime(2024, 1, 1), P), "has no time zone"),
    (C("a", Op.EQ, b"x", P), "a bytes is not an attribute value"),
    (All((C("a", Op.EQ, 1), AnyOf((C("b", Op.IN, 3, "where.all[1].any[0].condition"),)))), "where.all[1].any[0]"),
]


@pytest.mark.parametrize("tree,message", BAD_TREES, ids=[m[:50] for _, m in BAD_TREES])
def test_validate_filter_messages(tree, message):
    with pytest.raises(InvalidArgument) as caught:
        validate_filter(tree)
    assert message in str(caught.value)


def _nested(depth: int):
    tree = C("a", Op.EQ, 1, "leaf")
    for i in range(depth):
        tree = Not(tree, place=f"level{depth - i}")
    return tree


def test_depth_limit_is_32():
    validate_filter(_nested(32))
    with pytest.raises(InvalidArgument, match=r"level33: the filter is nested more than 32 levels deep"):
        validate_filter(_nested(33))
    validate_filter(All((All((C("a", Op.EQ, 1),)),)), max_depth=2)
    with pytest.raises(InvalidArgument, match="more than 2 levels"):
        validate_filter(All((All((Not(C("a", Op.EQ, 1)),)),)), max_depth=2)


def test_condition_count_limit_is_1024():
    validate_filter(All(tuple(C("a", Op.EQ, i) for i in range(1024))))
    with pytest.raises(InvalidArgument, match="where: 1500 conditions; at most 1024 allowed"):
        validate_filter(All(tuple(C("a", Op.EQ, i) for i in range(1500)), place="where"))


def test_exists_ignores_its_value_and_valid_trees_pass():
    validate_filter(C("a", Op.EXISTS, None))
    validate_filter(C("a", Op.EXISTS, ("whatever", 1)))
    validate_filter(All(()))
    validate_filter(AnyOf(()))
    validate_filter(C("a", Op.IN, ()))


def test_describe_canonical_text():
    assert describe(C("year", Op.GTE, 2020)) == "year >= 2020"
    assert describe(C("lang", Op.IN, ("en", "de"))) == 'lang in ["en", "de"]'
    assert describe(Not(C("draft", Op.EXISTS, None))) == "not exists(draft)"
    assert describe(C("odd key", Op.NE, 1)) == "`odd key` != 1"
    assert describe(C("in", Op.EQ, "x")) == '`in` == "x"'
    assert describe(C("t", Op.LT, TS)) == 't < timestamp("2024-01-01T00:00:00Z")'
    assert describe(C("t", Op.LT, TS.astimezone(timezone(timedelta(hours=2))))) == (
        't < timestamp("2024-01-01T00:00:00Z")'
    )
    assert describe(C("x", Op.EQ, 1e-7)) == "x == 1e-07"
    assert describe(C("x", Op.NOT_IN, (True, 1.5))) == "x not in [true, 1.5]"
    assert describe(C("x", Op.CONTAINS, 'a"b\n')) == 'x contains "a\\"b\\n"'
    tree = All((AnyOf((C("a", Op.EQ, 1), C("b", Op.EQ, 2))), Not(All((C("c", Op.EQ, 3), C("d", Op.EQ, 4))))))
    assert describe(tree) == "(a == 1 or b == 2) and not (c == 3 and d == 4)"


def test_conditions_of_string_map_and_combine():
    tree = conditions_of_string_map({"lang": "en", "a": "1"})
    assert strict(tree) == strict(All((C("a", Op.EQ, "1"), C("lang", Op.EQ, "en"))))
    assert [c.place for c in tree.children] == ['filter["a"]', 'filter["lang"]']
    assert conditions_of_string_map({}) is None
    one = C("a", Op.EQ, 1)
    assert combine(None, one, None) is one
    assert combine() is None and combine(None) is None
    assert strict(combine(one, tree)) == strict(All((one, tree)))
    assert without_places(C("a", Op.EQ, 1, "x")) == C("a", Op.EQ, 1)


# -- the round trip -----------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_keys = st.one_of(
    st.sampled_from(["a", "year", "x.y", "_k-1", "and", "in", "not", "exists", "timestamp", "all", "any", "true"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=10),
    st.sampled_from(["odd key", "a`b", "``", "é", "a b", '"q"', "'", "\\", "1abc", "-x"]),
)
_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-7, 1e300, -0.0, 0.0, 5e-324, 2.0**53, -1.5e3, 1.0, 0.1]),
)
_ints = st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from([0, -1, 2**53 + 1, INT64_MAX, INT64_MIN, 2**53]))
_timestamps = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
_scalars = st.one_of(_text, _ints, _floats, st.booleans(), _timestamps)


@st.composite
def _conditions(draw):
    field = draw(_keys)
    op = draw(st.sampled_from(list(Op)))
    if op is Op.EXISTS:
        value = None
    elif op in (Op.IN, Op.NOT_IN):
        value = tuple(draw(st.lists(_scalars, max_size=4)))
    elif op is Op.CONTAINS:
        value = draw(_text)
    elif op in (Op.EQ, Op.NE):
        value = draw(_scalars)
    else:
        value = draw(st.one_of(_text, _ints, _floats, _timestamps))
    return Condition(field, op, value)


trees = st.recursive(
    _conditions(),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda c: All(tuple(c))),
        st.lists(children, max_size=4).map(lambda c: AnyOf(tuple(c))),
        children.map(Not),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip(tree):
    validate_filter(tree)
    text = to_text(tree)
    assert strict(parse(text)) == strict(tree), text
