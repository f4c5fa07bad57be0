"""The dense search's filter plan: a filter not cached that most documents match is checked on the unfiltered
search's candidates only (no evaluation over every document), and the answer is still brute force's, even
when the estimate misleads (the matches lie away from the query: the candidates fail, the filter is then
evaluated fully and the answer is the exact one, not short).

Every answer is checked against brute force over the documents the reference evaluator says match."""

from __future__ import annotations

import numpy as np
import pytest
from semsearch_server.domain import (
    CollectionSettings,
    Document,
    IndexKind,
    IndexSpec,
    ModelFingerprint,
    Passage,
    PassageConfig,
)
from semsearch_server.filtering import matches, parse
from semsearch_server.index import vector_index
from semsearch_server.index.attribute_index import AttributeIndex
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.faiss_store import FaissIndexStore

DIM = 16
N = 2000
K = 10
FINGERPRINT = ModelFingerprint("fake", "0" * 64, DIM, "mean", True, 16, "fake")


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Spied:
    """A store whose full filter evaluations are counted."""

    def __init__(self, store: FaissIndexStore, vectors: np.ndarray, attrs: list[dict], monkeypatch) -> None:
        self.store, self.vectors, self.attrs = store, vectors, attrs
        self.evaluations = 0
        evaluate = AttributeIndex.evaluate

        def counted(index: AttributeIndex, tree):
            self.evaluations += 1
            return evaluate(index, tree)

        monkeypatch.setattr(AttributeIndex, "evaluate", counted)

    def exact(self, query: np.ndarray, where: str) -> list[str]:
        tree = parse(where)
        ids = np.array([i for i, a in enumerate(self.attrs) if matches(tree, a)], dtype=np.int64)
        order = np.argsort(-(self.vectors[ids] @ query), kind="stable")[:K]
        return [f"d{i}" for i in ids[order]]

    def search(self, query: np.ndarray, where: str) -> list[str]:
        return [m.doc_id for m in self.store.search_dense(query[None, :], K, parse(where))[0]]


def make(tmp_path, kind: str, monkeypatch, attrs_of) -> Spied:
    # HNSW would score a filter of this small collection exactly: make it a large one's case.
    monkeypatch.setattr(vector_index, "_KEPT_EXACT_MAX", 0)
    monkeypatch.setattr(vector_index, "_EXACT_FILTER_SHARE", 0.0)
    settings = CollectionSettings(index=IndexSpec(kind=IndexKind(kind)), passages=PassageConfig(enabled=False))
    store = FaissIndexStore.create(tmp_path / kind, kind, settings, FINGERPRINT, snapshot_every=10**6)
    vectors = unit(np.random.default_rng(3), N)
    attrs = attrs_of(vectors)
    store.upsert(
        [
            EmbeddedDocument(Document(f"d{i}", f"text {i}", attrs[i]), (Passage(0, 0, 4),), vectors[i][None, :])
            for i in range(N)
        ]
    )
    return Spied(store, vectors, attrs, monkeypatch)


@pytest.fixture(params=["flat", "hnsw"])
def kind(request) -> str:
    return request.param


def test_a_new_filter_most_documents_match_is_checked_on_candidates_and_exact(tmp_path, kind, monkeypatch):
    spied = make(tmp_path, kind, monkeypatch, lambda v: [{"g": i % 10, "n": i} for i in range(len(v))])
    queries = unit(np.random.default_rng(8), 12)
    for i, query in enumerate(queries):
        where = f"g != 0 and n != {-1 - i}"  # 90 %, a filter never seen before at each query
        assert spied.search(query, where) == spied.exact(query, where)
    assert spied.evaluations == 0, "a high-share filter was evaluated over every document"
    # Asked again in the same state: evaluated once and cached, then answered from the cache.
    for query in queries[:3]:
        assert spied.search(query, "g != 0 and n != -1") == spied.exact(query, "g != 0 and n != -1")
    assert spied.evaluations == 1
    spied.store.close(snapshot=False)


def test_a_misleading_estimate_falls_back_to_the_full_evaluation_and_is_not_short(tmp_path, kind, monkeypatch):
    query = unit(np.random.default_rng(21), 1)[0]

    def away_from_the_query(vectors: np.ndarray) -> list[dict]:
        # The tenth of the documents nearest to the query fail the filter, the other nine tenths pass it.
        near = set(np.argsort(-(vectors @ query))[: len(vectors) // 10].tolist())
        return [{"side": 0 if i in near else 1} for i in range(len(vectors))]

    spied = make(tmp_path, kind, monkeypatch, away_from_the_query)
    assert spied.store._attribute_index().estimate_share(parse("side == 1")) == pytest.approx(0.9)
    got = spied.search(query, "side == 1")
    assert len(got) == K and got == spied.exact(query, "side == 1")
    assert spied.evaluations == 1, "the candidates all failed: the filter must have been evaluated"
    spied.store.close(snapshot=False)


def test_a_cached_filter_is_answered_from_the_cache_and_a_rare_one_evaluated_and_cached(tmp_path, monkeypatch):
    spied = make(tmp_path, "hnsw", monkeypatch, lambda v: [{"g": i % 10} for i in range(len(v))])
    queries = unit(np.random.default_rng(4), 3)
    assert spied.store.count(parse("g != 0")) == N * 9 // 10  # Count evaluates, and caches, the answer
    for query in queries:
        assert spied.search(query, "g != 0") == spied.exact(query, "g != 0")
        assert spied.search(query, "g == 3") == spied.exact(query, "g == 3")  # 10 %: evaluated, then cached
    assert spied.evaluations == 2
    spied.store.close(snapshot=False)


def test_the_share_estimate_comes_from_the_columns():
    index = AttributeIndex()
    for i in range(1000):
        index.put(i, {"g": i % 10, "x": float(i) / 1000, "colour": ("red", "white")[i % 2], "tags": ("a", "b")})
    estimate = index.estimate_share
    assert estimate(parse("g < 3")) == pytest.approx(0.3)
    assert estimate(parse("not (g < 3)")) == pytest.approx(0.7)
    assert estimate(parse("g in [1, 2] or colour == 'red'")) == pytest.approx(1 - 0.8 * 0.5)
    assert estimate(parse("x >= 0.5 and colour != 'red'")) == pytest.approx(0.25)
    assert estimate(parse("exists(g) and missing == 1")) == 0.0
    assert estimate(parse("tags == 'a'")) == 1.0  # an estimate: a list's elements are rows of their own
    assert estimate(parse("colour contains 'ed'")) is None  # no statistic says: the caller evaluates
