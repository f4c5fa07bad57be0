"""The columnar AttributeIndex agrees exactly with the reference semantics (filtering/evaluate.py) on random
documents, writes and trees; plus a printed timing for 1M documents x 10 attributes."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from filter_strategies import FLOATS, INTS, STAMPS, STRINGS, documents, labels, trees
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semsearch_server.filtering import Condition, Op, matches, parse, validate_filter
from semsearch_server.index.attribute_index import AttributeIndex

operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), labels, documents),
        st.tuples(st.just("put_many"), st.lists(st.tuples(labels, documents), max_size=6)),
        st.tuples(st.just("remove"), labels),
        st.tuples(st.just("check"), trees),
    ),
    min_size=1,
    max_size=40,
)


def check(index: AttributeIndex, live: dict, tree) -> None:
    validate_filter(tree)
    expected = sorted(label for label, attributes in live.items() if matches(tree, attributes))
    got = index.evaluate(tree)
    assert got.dtype == np.int64
    assert got.tolist() == expected, tree
    assert index.count(tree) == len(expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(operations, st.lists(trees, min_size=2, max_size=4))
def test_index_agrees_with_the_reference(ops, standing_trees):
    """After every write the standing trees are re-checked, so each freeze, replacement and removal is seen
    by an evaluation (a stale row, a missed replacement or a lost live mask shows up at once)."""
    index, live = AttributeIndex(), {}
    for op in ops:
        if op[0] == "put":
            index.put(op[1], op[2])
            live[op[1]] = op[2]
        elif op[0] == "put_many":
            index.put_many(op[1])
            live.update(op[1])
        elif op[0] == "remove":
            index.remove(op[1])
            live.pop(op[1], None)
        else:
            check(index, live, op[1])
        assert len(index) == len(live)
        for tree in standing_trees:
            check(index, live, tree)
    assert index.labels().tolist() == sorted(live)
    assert index.evaluate(None).tolist() == sorted(live) and index.count(None) == len(live)


def test_every_scalar_pair_and_operator():
    """Exhaustive over the value pools: one document per value (and one holding them all as a list), every
    operator against every value. Catches int-vs-double edges (2**53 + 1, int64 bounds, 1e300) directly."""
    pool = INTS + FLOATS + STRINGS + [True, False] + STAMPS
    index, live = AttributeIndex(), {}
    for label, value in enumerate(pool):
        live[label] = {"a": value}
    live[len(pool)] = {"a": tuple(pool[::3])}
    live[len(pool) + 1] = {}
    index.put_many(live.items())
    for op in Op:
        for value in pool:
            if op in (Op.IN, Op.NOT_IN):
                value = (value,)
            elif op in (Op.LT, Op.LTE, Op.GT, Op.GTE) and isinstance(value, bool):
                continue
            elif op is Op.CONTAINS and not isinstance(value, str):
                continue
            tree = Condition("a", op, None if op is Op.EXISTS else value)
            expected = [label for label, attributes in live.items() if matches(tree, attributes)]
            assert index.evaluate(tree).tolist() == expected, tree


def test_many_writes_merge_and_compact_segments():
    """Long runs of small writes with queries in between: segments are merged and dead rows dropped, and the
    answers stay exact."""
    rng = random.Random(7)
    index, live = AttributeIndex(), {}
    tree = parse('a >= 50 or b == "k3" or exists(c) or tags in [1, "x"]')
    for step in range(3000):
        label = rng.randrange(400)
        if rng.random() < 0.2:
            index.remove(label)
            live.pop(label, None)
        else:
            doc = {"a": rng.randrange(100), "b": f"k{rng.randrange(10)}"}
            if rng.random() < 0.3:
                doc["c"] = rng.random()
            if rng.random() < 0.3:
                doc["tags"] = tuple(rng.choice([1, "x", 2.0, "y"]) for _ in range(rng.randrange(3)))
            index.put(label, doc)
            live[label] = doc
        if step % 37 == 0:
            check(index, live, tree)
    check(index, live, tree)
    for by_kind in index._columns.values():
        for column in by_kind.values():
            assert len(column.segments) <= 8


def test_unknown_removes_and_replacements():
    index = AttributeIndex()
    index.remove(5)
    index.remove_many([1, 2])
    assert len(index) == 0 and index.evaluate(parse("a == 1")).tolist() == []
    index.put(5, {"a": 1})
    index.evaluate(parse("a == 1"))
    index.put(5, {"a": 2})
    index.put(5, {"a": 3})
    assert index.evaluate(parse("a == 1")).tolist() == []
    assert index.evaluate(parse("a == 3")).tolist() == [5]
    assert index.evaluate(parse("a != 3")).tolist() == []
    index.remove(5)
    index.remove(5)
    assert len(index) == 0 and index.evaluate(parse("a != 3")).tolist() == []
    index.put(5, {"b": True})
    assert index.evaluate(parse("a != 3 and b == true")).tolist() == [5]
    with pytest.raises(ValueError):
        index.put(-1, {})
    with pytest.raises(ValueError):
        index.put_many([(6, {"a": 3}), (-2, {})])
    assert len(index) == 1 and index.evaluate(parse("a == 3")).tolist() == []
    index.put_many([(6, {"a": 3}), (6, {"a": 4}), (5, {"a": 4})])
    assert len(index) == 2 and index.evaluate(parse("a == 4")).tolist() == [5, 6]


def test_concurrent_evaluations_after_writes():
    index = AttributeIndex()
    index.put_many((label, {"a": label % 10, "s": f"v{label % 7}"}) for label in range(20000))
    tree = parse('a < 3 and s != "v1"')
    expected = [label for label in range(20000) if label % 10 < 3 and label % 7 != 1]
    results, errors = [], []

    def run():
        try:
            results.append(index.evaluate(tree).tolist())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 8 and all(r == expected for r in results)


def test_sparse_keys_take_the_per_document_path():
    """Many keys each on few documents (and odd value types) are split document by document; same answers."""
    index, live = AttributeIndex(), {}
    for label in range(300):
        doc = {f"k{label % 50}": label, "shared": (label, f"s{label}") if label % 2 else float(label)}
        if label % 3 == 0:
            doc["odd"] = True if label % 2 else label  # bool and int under one key
        live[label] = doc
    index.put_many(live.items())
    for text in [
        "k7 == 57",
        "k7 >= 100",
        "shared > 250",
        'shared contains "s29"',
        "odd == true",
        "odd == 0",
        "odd != 3",
    ]:
        check(index, live, parse(text))
