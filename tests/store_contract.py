"""The store contract (index/base.py) as one test suite for every store.

A test module subclasses ``StoreContract`` and defines a fixture ``provider_factory`` returning a callable that
makes a fresh ``StoreProvider`` on the same backing place each call (a second call is a second "replica" or a
restart). No model is needed: vectors are small random normalised ones and passages are made by hand.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from semsearch_server.domain import CollectionSettings, Document, IndexKind, IndexSpec, ModelFingerprint, Passage
from semsearch_server.index.base import EmbeddedDocument, ModelMismatch

DIM = 16
FINGERPRINT = ModelFingerprint("test-model", "a" * 64, DIM, "mean", True, 256, "torch")
OTHER = ModelFingerprint("other-model", "b" * 64, DIM, "mean", True, 256, "torch")
HOSTILE = ['" or 1==1 or "', 'a"b', "back\\slash", "\\", '\\"', "it's", "line\nbreak", "tab\there", "naïve ☃", ""]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embedded(doc_id: str, text: str, vectors: np.ndarray, metadata: dict | None = None) -> EmbeddedDocument:
    """A document split into len(vectors) consecutive passages of its text."""
    n = len(vectors)
    bounds = np.linspace(0, len(text), n + 1).astype(int)
    passages = tuple(Passage(i, int(bounds[i]), int(bounds[i + 1])) for i in range(n))
    return EmbeddedDocument(Document(doc_id, text, dict(metadata or {})), passages, vectors)


class StoreContract:
    @pytest.fixture
    def provider(self, provider_factory):
        return provider_factory()

    @pytest.fixture
    def store(self, provider):
        return provider.create(f"c{uuid.uuid4().hex[:8]}", CollectionSettings(), FINGERPRINT)

    def test_upsert_get_byte_for_byte(self, store):
        rng = np.random.default_rng(1)
        texts = {"a": "plain", "b": "crlf\r\nline\ttab  spaces ", "c": "unicode: naïve ☃ 😀 \u200b", "d": "x" * 3000}
        store.upsert([embedded(k, t, unit(rng, 1), {"k": k}) for k, t in texts.items()])
        got = store.get(["d", "missing", "a", "c", "b"])
        assert [d.id for d in got] == ["d", "a", "c", "b"]
        for d in got:
            assert d.text.encode() == texts[d.id].encode()
            assert d.metadata == {"k": d.id}
        assert store.count() == 4

    def test_replace_with_fewer_passages_leaves_none_stale(self, store):
        rng = np.random.default_rng(2)
        long = unit(rng, 4)
        store.upsert([embedded("doc", "one two three four five six seven eight", long)])
        passages, vectors = store.get_passages(["doc"])["doc"]
        assert len(passages) == 4 and np.allclose(vectors, long, atol=1e-6)
        short = unit(rng, 1)
        store.upsert([embedded("doc", "short now", short, {"v": "2"})])
        passages, vectors = store.get_passages(["doc"])["doc"]
        assert passages == (Passage(0, 0, 9),)
        assert np.allclose(vectors, short, atol=1e-6)
        assert store.get(["doc"]) == [Document("doc", "short now", {"v": "2"})]
        # a query equal to an old passage's vector must not find that passage any more
        hits = store.search_dense(long[3:4], 5, {})[0]
        assert [h.doc_id for h in hits] == ["doc"]
        assert hits[0].score == pytest.approx(float(short[0] @ long[3]), abs=1e-5)
        assert store.count() == 1

    def test_delete_removes_every_passage(self, store):
        rng = np.random.default_rng(3)
        store.upsert([embedded("a", "alpha beta gamma", unit(rng, 3)), embedded("b", "beta", unit(rng, 1))])
        assert store.delete(["a", "nope"]) == 1
        assert store.get(["a"]) == [] and store.get_passages(["a"]) == {}
        assert store.count() == 1
        assert {h.doc_id for h in store.search_dense(unit(rng, 1), 10, {})[0]} == {"b"}
        assert [m.doc_id for m in store.search_lexical(["alpha beta"], 10, {})[0]] == ["b"]

    @pytest.mark.parametrize("kind", [IndexKind.FLAT])
    def test_dense_search_matches_brute_force(self, provider, kind):
        rng = np.random.default_rng(4)
        store = provider.create(f"c{uuid.uuid4().hex[:8]}", CollectionSettings(index=IndexSpec(kind=kind)), FINGERPRINT)
        docs = [embedded(f"d{i}", f"text {i}", unit(rng, 1 + i % 3)) for i in range(60)]
        store.upsert(docs)
        queries = unit(rng, 5)
        got = store.search_dense(queries, 10, {})
        for q, hits in zip(queries, got, strict=True):
            best = {d.document.id: float((d.vectors @ q).max()) for d in docs}
            want = sorted(best.items(), key=lambda kv: -kv[1])[:10]
            assert [h.doc_id for h in hits] == [k for k, _ in want]
            assert np.allclose([h.score for h in hits], [s for _, s in want], atol=1e-5)
            for h in hits:
                doc = next(d for d in docs if d.document.id == h.doc_id)
                assert h.passage == doc.passages[int(np.argmax(doc.vectors @ q))]
        exact = store.dense_scores(queries[0], ["d1", "d2", "zz"])
        assert set(exact) == {"d1", "d2"}
        for k, m in exact.items():
            doc = next(d for d in docs if d.document.id == k)
            assert m.score == pytest.approx(float((doc.vectors @ queries[0]).max()), abs=1e-5)

    def test_lexical_only_documents_with_a_query_term(self, store):
        rng = np.random.default_rng(5)
        texts = {
            "cat": "the cat sat on the mat",
            "dog": "a dog barked at the mailman",
            "both": "cat and dog are friends",
            "none": "quick brown fox jumps",
        }
        store.upsert([embedded(k, t, unit(rng, 2)) for k, t in texts.items()])
        hits = store.search_lexical(["Cat dog", "zebra", "fox", ""], 10, {})
        assert {m.doc_id for m in hits[0]} == {"cat", "dog", "both"}
        assert hits[0][0].doc_id == "both"
        assert all(m.score > 0 for m in hits[0])
        assert [m.score for m in hits[0]] == sorted((m.score for m in hits[0]), reverse=True)
        assert hits[1] == [] and [m.doc_id for m in hits[2]] == ["none"] and hits[3] == []
        scores = store.lexical_scores("cat dog", ["both", "none", "missing"])
        assert set(scores) == {"both", "none"} and scores["none"] == 0.0
        assert scores["both"] == pytest.approx(hits[0][0].score, rel=1e-5)

    def test_explain_lexical_sums_to_the_score(self, store):
        rng = np.random.default_rng(6)
        store.upsert(
            [
                embedded("x", "solar panels convert solar energy into electricity", unit(rng, 1)),
                embedded("y", "wind energy and solar power", unit(rng, 1)),
                embedded("z", "nothing relevant here", unit(rng, 1)),
            ]
        )
        query = "Solar energy storage"
        total = store.lexical_scores(query, ["x"])["x"]
        terms = store.explain_lexical(query, "x")
        assert [t.query_text for t in terms] == ["Solar", "energy", "storage"]
        assert sum(t.contribution for t in terms) == pytest.approx(total, rel=1e-5)
        assert terms[0].term_frequency == 2 and terms[0].document_frequency == 2
        assert terms[2].contribution == 0.0 and terms[2].document_frequency == 0

    def test_filters_with_hostile_values(self, store):
        rng = np.random.default_rng(7)
        docs = [embedded(f"h{i}", f"word {i}", unit(rng, 1), {"k": v, 'key"\\': v}) for i, v in enumerate(HOSTILE)]
        docs.append(embedded("plain", "word plain", unit(rng, 1), {"k": "x"}))
        store.upsert(docs)
        q = unit(rng, 1)
        for i, v in enumerate(HOSTILE):
            for key in ("k", 'key"\\'):
                assert [h.doc_id for h in store.search_dense(q, 50, {key: v})[0]] == [f"h{i}"], (key, v)
                assert [m.doc_id for m in store.search_lexical(["word"], 50, {key: v})[0]] == [f"h{i}"], (key, v)
        assert store.search_dense(q, 50, {"k": "h0", "nokey": "x"})[0] == []
        table = store.score_all("word", q[0], {"k": HOSTILE[0]}, dense=True, lexical=True)
        assert table.doc_ids == ["h0"] and table.lexical[0] > 0

    def test_score_all_ranks_like_search(self, store):
        rng = np.random.default_rng(8)
        store.upsert([embedded(f"d{i}", "alpha beta" if i % 2 else "gamma", unit(rng, 2)) for i in range(20)])
        q = unit(rng, 1)
        table = store.score_all("alpha", q[0], {}, dense=True, lexical=True)
        assert len(table.doc_ids) == 20
        top = store.search_dense(q, 5, {})[0]
        order = [table.doc_ids[i] for i in np.argsort(-table.dense)[:5]]
        assert order == [h.doc_id for h in top]
        assert (table.lexical > 0).sum() == 10
        # with a filter, score_all's lexical scores are those Search returns for the same filter
        store.upsert(
            [embedded("m", "alpha alpha", unit(rng, 1), {"g": "1"}), embedded("n", "alpha", unit(rng, 1), {"g": "1"})]
        )
        hits = store.search_lexical(["alpha"], 10, {"g": "1"})[0]
        table = store.score_all("alpha", None, {"g": "1"}, dense=False, lexical=True)
        assert table.dense is None and table.doc_ids == ["m", "n"]
        assert np.allclose(
            table.lexical, [next(h.score for h in hits if h.doc_id == d) for d in table.doc_ids], rtol=1e-5
        )

    def test_fingerprint_mismatch_and_settings_persist(self, provider_factory):
        first = provider_factory()
        name = f"c{uuid.uuid4().hex[:8]}"
        settings = CollectionSettings(index=IndexSpec(kind=IndexKind.HNSW, hnsw_m=8, hnsw_ef_search=64))
        store = first.create(name, settings, FINGERPRINT)
        store.upsert([embedded("a", "text", unit(np.random.default_rng(9), 1))])
        again = provider_factory()
        assert name in again.names()
        assert again.settings_of(name) == settings
        with pytest.raises(ModelMismatch):
            again.open(name, OTHER)
        reopened = again.open(name, FINGERPRINT)
        assert reopened.settings == settings and reopened.get(["a"])[0].text == "text"
        again.delete(name, reopened)
        assert name not in provider_factory().names()
