"""Hybrid fusion arithmetic, computed by hand."""

from __future__ import annotations

import pytest
from semsearch_server.core.ranking import Candidate, fuse, ranks
from semsearch_server.domain import Fusion, HybridParams


def pool() -> list[Candidate]:
    # dense list: a (0.8), b (0.6), c (0.4); lexical list: c (6.0), a (3.0); b has no query term.
    return [
        Candidate("a", dense=0.8, lexical=3.0, dense_rank=1, lexical_rank=2),
        Candidate("b", dense=0.6, lexical=0.0, dense_rank=2, lexical_rank=0),
        Candidate("c", dense=0.4, lexical=6.0, dense_rank=3, lexical_rank=1),
    ]


def test_weighted_min_max_normalises_cosine_and_max_normalises_bm25():
    scored, context = fuse(pool(), HybridParams(Fusion.WEIGHTED, dense_weight=0.5))
    # a: 0.5 * (0.8-0.4)/0.4 + 0.5 * 3/6 = 0.5 + 0.25 = 0.75
    # b: 0.5 * (0.6-0.4)/0.4 + 0            = 0.25
    # c: 0.5 * 0 + 0.5 * 6/6                = 0.5
    assert [(c.doc_id, round(s, 6)) for c, s in scored] == [("a", 0.75), ("c", 0.5), ("b", 0.25)]
    assert (context.dense_min, context.dense_max, context.lexical_max) == pytest.approx((0.4, 0.8, 6.0))


def test_the_dense_weight_moves_the_balance():
    scored, _ = fuse(pool(), HybridParams(Fusion.WEIGHTED, dense_weight=0.2))
    # a: 0.2*1 + 0.8*0.5 = 0.6; b: 0.2*0.5 = 0.1; c: 0.8*1 = 0.8
    assert [(c.doc_id, round(s, 6)) for c, s in scored] == [("c", 0.8), ("a", 0.6), ("b", 0.1)]


def test_rrf_sums_reciprocal_ranks_of_the_lists_a_document_is_in():
    scored, _ = fuse(pool(), HybridParams(Fusion.RRF, rrf_k=60))
    expected = {"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61}
    assert [c.doc_id for c, _ in scored] == ["a", "c", "b"]
    for c, s in scored:
        assert s == pytest.approx(expected[c.doc_id], abs=1e-7)


def test_equal_cosines_and_no_lexical_match_do_not_divide_by_zero():
    flat = [Candidate("x", 0.5, 0.0), Candidate("y", 0.5, 0.0)]
    scored, _ = fuse(flat, HybridParams(Fusion.WEIGHTED, dense_weight=0.5))
    assert [s for _, s in scored] == [0.5, 0.5]
    assert fuse([], HybridParams())[0] == []


def test_ranks_are_one_based_best_first_with_ties_by_id():
    assert ranks({"b": 2.0, "a": 2.0, "c": 0.0}, keep_zero=False) == {"a": 1, "b": 2}
    assert ranks({"b": 2.0, "a": 2.0, "c": 0.0}, keep_zero=True) == {"a": 1, "b": 2, "c": 3}
