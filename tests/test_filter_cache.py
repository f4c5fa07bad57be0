"""The filter cache and what the vector index keeps with a filter's labels: reused while nothing changed,
never once a write could change the answer (upsert, replace, delete, UpdateAttributes, Reindex, a rebuild).

Every answer is checked against brute force over the documents the reference evaluator says match."""

from __future__ import annotations

import numpy as np
import pytest
from semsearch_server.config import Limits
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
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.faiss_store import FaissIndexStore
from semsearch_server.index.filter_cache import FilterCache, FilterMatch, filter_key
from semsearch_server.index.vector_index import AllowedLabels, VectorIndex, _top_k_stable

DIM = 16
FINGERPRINT = ModelFingerprint("fake", "0" * 64, DIM, "mean", True, 16, "fake")
FILTER = parse("g < 3 and not (colour == 'red')")


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Collection:
    """A store and, beside it, what it should hold: {id: (vector, attributes)}."""

    def __init__(self, store: FaissIndexStore) -> None:
        self.store = store
        self.docs: dict[str, tuple[np.ndarray, dict]] = {}

    def upsert(self, items: dict[str, tuple[np.ndarray, dict]]) -> None:
        self.store.upsert(
            [
                EmbeddedDocument(Document(doc_id, f"text {doc_id}", attrs), (Passage(0, 0, 4),), vector[None, :])
                for doc_id, (vector, attrs) in items.items()
            ]
        )
        self.docs.update(items)

    def exact(self, query: np.ndarray, k: int) -> list[str]:
        ids = sorted(doc_id for doc_id, (_, attrs) in self.docs.items() if matches(FILTER, attrs))
        scores = np.array([float(self.docs[i][0] @ query) for i in ids])
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]

    def check(self, query: np.ndarray, k: int = 10) -> list[str]:
        got = [m.doc_id for m in self.store.search_dense(query[None, :], k, FILTER)[0]]
        assert got == self.exact(query, k)
        assert self.store.count(FILTER) == sum(matches(FILTER, a) for _, a in self.docs.values())
        return got


@pytest.fixture(params=["flat", "hnsw"])
def collection(request, tmp_path):
    settings = CollectionSettings(index=IndexSpec(kind=IndexKind(request.param)), passages=PassageConfig(enabled=False))
    store = FaissIndexStore.create(tmp_path / "c", "c", settings, FINGERPRINT, snapshot_every=10**6)
    rng = np.random.default_rng(3)
    vectors = unit(rng, 400)
    colours = ("red", "white", "rosé")
    collection = Collection(store)
    collection.upsert({f"d{i}": (vectors[i], {"g": i % 10, "colour": colours[i % 3]}) for i in range(400)})
    yield collection
    store.close(snapshot=False)


def test_a_repeated_filter_is_answered_from_the_cache_until_a_write_changes_its_answer(collection):
    store, rng = collection.store, np.random.default_rng(5)
    query = unit(rng, 1)[0]
    collection.check(query)
    misses = store._filter_cache.misses
    collection.check(query)
    assert store._filter_cache.misses == misses and store._filter_cache.hits >= 1

    def changes(write, query=query) -> list[str]:
        before = store._filter_cache.misses
        write()
        got = collection.check(query)
        assert store._filter_cache.misses == before + 1, "the write left the cached answer in place"
        return got

    # A new matching document right on the query: first.
    assert changes(lambda: collection.upsert({"new": (query, {"g": 1, "colour": "white"})}))[0] == "new"
    # Replaced by a version the filter excludes: gone.
    assert "new" not in changes(lambda: collection.upsert({"new": (query, {"g": 1, "colour": "red"})}))

    # UpdateAttributes makes it match again.
    def update() -> None:
        assert store.update_attributes(["new"], None, {"colour": "white"}, [], Limits()) == 1
        collection.docs["new"][1]["colour"] = "white"

    assert changes(update)[0] == "new"

    # Deleted: gone.
    def delete() -> None:
        store.delete(["new"])
        del collection.docs["new"]

    assert "new" not in changes(delete)
    # Reindex: every vector replaced (labels of passages change, documents and attributes do not).
    new_model = ModelFingerprint("fake2", "1" * 64, DIM, "mean", True, 16, "fake")
    fresh = dict(zip(sorted(collection.docs), unit(np.random.default_rng(9), len(collection.docs)), strict=True))

    def embed_documents(docs: list[Document]) -> list[EmbeddedDocument]:
        return [EmbeddedDocument(d, (Passage(0, 0, 4),), fresh[d.id][None, :]) for d in docs]

    def reindex() -> None:
        store.replace_all_vectors(new_model, embed_documents)
        for doc_id, vector in fresh.items():
            collection.docs[doc_id] = (vector, collection.docs[doc_id][1])

    target = next(i for i in sorted(fresh) if matches(FILTER, collection.docs[i][1]))
    assert changes(reindex, query=fresh[target])[0] == target


def test_every_index_kind_reuses_and_renews_what_it_keeps_with_the_labels(monkeypatch):
    # Small enough to run the selector and post-filter paths at this size: nothing is scored exactly
    # unless a walk comes back short.
    monkeypatch.setattr(vector_index, "_KEPT_EXACT_MAX", 0)
    monkeypatch.setattr(vector_index, "_EXACT_FILTER_SHARE", 0.0)
    rng = np.random.default_rng(1)
    for kind in IndexKind:
        vectors = unit(rng, 3000)
        index = VectorIndex.built(IndexSpec(kind=kind, ivf_nlist=8), DIM, np.arange(3000), vectors)
        for share in (0.5, 0.1):
            allowed_labels = np.flatnonzero(rng.random(3000) < share)
            allowed = AllowedLabels(np.append(allowed_labels, [5000]))  # 5000: absent until added below
            query = unit(rng, 1)

            def exact(live: dict[int, np.ndarray], allowed_labels=allowed_labels, query=query) -> list[int]:
                labels = [int(x) for x in sorted(set(allowed_labels.tolist()) | {5000}) if x in live]
                scores = np.array([float(live[x] @ query[0]) for x in labels])
                return [labels[i] for i in np.argsort(-scores, kind="stable")[:10]]

            live = dict(enumerate(vectors))
            first = index.search(query, 10, allowed)[1][0].tolist()
            assert index.search(query, 10, allowed)[1][0].tolist() == first
            assert len(set(first) & set(exact(live))) >= 9, (kind, share)
            index.add(np.array([5000]), query)  # allowed, and the nearest
            live[5000] = query[0]
            assert index.search(query, 10, allowed)[1][0][0] == 5000, (kind, share)
            index.remove(np.array([5000]))
            del live[5000]
            got = index.search(query, 10, allowed)[1][0].tolist()
            assert 5000 not in got and len(set(got) & set(exact(live))) >= 9, (kind, share)


def test_the_exact_path_keeps_the_vectors_and_drops_them_when_the_index_changes():
    rng = np.random.default_rng(2)
    vectors = unit(rng, 500)
    index = VectorIndex.built(IndexSpec(kind=IndexKind.HNSW), DIM, np.arange(500), vectors)
    allowed = AllowedLabels(np.arange(0, 500, 7))
    query = unit(rng, 1)
    index.search(query, 5, allowed)
    kept = allowed.nbytes
    assert kept >= len(allowed) * DIM * 4  # the vectors are kept beside the labels
    index.search(query, 5, allowed)
    assert allowed.nbytes == kept
    index.remove(np.array([7]))
    got = index.search(query, 5, allowed)[1][0].tolist()
    live = [x for x in range(0, 500, 7) if x != 7]
    want = [live[i] for i in np.argsort(-(vectors[live] @ query[0]), kind="stable")[:5]]
    assert got == want


def test_top_k_stable_is_a_stable_argsort_cut_to_k():
    rng = np.random.default_rng(4)
    for n, k in ((5, 10), (100, 10), (5000, 10), (5000, 1)):
        scores = rng.integers(0, 20, size=(3, n)).astype(np.float32)  # many ties
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(_top_k_stable(scores, k), want)


def test_filter_keys_tell_kinds_apart_and_ignore_places():
    assert filter_key(parse("a == 1")) != filter_key(parse("a == 1.0"))
    assert filter_key(parse("a == 1")) != filter_key(parse("a == true"))
    assert filter_key(parse("a in [1, 2]")) != filter_key(parse("a in [1, 2.0]"))
    assert filter_key(parse("(a == 1) and b < 2")) == filter_key(parse("a == 1 and (b < 2)"))
    assert filter_key(parse("a == 1 and b == 2")) != filter_key(parse("a == 1 or b == 2"))


def test_the_cache_keeps_its_limits_and_checks_the_state():
    cache = FilterCache(max_filters=2, max_bytes=10_000)
    small = FilterMatch(np.arange(10, dtype=np.int64))
    cache.put("a", (1, 1), small)
    assert cache.get("a", (1, 1)) is small
    assert cache.get("a", (1, 2)) is None  # another state of the collection
    cache.put("b", (1, 1), small)
    cache.put("c", (1, 1), small)
    assert len(cache) == 2 and cache.get("a", (1, 1)) is None  # least recently used went first
    cache.put("big", (1, 1), FilterMatch(np.arange(5_000, dtype=np.int64)))  # 40 kB: over the budget alone
    assert len(cache) == 1 and cache.get("big", (1, 1)) is not None


def test_ivf_kept_lists_answer_as_faiss_selector_does_at_the_same_probes_and_are_renewed_by_changes(monkeypatch):
    # The kept lists are the index's own lists with only the allowed vectors in them: a search of them must
    # return what FAISS's selector search of the whole index returns when it probes the same lists.
    import faiss

    monkeypatch.setattr(vector_index, "_KEPT_EXACT_MAX", 0)
    monkeypatch.setattr(vector_index, "_EXACT_FILTER_SHARE", 0.0)
    monkeypatch.setattr(vector_index, "_KEPT_LISTS_MIN_SCANNED", 0)  # nprobe / share lists, some unprobed
    rng = np.random.default_rng(5)
    n, share = 6000, 0.1
    vectors = unit(rng, n)
    spec = IndexSpec(kind=IndexKind.IVF, ivf_nlist=64, ivf_nprobe=1)
    index = VectorIndex.built(spec, DIM, np.arange(n), vectors)
    monkeypatch.setattr(VectorIndex, "_exact_filter_max", lambda self: 0)
    allowed_labels = np.flatnonzero(rng.random(n) < share)
    allowed = AllowedLabels(allowed_labels)
    probes = int(np.ceil(index._kept_lists_probes(64, len(allowed), len(allowed) / n)))
    assert 10 <= probes < 64  # some lists are left unprobed: the test would pass for an exhaustive search too

    def selector_answer(ivf_index, queries):
        params = faiss.SearchParametersIVF()
        params.nprobe = probes
        params.sel = faiss.IDSelectorBatch(allowed_labels)
        return ivf_index.search(queries, 10, params=params)

    queries = unit(rng, 20)
    scores, labels = index.search(queries, 10, allowed)
    want_scores, want_labels = selector_answer(index._index, queries)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    np.testing.assert_array_equal(labels, want_labels)
    assert set(labels.ravel().tolist()) <= set(allowed_labels.tolist())
    assert allowed.nbytes >= len(allowed) * DIM * 4  # the kept copy is counted against the cache's budget
    kept = allowed._derived["ivf lists"]
    index.search(queries[:1], 10, allowed)
    assert allowed._derived["ivf lists"] is kept  # reused while the index is unchanged

    nearest = int(allowed_labels[0])
    index.remove(np.array([nearest]))  # a removed vector leaves the kept lists too
    index.add(np.array([nearest]), queries[:1])  # back, as the query itself: now its nearest allowed
    assert index.search(queries[:1], 10, allowed)[1][0][0] == nearest
    assert allowed._derived["ivf lists"] is not kept


def test_the_cache_budget_grows_with_the_collections_vectors():
    from semsearch_server.index import filter_cache

    size = [0]
    cache = FilterCache(max_filters=16, max_bytes=1000, vector_bytes=lambda: size[0])
    assert cache.byte_limit == 1000
    size[0] = 100_000
    assert cache.byte_limit == int(filter_cache.CACHE_SHARE_OF_VECTORS * 100_000)
    big = FilterMatch(np.arange(2000, dtype=np.int64))  # 16,000 bytes: more than max_bytes
    cache.put("a", (1, 1), big)
    cache.put("b", (1, 1), big)
    assert len(cache) == 1  # 32,000 > 25,000: the older goes
    size[0] = 200_000
    cache.put("a", (1, 1), big)
    assert len(cache) == 2


def test_kept_lists_probe_nprobe_over_share_lists_and_enough_for_the_least_scanned():
    index = VectorIndex(IndexSpec(kind=IndexKind.IVF, ivf_nprobe=16), DIM)
    # 10 % of 1M in 8,000 lists: 160 lists scan 2,000 allowed vectors; in 2,000 lists 8,000, more than the least.
    assert index._kept_lists_probes(2000, 100_000, 0.1) == pytest.approx(160)
    # 10 % of 100k in 1,264 lists: 160 lists would scan 1,264; the least takes more.
    least = vector_index._KEPT_LISTS_MIN_SCANNED * 1264 / 10_000
    assert least > 160 and index._kept_lists_probes(1264, 10_000, 0.1) == pytest.approx(least)
