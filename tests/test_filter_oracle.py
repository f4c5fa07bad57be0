"""One oracle for every store and index kind: random documents (every kind, missing keys, kinds that differ),
random filter trees, and Count, Scroll, filtered Search, Delete and UpdateAttributes by filter compared with
the plain-Python reference semantics (filtering.evaluate) and brute-force cosine over the matching documents.

The store is driven directly, with random unit vectors (no model), so that many examples run in seconds.
The local store: 60 examples per index kind (flat, HNSW, IVF), each up to 24 documents x 4 filters. The
Milvus store (a Milvus Lite `.db` file, FLAT, so brute force is the exact answer): 12 examples each of up to
24 documents x 4 filters (half of the filters drawn from trees of string EQ / IN, which the store narrows
with a Milvus expression), once with the matching documents scored exactly (the few-matches path) and once
with that path turned off, so every filtered search goes through Milvus's index, widened, and the exact
fallback.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from filter_strategies import documents, translatable_trees, trees
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semsearch_server.config import Limits
from semsearch_server.domain import CollectionSettings, Document, IndexKind, IndexSpec, ModelFingerprint, Passage
from semsearch_server.domain import PassageConfig as Passages
from semsearch_server.filtering import matches, validate_filter
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.faiss_store import FaissIndexStore

DIM = 16
FINGERPRINT = ModelFingerprint("synthetic", "0" * 64, DIM, "mean", True, 256, "synthetic")
_names = itertools.count()

corpora = st.lists(documents, min_size=1, max_size=24)
EXAMPLES = 60
MILVUS_EXAMPLES = 12


def _store(tmp_path_factory, kind: str) -> FaissIndexStore:
    settings_ = CollectionSettings(index=IndexSpec(kind=IndexKind(kind)), passages=Passages(enabled=False))
    directory = tmp_path_factory.getbasetemp() / f"oracle-{kind}-{next(_names)}"
    return FaissIndexStore.create(directory, directory.name, settings_, FINGERPRINT, snapshot_every=10**9)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fill(store: FaissIndexStore, corpus: list[dict], seed: int) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    vectors = _unit(rng, len(corpus))
    # Ids whose byte order differs from their code point order and their number's, for Scroll.
    ids = [f"{'éa'[i % 2]}{i:02d}" if i % 3 else f"Z{i}" for i in range(len(corpus))]
    docs = [
        EmbeddedDocument(Document(doc_id, f"text {doc_id}", attrs), (Passage(0, 0, 5),), vec[None, :])
        for doc_id, attrs, vec in zip(ids, corpus, vectors, strict=True)
    ]
    store.upsert(docs)
    return dict(zip(ids, corpus, strict=True)), dict(zip(ids, vectors, strict=True))


def _scroll_all(store: FaissIndexStore, tree, page: int) -> list[str]:
    out, after = [], None
    while True:
        docs = store.scroll(tree, after, page)
        out += [d.id for d in docs]
        if len(docs) < page:
            return out
        after = docs[-1].id


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(corpus=corpora, filters=st.lists(trees, min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_store_agrees_with_the_reference_semantics(tmp_path_factory, kind, corpus, filters, seed):
    store = _store(tmp_path_factory, kind)
    try:
        _agrees(store, corpus, filters, seed)
    finally:
        store.close(snapshot=False)


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra")
    from semsearch_server.index.milvus_provider import MilvusStoreProvider

    provider = MilvusStoreProvider(str(tmp_path_factory.mktemp("oracle-milvus") / "oracle.db"))
    yield provider
    provider.close()


@pytest.mark.parametrize("exact_path", [True, False], ids=["few-scored-exactly", "through-the-index"])
@settings(max_examples=MILVUS_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    corpus=corpora,
    # half of them trees the store narrows with a Milvus expression (which must keep every match)
    filters=st.lists(st.one_of(trees, translatable_trees), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_milvus_store_agrees_with_the_reference_semantics(milvus, monkeypatch, exact_path, corpus, filters, seed):
    from semsearch_server.index import milvus_reads as milvus_store

    monkeypatch.setattr(milvus_store, "EXACT_DOCUMENTS", 2048 if exact_path else 0)
    name = f"oracle{next(_names)}"
    store = milvus.create(name, CollectionSettings(index=IndexSpec(kind=IndexKind.FLAT)), FINGERPRINT)
    try:
        _agrees(store, corpus, filters, seed)
    finally:
        milvus.delete(name, store)


def _agrees(store, corpus: list[dict], filters: list, seed: int) -> None:
    attributes, vectors = _fill(store, corpus, seed)
    query = _unit(np.random.default_rng(seed + 1), 1)
    for tree in filters:
        validate_filter(tree)
        expected = sorted((i for i, a in attributes.items() if matches(tree, a)), key=str.encode)
        assert store.count(tree) == len(expected)
        assert _scroll_all(store, tree, page=3) == expected
        hits = store.search_dense(query, 5, tree, documents=True)[0]
        exact = sorted(expected, key=lambda i: -float(vectors[i] @ query[0]))[:5]
        assert [h.doc_id for h in hits] == exact
        np.testing.assert_allclose([h.score for h in hits], [vectors[i] @ query[0] for i in exact], atol=1e-5)
        assert all(h.document.attributes == _stored(attributes[h.doc_id]) for h in hits)
        # Every text holds "text": lexical search and Explain's table keep exactly the matching documents.
        assert sorted((m.doc_id for m in store.search_lexical(["text"], 50, tree)[0]), key=str.encode) == expected
        assert sorted(store.score_all("text", query[0], tree, dense=True, lexical=True).doc_ids) == sorted(expected)
    # Writes by filter: the first tree's documents get a mark, then the second's are deleted.
    marked = {i for i, a in attributes.items() if matches(filters[0], a)}
    assert store.update_attributes(None, filters[0], {"_mark": 1}, [], Limits()) == len(marked)
    assert {d.id for d in store.scroll(None, None, 100) if d.attributes.get("_mark") == 1} == marked
    # ... and nothing else changed: the same texts and vectors, so the same scores.
    everything = store.search_dense(query, len(attributes), None, documents=True)[0]
    assert sorted(h.doc_id for h in everything) == sorted(vectors)
    np.testing.assert_allclose(
        [h.score for h in everything], [vectors[h.doc_id] @ query[0] for h in everything], atol=1e-5
    )
    assert all(h.document.text == f"text {h.doc_id}" for h in everything)
    doomed = {i for i, a in attributes.items() if matches(filters[-1], {**a, **({"_mark": 1} if i in marked else {})})}
    assert store.delete_where(filters[-1]) == len(doomed)
    assert {d.id for d in store.scroll(None, None, 100)} == set(attributes) - doomed
    assert store.count() == len(attributes) - len(doomed)


def _stored(attributes: dict) -> dict:
    """What the store gives back: the same values, lists as tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}
