"""VectorIndex against numpy brute force, after every step of random write sequences (faiss's own habit).

Each example starts from an index built by ``VectorIndex.built`` (IVF: big enough to train with nlist=4,
nprobe=4, so IVF answers exactly) and applies a random sequence of: adds of fresh labels, adds that reuse a
present label (replaced), removes (some labels absent), in-place rebuilds, builds beside the live index with
writes arriving meanwhile then a swap, and snapshot round trips. After each step the index must hold exactly
the model's (label, vector) pairs and answer searches - unfiltered, filtered exactly, filtered through FAISS
selectors - with the brute-force scores: exactly for flat and IVF, for HNSW every returned score is the true
score of a live label and recall@k stays high (efSearch >= the collection).
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semsearch_server.domain import IndexKind, IndexSpec
from semsearch_server.index import vector_index
from semsearch_server.index.vector_index import VectorIndex

DIM = 16
K = 10
NLIST = 4
START = 4 * NLIST * 39  # IVF with nlist=4 trains from 156 vectors; start well above
SPECS = {
    IndexKind.FLAT: IndexSpec(kind=IndexKind.FLAT),
    IndexKind.HNSW: IndexSpec(kind=IndexKind.HNSW, hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=1024),
    IndexKind.IVF: IndexSpec(kind=IndexKind.IVF, ivf_nlist=NLIST, ivf_nprobe=NLIST),
}

# Bounded and deterministic: the same examples on every run, no example database, no wall-clock deadline
# (the machine is shared), a few seconds per index kind.
BOUNDED = settings(
    max_examples=12,
    stateful_step_count=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Model:
    """The truth: a dict label -> vector, scored with numpy."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}
        self.next_label = 0

    def fresh(self, n: int) -> np.ndarray:
        labels = np.arange(self.next_label, self.next_label + n, dtype=np.int64)
        self.next_label += n
        return labels

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(sorted(self.vectors), dtype=np.int64)
        vectors = np.array([self.vectors[label] for label in labels.tolist()], dtype=np.float32)
        return labels, vectors.reshape(len(labels), DIM)


def assert_holds_exactly(index: VectorIndex, model: Model) -> None:
    assert index.ntotal == len(model.vectors)
    labels, vectors = index.all_vectors()
    assert len(labels) == len(set(labels.tolist())), "a label appears twice"
    order = np.argsort(labels)
    want_labels, want_vectors = model.arrays()
    np.testing.assert_array_equal(labels[order], want_labels)
    np.testing.assert_array_equal(vectors[order], want_vectors)


def assert_searches_like_brute_force(index: VectorIndex, model: Model, queries: np.ndarray, allowed) -> None:
    labels, vectors = model.arrays()
    if allowed is not None:
        keep = np.isin(labels, allowed)
        labels, vectors = labels[keep], vectors[keep]
    scores, found = index.search(queries, K, allowed=allowed)
    assert scores.shape == found.shape == (len(queries), K)
    truth = queries @ vectors.T  # (q, n)
    k_true = min(K, len(labels))
    # Missing results are padded, and only missing results.
    assert (found[:, k_true:] == -1).all() and np.isneginf(scores[:, k_true:]).all()
    score_of = {label: i for i, label in enumerate(labels.tolist())}
    hits = 0
    for q in range(len(queries)):
        returned = found[q, :k_true].tolist()
        returned_live = [label for label in returned if label != -1]
        assert all(label in score_of for label in returned_live), "a removed or filtered-out label came back"
        assert len(set(returned_live)) == len(returned_live), "a label came back twice"
        # Every returned score is that label's true score.
        true_scores = np.array([truth[q, score_of[label]] for label in returned_live], dtype=np.float32)
        np.testing.assert_allclose(scores[q, : len(returned_live)], true_scores, atol=1e-5)
        best = np.sort(truth[q])[::-1][:k_true]
        if index.spec.kind is IndexKind.HNSW:
            hits += len(set(returned_live) & set(labels[np.argsort(-truth[q])[:k_true]].tolist()))
        else:
            # Exact: the k best scores, in order (ids compared through scores, so ties cannot flake).
            assert len(returned_live) == k_true
            np.testing.assert_allclose(scores[q, :k_true], best, atol=1e-5)
    if index.spec.kind is IndexKind.HNSW and k_true:
        assert hits / (k_true * len(queries)) >= 0.9


def check(index: VectorIndex, model: Model, rng: np.random.Generator) -> None:
    assert_holds_exactly(index, model)
    queries = unit_vectors(rng, 4)
    assert_searches_like_brute_force(index, model, queries, None)
    if model.vectors:
        live = np.array(sorted(model.vectors), dtype=np.int64)
        allowed = rng.choice(live, size=max(1, len(live) // 3), replace=False)
        allowed = np.concatenate([allowed, [model.next_label + 5]])  # a label not in the index
        assert_searches_like_brute_force(index, model, queries, allowed)  # exact scoring of the subset
        with mock.patch.object(VectorIndex, "_exact_filter_max", lambda self: 0):
            # HNSW: the walk without a selector, over-fetched and kept (falls back when short) ...
            with mock.patch.object(vector_index, "_POST_FILTER_MIN_SHARE", 0.0):
                assert_searches_like_brute_force(index, model, queries, allowed)
            # ... and through FAISS's selectors (every kind).
            with mock.patch.object(vector_index, "_POST_FILTER_MIN_SHARE", 2.0):
                assert_searches_like_brute_force(index, model, queries, allowed)
            # A trained IVF's kept lists (a tenth of the index; every list probed here, so exact).
            few = rng.choice(live, size=max(1, len(live) // 10), replace=False)
            assert_searches_like_brute_force(index, model, queries, few)


def snapshot_round_trip(index: VectorIndex, directory: Path) -> VectorIndex:
    path = directory / "index.faiss"
    index.write(path)
    reopened = VectorIndex(index.spec, DIM, check_labels=True)
    reopened.read(path, index.slot_state())
    return reopened


Step = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 60)),
    st.tuples(st.just("replace"), st.integers(1, 20)),
    st.tuples(st.just("remove"), st.integers(1, 120)),
    st.tuples(st.just("rebuild"), st.just(0)),
    st.tuples(st.just("build_beside"), st.integers(1, 40)),
    st.tuples(st.just("snapshot"), st.just(0)),
)


def run_steps(kind: IndexKind, seed: int, steps: list[tuple[str, int]]) -> None:
    rng = np.random.default_rng(seed)
    spec = SPECS[kind]
    model = Model()
    labels = model.fresh(START)
    vectors = unit_vectors(rng, START)
    model.vectors.update(zip(labels.tolist(), vectors, strict=True))
    index = VectorIndex.built(spec, DIM, labels, vectors, check_labels=True)
    assert index.trained
    check(index, model, rng)
    with TemporaryDirectory() as tmp:
        for op, n in steps:
            index = apply(op, n, index, model, rng, Path(tmp))
            check(index, model, rng)


def add_fresh(index: VectorIndex, model: Model, rng: np.random.Generator, n: int) -> None:
    labels, vectors = model.fresh(n), unit_vectors(rng, n)
    index.add(labels, vectors)
    model.vectors.update(zip(labels.tolist(), vectors, strict=True))


def remove_some(index: VectorIndex, model: Model, rng: np.random.Generator, n: int) -> None:
    live = np.array(sorted(model.vectors), dtype=np.int64)
    gone = rng.choice(live, size=min(n, len(live)), replace=False) if len(live) else live
    absent = np.array([model.next_label + 1, -7], dtype=np.int64)
    assert index.remove(np.concatenate([gone, absent])) == len(gone)
    for label in gone.tolist():
        del model.vectors[label]


def apply(op: str, n: int, index: VectorIndex, model: Model, rng: np.random.Generator, tmp: Path) -> VectorIndex:
    if op == "add":
        add_fresh(index, model, rng, n)
    elif op == "replace":
        live = np.array(sorted(model.vectors), dtype=np.int64)
        if len(live):
            labels = rng.choice(live, size=min(n, len(live)), replace=False)
            vectors = unit_vectors(rng, len(labels))
            with pytest.raises(ValueError, match="already in the index"):
                index.add(labels, vectors)  # check_labels refuses a present label...
            index.check_labels = False
            index.add(labels, vectors)  # ...and without it the vector is replaced
            index.check_labels = True
            model.vectors.update(zip(labels.tolist(), vectors, strict=True))
    elif op == "remove":
        remove_some(index, model, rng, n)
    elif op == "rebuild":
        index.rebuild(*index.all_vectors(copy=True))
        assert index.dead == 0
    elif op == "build_beside":
        # A consistent copy, a new index built from it while the old one keeps taking writes, the writes
        # replayed on the new one, then the swap.
        labels, vectors = index.all_vectors(copy=True)
        before = set(model.vectors)
        add_fresh(index, model, rng, n)
        remove_some(index, model, rng, n)
        fresh = VectorIndex.built(index.spec, DIM, labels, vectors, check_labels=True)
        added = np.array(sorted(set(model.vectors) - before), dtype=np.int64)
        removed = np.array(sorted(before - set(model.vectors)), dtype=np.int64)
        fresh.remove(removed)
        fresh.add(added, np.array([model.vectors[label] for label in added.tolist()]).reshape(-1, DIM))
        check(index, model, rng)  # the old index kept serving correctly meanwhile
        return fresh
    elif op == "snapshot":
        return snapshot_round_trip(index, tmp)
    return index


@pytest.mark.parametrize("kind", list(IndexKind), ids=lambda kind: kind.value)
@BOUNDED
@given(seed=st.integers(0, 2**32 - 1), steps=st.lists(Step, min_size=1, max_size=10))
def test_write_sequences_match_brute_force(kind: IndexKind, seed: int, steps: list[tuple[str, int]]) -> None:
    run_steps(kind, seed, steps)


@pytest.mark.parametrize("kind", list(IndexKind), ids=lambda kind: kind.value)
def test_all_vectors_are_views_for_flat_and_live_hnsw(kind: IndexKind) -> None:
    rng = np.random.default_rng(1)
    index = VectorIndex.built(SPECS[kind], DIM, np.arange(200), unit_vectors(rng, 200))
    labels, vectors = index.all_vectors()
    if kind is IndexKind.IVF:
        assert vectors.flags.owndata or vectors.base is not None  # copied out of the inverted lists
    else:
        assert not vectors.flags.writeable and not vectors.flags.owndata  # FAISS's own memory
    copied_labels, copied = index.all_vectors(copy=True)
    assert copied.flags.writeable
    index.remove(labels[:10])
    assert len(index.all_vectors()[0]) == 190
    np.testing.assert_array_equal(np.sort(copied_labels), np.arange(200))


def test_ivf_untrained_asks_for_a_rebuild_once_it_can_train() -> None:
    rng = np.random.default_rng(2)
    spec = SPECS[IndexKind.IVF]
    index = VectorIndex(spec, DIM)
    index.add(np.arange(100), unit_vectors(rng, 100))
    assert not index.trained and not index.needs_rebuild()
    index.add(np.arange(100, 200), unit_vectors(rng, 100))
    assert index.needs_rebuild()
    rebuilt = VectorIndex.built(spec, DIM, *index.all_vectors(copy=True))
    assert rebuilt.trained and rebuilt.describe() == "IndexIVFFlat" and not rebuilt.needs_rebuild()


def test_hnsw_asks_for_compaction_once_a_quarter_is_dead() -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex.built(SPECS[IndexKind.HNSW], DIM, np.arange(100), unit_vectors(rng, 100))
    index.remove(np.arange(25))
    assert index.dead == 25 and not index.needs_rebuild()
    index.remove(np.arange(25, 27))
    assert index.needs_rebuild()
    compacted = VectorIndex.built(index.spec, DIM, *index.all_vectors(copy=True))
    assert compacted.dead == 0 and compacted.ntotal == 73 and not compacted.needs_rebuild()


def test_one_query_searches_on_one_openmp_thread_and_several_on_all():
    """faiss splits a lone query's flat scan among its OpenMP threads, which only adds their wake-ups (2.5x
    slower at 10k vectors on 2 cores): one query runs on one thread, several on the thread's own count (the
    answers are the same either way). The count is per calling thread and is given back after the search,
    so the thread's later adds and builds keep theirs."""
    import threading

    import faiss

    rng = np.random.default_rng(7)
    vectors = unit_vectors(rng, 300)
    index = VectorIndex.built(SPECS[IndexKind.FLAT], DIM, np.arange(300), vectors)
    during: list[int] = []

    class Recording:  # the FAISS index, noting the thread count each search runs with
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def search(self, *args, **kwargs):
            during.append(faiss.omp_get_max_threads())
            return self.inner.search(*args, **kwargs)

    index._index = Recording(index._index)
    queries = unit_vectors(rng, 3)
    after: list[int] = []

    def search() -> None:
        for batch in (queries[:1], queries):
            scores, labels = index.search(batch, K)
            after.append(faiss.omp_get_max_threads())
            truth = np.argsort(-(batch @ vectors.T), axis=1, kind="stable")[:, :K]
            assert (labels == truth).all()
        faiss.omp_set_num_threads(3)  # a thread building on a count of its own (a Reindex) searches once
        index.search(queries[:1], K)
        after.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=search)
    worker.start()
    worker.join()
    threads = vector_index._OPENMP_THREADS
    assert during == [1, threads, 1]
    assert after == [threads, threads, 3]
