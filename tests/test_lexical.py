"""The lexical index: tokenisation, BM25 against hand-computed numbers and a brute-force reference, snapshots."""

from __future__ import annotations

import math
import threading
import tracemalloc
import zipfile
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semsearch_server.index.lexical import Analyzer, LexicalIndex, Token

PLAIN = Analyzer(stemming=False, stopwords=False)


# -- tokenisation ------------------------------------------------------------------------------------------
def test_analyzer_lowercases_drops_stopwords_and_stems():
    assert Analyzer().terms("The Cells were RUNNING in the Laboratories") == ["cell", "were", "run", "laboratori"]
    assert Analyzer(stemming=False).terms("The Cells were RUNNING") == ["cells", "were", "running"]
    assert Analyzer(stopwords=False).terms("The cells") == ["the", "cell"]
    assert PLAIN.terms("The Cells") == ["the", "cells"]


def test_analyzer_splits_unicode_words_and_keeps_combining_marks_inside_them():
    decomposed = "cafe\u0301"  # e + COMBINING ACUTE ACCENT
    assert PLAIN.terms(f"Café {decomposed} naïve ÉTUDE") == ["café", "café", "naïve", "étude"]
    assert PLAIN.terms("Straße: 東京 नमस्ते x²") == ["straße", "東京", "नमस्ते", "x²"]
    assert PLAIN.terms("well-known e-mail, it's") == ["well", "known", "e", "mail", "it", "s"]
    assert PLAIN.terms("") == [] and PLAIN.terms("!! -- 😀") == []


@pytest.mark.parametrize(
    "text",
    [
        "plain words only",
        "nul\x00inside and\x01control\x1f chars\x7f here",
        "emoji 😀 between👍🏽words 👨‍👩‍👧 family",
        "combining cafe\u0301 and n\u0303o and a\u0308\u0301 stacked",
        "İstanbul ΟΔΟΣ final sigma",  # lower-casing changes the length of some words
        "\ud7ff edge \U0010ffff plane",
    ],
)
def test_token_offsets_slice_the_original_text(text):
    tokens = PLAIN.tokens(text)
    assert tokens, text
    for token in tokens:
        word = text[token.start : token.end]
        assert word and word.strip() == word
        assert PLAIN.terms(word) == [token.term]
    assert [t.term for t in tokens] == PLAIN.terms(text)


def test_tokens_of_the_stemming_analyzer_point_at_the_written_words():
    text = "The\x00Running 😀 dogs"
    assert Analyzer().tokens(text) == [Token("run", 4, 11), Token("dog", 14, 18)]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_terms_equal_the_terms_of_tokens_for_any_text(text):
    for analyzer in (Analyzer(), PLAIN):
        tokens = analyzer.tokens(text)
        assert [t.term for t in tokens] == analyzer.terms(text)
        assert all(0 <= t.start < t.end <= len(text) for t in tokens)
        assert [t.start for t in tokens] == sorted(t.start for t in tokens)


# -- BM25 on a corpus computed by hand ---------------------------------------------------------------------
def hand_corpus() -> LexicalIndex:
    index = LexicalIndex(PLAIN, k1=1.2, b=0.75)
    index.add([10, 20, 30], ["apple banana apple", "banana cherry", "cherry cherry cherry date"])
    return index


def test_bm25_matches_numbers_computed_by_hand():
    # N = 3, dl = 3, 2, 4, avgdl = 3, k1 = 1.2, b = 0.75.
    # idf(apple; df 1) = ln(1 + 2.5/1.5) = ln(8/3) = 0.9808293
    # idf(banana, cherry; df 2) = ln(1 + 1.5/2.5) = ln(1.6) = 0.4700036
    # length norm K = k1 * (1 - b + b * dl/avgdl): doc 10: 1.2; doc 20: 1.2 * (0.25 + 0.5) = 0.9;
    #   doc 30: 1.2 * (0.25 + 1.0) = 1.5
    # apple in 10 (tf 2): 0.9808293 * 2 * 2.2 / (2 + 1.2) = 0.9808293 * 1.375 = 1.3486402
    # banana in 10 (tf 1): 0.4700036 * 2.2 / 2.2 = 0.4700036
    # banana in 20 (tf 1): 0.4700036 * 2.2 / 1.9 = 0.5442147; cherry in 20: the same
    # cherry in 30 (tf 3): 0.4700036 * 6.6 / 4.5 = 0.6893387
    index = hand_corpus()
    assert index.scores("apple", [10, 20, 30, 99]) == pytest.approx([1.3486402, 0, 0, 0], abs=1e-6)
    labels, scores = index.search("banana cherry", 10)
    assert labels.tolist() == [20, 30, 10]
    assert scores == pytest.approx([2 * 0.5442147, 0.6893387, 0.4700036], abs=1e-6)
    assert labels.dtype == np.int64 and scores.dtype == np.float32
    # A repeated query word counts once per occurrence: 2 x banana in 10.
    assert index.scores("banana banana", [10])[0] == pytest.approx(2 * 0.4700036, abs=1e-6)
    # Unknown words and no words score nothing.
    assert index.search("zebra", 5)[0].size == 0 and index.search("", 5)[0].size == 0


def test_search_keeps_only_positive_scores_breaks_ties_by_label_and_honours_allowed():
    index = LexicalIndex(PLAIN)
    index.add([5, 3, 9, 1], ["same words", "same words", "same words", "other"])
    labels, scores = index.search("same", 2)
    assert labels.tolist() == [3, 5] and scores[0] == scores[1] > 0
    assert index.search("same", 10)[0].tolist() == [3, 5, 9]  # 1 has no query term
    assert index.search("same", 10, allowed=np.array([9, 1, 42]))[0].tolist() == [9]
    assert index.search("same", 0)[0].size == 0


def test_explain_lists_each_distinct_query_term_in_query_order_and_sums_to_the_score():
    index = hand_corpus()
    parts = index.explain("Cherry zebra banana CHERRY", 20)
    assert [(p.term, p.query_text, p.term_frequency, p.document_frequency) for p in parts] == [
        ("cherry", "Cherry CHERRY", 1, 2),
        ("zebra", "zebra", 0, 0),
        ("banana", "banana", 1, 2),
    ]
    assert parts[0].contribution == pytest.approx(2 * 0.5442147, abs=1e-6) and parts[1].contribution == 0
    total = sum(p.contribution for p in parts)
    assert total == pytest.approx(float(index.scores("Cherry zebra banana CHERRY", [20])[0]), abs=1e-5)
    assert index.explain("cherry", 12345) == []


def test_constructor_rejects_bad_parameters():
    with pytest.raises(ValueError, match="k1"):
        LexicalIndex(k1=-1)
    with pytest.raises(ValueError, match="b must"):
        LexicalIndex(b=1.5)
    with pytest.raises(ValueError, match="labels"):
        LexicalIndex().add([1, 2], ["one"])


# -- exactness after any sequence of writes ----------------------------------------------------------------
WORDS = ["cell", "cells", "gene", "genes", "the", "protein", "water", "wine", "drink", "of", "Run", "running"]


def brute_force(live: dict[int, str], query: str, analyzer: Analyzer, k1: float, b: float) -> dict[int, float]:
    """BM25 straight from the definition, in float64, from the live texts."""
    docs = {label: Counter(analyzer.terms(text)) for label, text in live.items()}
    n = len(docs)
    if n == 0:
        return {}
    avgdl = sum(sum(c.values()) for c in docs.values()) / n
    out = {}
    for label, counts in docs.items():
        dl = sum(counts.values())
        score = 0.0
        for term in analyzer.terms(query):  # repeated query terms count per occurrence
            tf = counts.get(term, 0)
            if tf:
                df = sum(1 for c in docs.values() if term in c)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
        out[label] = score
    return out


text_st = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)
op_st = st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 12), text_st), min_size=1, max_size=5)),
    st.tuples(st.just("remove"), st.lists(st.integers(0, 14), max_size=4)),
    st.tuples(st.just("snapshot"), st.none()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(op_st, min_size=1, max_size=14),
    query=st.lists(st.sampled_from(WORDS + ["absent"]), min_size=1, max_size=5).map(" ".join),
    compact=st.booleans(),
)
def test_index_equals_brute_force_after_any_adds_replacements_and_removals(tmp_path, ops, query, compact):
    analyzer, k1, b = Analyzer(), 1.2, 0.75
    index = LexicalIndex(analyzer, k1, b)
    if compact:
        index.compact_min_dead = 0  # compact whenever dead postings outnumber live ones
    live: dict[int, str] = {}
    for kind, arg in ops:
        if kind == "add":
            index.add([label for label, _ in arg], [text for _, text in arg])
            live.update(arg)
        elif kind == "remove":
            index.remove(arg)
            for label in arg:
                live.pop(label, None)
        else:
            index.write(tmp_path / "lexical.npz")
            index = LexicalIndex.read(tmp_path / "lexical.npz", analyzer, k1, b)
            index.compact_min_dead = 0 if compact else index.compact_min_dead
    expected = brute_force(live, query, analyzer, k1, b)
    assert len(index) == len(live)

    labels, scores = index.all_scores(query)
    assert sorted(labels.tolist()) == sorted(live)
    got = dict(zip(labels.tolist(), scores.tolist(), strict=True))
    for label, score in expected.items():
        assert got[label] == pytest.approx(score, rel=1e-6, abs=1e-6)
        parts = index.explain(query, label)
        assert sum(p.contribution for p in parts) == pytest.approx(score, abs=1e-5)
    assert index.scores(query, list(live) + [99]).tolist() == pytest.approx(
        [expected[x] for x in live] + [0.0], rel=1e-6, abs=1e-6
    )

    # Top-k: best first, positive only, ties by label; compared on the float32 scores the index returns.
    ranked = sorted(((-np.float32(s), label) for label, s in expected.items() if s > 0))
    top_labels, top_scores = index.search(query, 4)
    assert top_labels.tolist() == [label for _, label in ranked[:4]]
    assert top_scores.tolist() == pytest.approx([-s for s, _ in ranked[:4]], rel=1e-6)


def test_compaction_keeps_scores_and_frees_dead_postings():
    index = LexicalIndex(PLAIN)
    index.compact_min_dead = 0
    index.add(range(100), [f"word{i % 7} common" for i in range(100)])
    before = index.all_scores("word3 common")
    for _ in range(3):  # replace every document with itself: all old postings die
        index.add(range(100), [f"word{i % 7} common" for i in range(100)])
    assert index._dead_postings <= index._fwd_term.size // 2
    after = index.all_scores("word3 common")
    order_b, order_a = np.argsort(before[0]), np.argsort(after[0])
    assert np.array_equal(before[0][order_b], after[0][order_a])
    assert np.allclose(before[1][order_b], after[1][order_a])


def test_a_write_allocates_in_proportion_to_its_documents_not_to_the_vocabulary():
    """Document frequencies are updated for the batch's terms only: adding or removing one short document
    in an index of 100,000 distinct terms allocates a few KB (a bincount over the vocabulary allocated 0.8 MB
    on every write, a pass over every term ever seen)."""
    index = LexicalIndex(PLAIN)
    index.compact_min_dead = 10**9
    vocabulary = 100_000
    index.add(range(vocabulary // 10), [" ".join(f"t{i}x{j}" for j in range(10)) for i in range(vocabulary // 10)])
    assert len(index._terms) == vocabulary
    # Room for the next documents' entries and slots, so that no buffer doubles inside the measured writes.
    for buffer in (index._fwd_term, index._fwd_tf, index._slot_label, index._slot_alive, index._slot_start):
        buffer.reserve(64)
    index._slot_count.reserve(64)
    index._slot_length.reserve(64)
    for postings in index._postings[:3]:
        postings.reserve(8)
    label = vocabulary // 10
    text = "t0x0 t0x1 t0x2"  # known terms: the vocabulary does not grow either

    def peak_bytes(write) -> int:
        tracemalloc.start()
        try:
            write()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    added = peak_bytes(lambda: index.add([label], [text]))
    removed = peak_bytes(lambda: index.remove([label]))
    assert added < 64_000 and removed < 64_000, (added, removed)
    assert index.explain("t0x1", 0)[0].document_frequency == 1  # the counts stayed exact


def as_dict(labels: np.ndarray, scores: np.ndarray) -> dict[int, float]:
    return dict(zip(labels.tolist(), scores.tolist(), strict=True))


# -- snapshots ---------------------------------------------------------------------------------------------
def test_snapshot_round_trip_keeps_scores_and_accepts_later_writes(tmp_path):
    index = LexicalIndex()
    index.add([1, 2, 3, 4], ["Cells divide", "water and wine", "I drink water", "café ΟΔΟΣ"])
    index.remove([3])
    index.write(tmp_path / "lex.npz")
    copy = LexicalIndex.read(tmp_path / "lex.npz")
    assert len(copy) == 3
    for query in ["cell water", "drink", "café οδος"]:
        assert as_dict(*index.all_scores(query)) == as_dict(*copy.all_scores(query))
    copy.add([3, 5], ["drink wine", "water"])
    assert copy.search("drink", 5)[0].tolist() == [3]


def test_empty_index_round_trips(tmp_path):
    LexicalIndex().write(tmp_path / "lex.npz")
    empty = LexicalIndex.read(tmp_path / "lex.npz")
    assert len(empty) == 0 and empty.search("anything", 3)[0].size == 0


def test_damaged_or_foreign_snapshots_raise(tmp_path):
    index = LexicalIndex()
    index.add(range(50), [f"document number {i} about cells" for i in range(50)])
    path = tmp_path / "lex.npz"
    index.write(path)
    good = path.read_bytes()

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError):
        LexicalIndex.read(path)

    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError):
        LexicalIndex.read(path)

    path.write_bytes(b"")
    with pytest.raises(ValueError):
        LexicalIndex.read(path)

    with pytest.raises(OSError):
        LexicalIndex.read(tmp_path / "missing.npz")

    # A well-formed archive whose arrays disagree (a term id past the vocabulary).
    path.write_bytes(good)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["fwd"][0, 0] = 10_000
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="out of range"):
        LexicalIndex.read(path)

    path.write_bytes(good)
    with pytest.raises(ValueError, match="analyzer"):
        LexicalIndex.read(path, Analyzer(stemming=False))
    assert zipfile.is_zipfile(path)
    assert len(LexicalIndex.read(path)) == 50


def test_analyzer_is_consistent_across_threads_while_its_cache_is_replaced():
    words = [f"running{i} cells{i % 50} the" for i in range(400)]
    expected = [Analyzer().terms(w) for w in words]
    shared = Analyzer()
    shared.cache_size = 64  # replaced over and over while other threads read it
    results: list[list[list[str]]] = [[] for _ in range(4)]

    def work(slot: int) -> None:
        for text in words[slot::2] + words:
            results[slot].append(shared.terms(text))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for slot in range(4):
        assert results[slot] == [expected[i] for i in range(slot, 400, 2)] + expected
