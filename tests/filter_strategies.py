"""Hypothesis strategies for typed attributes and filter trees, shared by the filter tests.

Values come from small pools that collide often (so random conditions match), edge values (2**53 +- 1, int64
bounds, -0.0, 1e300, astral characters) and the whole of each kind.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from semsearch_server.filtering import All, AnyOf, Condition, Not, Op
from semsearch_server.filtering.values import INT64_MAX, INT64_MIN

T0 = datetime(2024, 1, 1, tzinfo=UTC)
KEYS = ["a", "b", "tags"]
INTS = [0, 1, -1, 2, 7, 2**53 - 1, 2**53, 2**53 + 1, 2**53 + 2, 2**63 - 1, INT64_MIN, INT64_MIN + 1, 2**62]
FLOATS = [0.0, -0.0, 1.0, 1.5, -1.0, 2.0**53, 2.0**53 + 2, 2.0**63, -(2.0**63), 1e300, -1e300, 5e-324, 0.5, 7.0]
STRINGS = ["", "a", "ab", "b", "B", "é", "😀", "ml", "wine", "red wine", "x" * 300, "a\nb", "\uffff"]
STAMPS = [T0, T0 + timedelta(microseconds=1), T0 - timedelta(days=1), datetime(1, 1, 1, tzinfo=UTC)]

scalars = st.one_of(
    st.sampled_from(INTS),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from(FLOATS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(STRINGS),
    st.booleans(),
    st.sampled_from(STAMPS),
)
pooled = st.one_of(
    st.sampled_from(INTS), st.sampled_from(FLOATS), st.sampled_from(STRINGS), st.booleans(), st.sampled_from(STAMPS)
)
HOT = [1, 1.0, 2**53 + 1, float(2**53), "a", "ab", True, T0]  # small, so random conditions often match
hot = st.sampled_from(HOT)
values = st.one_of(hot, hot, scalars, pooled, st.lists(st.one_of(hot, pooled), max_size=4).map(tuple))
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
labels = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10**6, 10**9 + 7, 2**40])


@st.composite
def conditions(draw):
    field = draw(st.sampled_from(KEYS + KEYS + ["missing"]))
    op = draw(st.sampled_from(list(Op)))
    if op is Op.EXISTS:
        value = None
    elif op in (Op.IN, Op.NOT_IN):
        value = tuple(draw(st.lists(st.one_of(hot, pooled, scalars), max_size=4)))
    elif op is Op.CONTAINS:
        value = draw(st.one_of(st.sampled_from(["", "a", "b", "wine", "Wine", "x", "😀"]), st.text(max_size=2)))
    elif op in (Op.EQ, Op.NE):
        value = draw(st.one_of(hot, pooled, scalars))
    else:
        value = draw(
            st.one_of(
                st.sampled_from([v for v in HOT if not isinstance(v, bool)]),
                st.sampled_from(INTS),
                st.sampled_from(FLOATS),
                st.sampled_from(STRINGS),
                st.sampled_from(STAMPS),
            )
        )
    return Condition(field, op, value)


trees = st.recursive(
    conditions(),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda c: All(tuple(c))),
        st.lists(children, max_size=3).map(lambda c: AnyOf(tuple(c))),
        children.map(Not),
    ),
    max_leaves=8,
)


@st.composite
def string_conditions(draw):
    """EQ / IN on strings: the conditions a store may hand to its engine as an expression (the Milvus store's
    superset translation), on keys that hold strings, lists of strings and other kinds alike."""
    field = draw(st.sampled_from(KEYS))
    strings = st.sampled_from(["a", "ab", "b", "", "ml"])
    if draw(st.booleans()):
        return Condition(field, Op.EQ, draw(strings))
    return Condition(field, Op.IN, tuple(draw(st.lists(strings, min_size=1, max_size=3))))


# Trees of those under all / any, now and then with any other condition beside them.
translatable_trees = st.recursive(
    st.one_of(string_conditions(), string_conditions(), conditions()),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: All(tuple(c))),
        st.lists(children, min_size=1, max_size=3).map(lambda c: AnyOf(tuple(c))),
    ),
    max_leaves=5,
)
