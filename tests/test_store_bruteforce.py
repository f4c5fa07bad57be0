"""FaissIndexStore against numpy brute force, after every step of random write sequences.

Where tests/test_vector_index_bruteforce.py checks the FAISS wrapper alone, this drives the whole store
(SQLite, passage map, FAISS, BM25, snapshots, recovery, rebuilds beside the live index) with synthetic
vectors, no model. Each example creates a collection - flat, HNSW or IVF, passages on or off - fills it past
the point where IVF trains (nlist 4, nprobe 4: IVF answers exactly, and the test checks that it trained),
then applies a random sequence of: upserts of new documents, replacements (other passages, text and
metadata), mixed batches, deletes (some ids absent), snapshots, clean close/reopen, close without a final
snapshot then reopen (the log is replayed), mass deletes (HNSW: compaction beside the live index, asserted),
and a rebuild beside the live index held open while writes, a snapshot and searches arrive, then released.

After each step the store must agree with the model (a dict id -> text, metadata, passage vectors):
count; get; search_dense's top-k ids, scores and best passages, without and with a metadata filter (exactly
for flat and IVF; for HNSW every returned score is the document's true score and recall@k stays high);
dense_scores; BM25: every document found by the one word only it contains, and lexical scores equal to
those of a LexicalIndex built from scratch from the model's texts.

Bounded and deterministic in `make test` (a few seconds per configuration); set
SEMSEARCH_STORE_PROPERTY_EXAMPLES (e.g. 200) for a longer random search.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semsearch_server.domain import (
    CollectionSettings,
    Document,
    IndexKind,
    IndexSpec,
    ModelFingerprint,
    Passage,
    PassageConfig,
)
from semsearch_server.index import faiss_store, vector_index
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.faiss_store import FaissIndexStore
from semsearch_server.index.lexical import Analyzer, LexicalIndex

DIM = 16
K = 8
NLIST = 4
START = 90  # documents before the random steps; with >= 1 passage each, IVF (nlist 4) trains from 156 vectors
FINGERPRINT = ModelFingerprint("synthetic", "0" * 64, DIM, "mean", True, 64, "synthetic")
SPECS = {
    IndexKind.FLAT: IndexSpec(kind=IndexKind.FLAT),
    IndexKind.HNSW: IndexSpec(kind=IndexKind.HNSW, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=512),
    IndexKind.IVF: IndexSpec(kind=IndexKind.IVF, ivf_nlist=NLIST, ivf_nprobe=NLIST),
}
WORDS = "wine fish rain trains river stone bread music light paper glass winter garden market".split()
GROUPS = ("red", "green", "blue")
EXAMPLES = int(os.environ.get("SEMSEARCH_STORE_PROPERTY_EXAMPLES", "0"))

# Bounded and deterministic: the same examples on every run, no example database, no wall-clock deadline
# (the machine is shared). The environment variable above turns on a longer random search.
PROFILE = settings(
    max_examples=EXAMPLES or 2,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class Doc:
    text: str
    metadata: dict[str, str]
    vectors: np.ndarray  # (passages, DIM)


@dataclass
class Model:
    """The truth, scored with numpy."""

    passages: bool
    rng: np.random.Generator
    docs: dict[str, Doc] = field(default_factory=dict)
    next_id: int = 0
    next_tag: int = 0

    def make(self, doc_id: str) -> EmbeddedDocument:
        """A new version of doc_id: new vectors (1-3 passages if passages are on), text and metadata."""
        n = int(self.rng.integers(1, 4)) if self.passages else 1
        self.next_tag += 1
        # "tagN": a word only this version of this document contains (the lexical check looks it up).
        words = " ".join(WORDS[i] for i in self.rng.integers(0, len(WORDS), size=int(self.rng.integers(2, 9))))
        text = f"tag{self.next_tag} {words} {doc_id}"
        metadata = {"group": GROUPS[int(self.rng.integers(0, len(GROUPS)))]}
        if self.rng.random() < 0.5:
            metadata["half"] = "yes"
        vectors = unit_vectors(self.rng, n)
        step = max(1, len(text) // n)
        passages = tuple(Passage(i, i * step, len(text) if i == n - 1 else (i + 1) * step) for i in range(n))
        self.docs[doc_id] = Doc(text, metadata, vectors)
        return EmbeddedDocument(Document(doc_id, text, metadata), passages, vectors)

    def new_ids(self, n: int) -> list[str]:
        ids = [f"doc{self.next_id + i}" for i in range(n)]
        self.next_id += n
        return ids

    def pick(self, n: int) -> list[str]:
        ids = sorted(self.docs)
        if not ids:
            return []
        return [ids[i] for i in self.rng.choice(len(ids), size=min(n, len(ids)), replace=False).tolist()]

    def doc_scores(self, query: np.ndarray, filter: dict[str, str] | None = None) -> dict[str, tuple[float, int]]:
        """id -> (best passage's cosine, that passage's index), for the documents the filter lets through."""
        ids = [
            doc_id
            for doc_id, doc in self.docs.items()
            if not filter or all(doc.metadata.get(k) == v for k, v in filter.items())
        ]
        if not ids:
            return {}
        counts = [len(self.docs[i].vectors) for i in ids]
        scores = np.concatenate([self.docs[i].vectors for i in ids]) @ query
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        best = np.maximum.reduceat(scores, starts)
        which = [int(np.argmax(scores[a : a + n])) for a, n in zip(starts.tolist(), counts, strict=True)]
        return {i: (float(b), w) for i, b, w in zip(ids, best.tolist(), which, strict=True)}


# -- the checks ----------------------------------------------------------------------------------------
def check(store: FaissIndexStore, model: Model, kind: IndexKind) -> None:
    rng = model.rng
    assert store.count() == len(model.docs)
    passages = sum(len(d.vectors) for d in model.docs.values())
    assert store._index.ntotal == passages, "FAISS holds other vectors than the database's passages"

    # get: every live document exactly, deleted and unknown ids not at all.
    sample = model.pick(20) + ["never-written", f"doc{model.next_id + 3}"]
    found = {d.id: d for d in store.get(sample)}
    assert set(found) == {i for i in sample if i in model.docs}
    for doc_id, doc in found.items():
        assert (doc.text, doc.metadata) == (model.docs[doc_id].text, model.docs[doc_id].metadata)

    queries = unit_vectors(rng, 3)
    filters: list[dict[str, str] | None] = [None, {"group": GROUPS[int(rng.integers(0, 3))]}]
    filters.append({"group": GROUPS[int(rng.integers(0, 3))], "half": "yes"})
    for filter in filters:
        results = store.search_dense(queries, K, filter or {})
        for query, matches in zip(queries, results, strict=True):
            check_dense(matches, model.doc_scores(query, filter), kind)
    # The same filtered search through FAISS's selectors instead of exact scoring of the allowed subset.
    for post_filter_share in (0.0, 2.0):  # HNSW over-fetching and keeping, or a selector
        with (
            mock.patch.object(vector_index.VectorIndex, "_exact_filter_max", lambda self: 0),
            mock.patch.object(vector_index, "_POST_FILTER_MIN_SHARE", post_filter_share),
        ):
            results = store.search_dense(queries[:1], K, filters[1])
            check_dense(results[0], model.doc_scores(queries[0], filters[1]), kind)

    # dense_scores (Explain's): each named document's best passage, exactly.
    some = model.pick(5) + ["never-written"]
    truth = model.doc_scores(queries[0])
    got = store.dense_scores(queries[0], some)
    assert set(got) == {i for i in some if i in model.docs}
    for doc_id, match in got.items():
        assert match.score == pytest.approx(truth[doc_id][0], abs=1e-5)
        assert match.passage.index == truth[doc_id][1]

    check_lexical(store, model)


def check_dense(matches, truth: dict[str, tuple[float, int]], kind: IndexKind) -> None:
    want = min(K, len(truth))
    ids = [m.doc_id for m in matches]
    assert len(ids) == len(set(ids)), f"a document came back twice: {ids}"
    assert all(i in truth for i in ids), "a deleted or filtered-out document came back"
    for m in matches:  # every score is that document's best passage's true score
        assert m.score == pytest.approx(truth[m.doc_id][0], abs=1e-5)
        assert m.passage.index == truth[m.doc_id][1]
    scores = [m.score for m in matches]
    assert scores == sorted(scores, reverse=True)
    best = sorted((s for s, _ in truth.values()), reverse=True)[:want]
    if kind is IndexKind.HNSW:
        assert len(ids) >= want - 1
        true_top = {i for i, (s, _) in truth.items() if s >= best[-1] - 1e-6} if best else set()
        assert len(set(ids) & true_top) >= 0.75 * want, (ids, best)
    else:
        # Exact: the k best, in order (compared through the scores, so ties cannot flake).
        assert len(ids) == want
        np.testing.assert_allclose(scores, best, atol=1e-5)


def check_lexical(store: FaissIndexStore, model: Model) -> None:
    sample = model.pick(6)
    tags = [model.docs[i].text.split()[0] for i in sample]
    for doc_id, hits in zip(sample, store.search_lexical(tags, 3, {}), strict=True):
        assert [h.doc_id for h in hits] == [doc_id], f"{doc_id}'s own word finds {[h.doc_id for h in hits]}"
    # Scores equal those of an index built from scratch from the live texts (same analyzer, same BM25).
    reference = LexicalIndex(Analyzer())
    ids = sorted(model.docs)
    reference.add(list(range(len(ids))), [model.docs[i].text for i in ids])
    query = " ".join(WORDS[i] for i in model.rng.integers(0, len(WORDS), size=3))
    got = store.lexical_scores(query, ids)
    want = reference.scores(query, list(range(len(ids))))
    np.testing.assert_allclose([got[i] for i in ids], want, rtol=1e-5, atol=1e-6)


# -- the steps -----------------------------------------------------------------------------------------
class Harness:
    def __init__(self, directory: Path, kind: IndexKind, passages: bool, seed: int) -> None:
        self.directory = directory
        self.kind = kind
        self.model = Model(passages, np.random.default_rng(seed))
        settings = CollectionSettings(index=SPECS[kind], passages=PassageConfig(passages, 16, 4))
        # snapshot_every 7: snapshots come on their own during the steps, and reopens replay a log.
        self.store = FaissIndexStore.create(directory, "c", settings, FINGERPRINT, snapshot_every=7)
        self.compactions = 0

    def reopen(self, snapshot: bool) -> None:
        self.join_rebuild()
        self.store.close(snapshot=snapshot)
        self.store = FaissIndexStore.open(self.directory, FINGERPRINT, snapshot_every=7)

    def join_rebuild(self) -> None:
        thread = self.store._rebuild_thread
        if thread is not None:
            thread.join(60)
            assert not thread.is_alive(), "a rebuild beside the live index did not finish"

    def upsert(self, n: int) -> None:
        docs = [self.model.make(i) for i in self.model.new_ids(n)]
        assert self.store.upsert(docs) == n

    def replace(self, n: int) -> None:
        ids = self.model.pick(n)
        if ids:
            assert self.store.upsert([self.model.make(i) for i in ids]) == len(ids)

    def mixed(self, n: int) -> None:
        ids = self.model.pick(n) + self.model.new_ids(n)
        order = self.model.rng.permutation(len(ids)).tolist()
        assert self.store.upsert([self.model.make(ids[i]) for i in order]) == len(ids)

    def delete(self, n: int) -> None:
        ids = self.model.pick(n)
        absent = ["never-written", f"doc{self.model.next_id + 1}"]
        assert self.store.delete(ids + absent) == len(ids)
        for i in ids:
            del self.model.docs[i]

    def mass_delete(self) -> None:
        """Deletes, in one call, documents holding 30 % of the vectors in the graph: HNSW must compact
        beside the live index."""
        self.join_rebuild()
        before = self.store._rebuild_thread
        in_graph = int(self.store._index._index.ntotal)  # HNSW: dead slots included
        ids, vectors = [], 0
        for doc_id in self.model.pick(len(self.model.docs)):
            if vectors >= 0.3 * in_graph:
                break
            ids.append(doc_id)
            vectors += len(self.model.docs[doc_id].vectors)
        assert self.store.delete(ids) == len(ids)
        for doc_id in ids:
            del self.model.docs[doc_id]
        if self.kind is IndexKind.HNSW:
            thread = self.store._rebuild_thread
            assert thread is not None and thread is not before, "30 % dead and no compaction started"
            check(self.store, self.model, self.kind)  # searches while it runs (or after it ran)
            self.join_rebuild()
            index = self.store._index
            assert index.dead == 0 and int(index._index.ntotal) == index.ntotal, "the compaction did not happen"
            self.compactions += 1

    def rebuild_with_writes(self, n: int) -> None:
        """A rebuild beside the live index, held open while writes, a snapshot and searches arrive."""
        self.join_rebuild()
        building, release = threading.Event(), threading.Event()
        real = vector_index.VectorIndex.rebuild

        def held(index, labels, vectors):
            if threading.current_thread().name.startswith("rebuild-"):
                building.set()
                assert release.wait(60), "the test never released the rebuild"
            return real(index, labels, vectors)

        with mock.patch.object(faiss_store.VectorIndex, "rebuild", held):
            with self.store._lock.write():
                self.store._start_rebuild_beside()
            assert building.wait(30)
            self.mixed(n)
            self.delete(n)
            check(self.store, self.model, self.kind)  # the live index serves correctly meanwhile
            self.store.snapshot()  # must keep the deletions the rebuild has yet to replay
            self.replace(n)
            release.set()
            self.join_rebuild()
        assert self.store._rebuild_from_seq is None

    def apply(self, op: str, n: int) -> None:
        if op == "reopen":
            self.reopen(snapshot=True)
        elif op == "crash_reopen":
            self.reopen(snapshot=False)
        elif op == "snapshot":
            self.store.snapshot()
        elif op == "mass_delete":
            self.mass_delete()
        else:
            getattr(self, op)(n)


Step = st.one_of(
    st.tuples(st.just("upsert"), st.integers(1, 30)),
    st.tuples(st.just("replace"), st.integers(1, 15)),
    st.tuples(st.just("mixed"), st.integers(1, 10)),
    st.tuples(st.just("delete"), st.integers(1, 25)),
    st.tuples(st.just("snapshot"), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("crash_reopen"), st.just(0)),
    st.tuples(st.just("mass_delete"), st.just(0)),
    st.tuples(st.just("rebuild_with_writes"), st.integers(1, 10)),
)


def run(kind: IndexKind, passages: bool, seed: int, steps: list[tuple[str, int]]) -> None:
    with TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "c", kind, passages, seed)
        try:
            for start in range(0, START, 30):
                h.upsert(min(30, START - start))
            # Grow until IVF can train (156 vectors for nlist 4), then wait for the training beside.
            while sum(len(d.vectors) for d in h.model.docs.values()) < 2 * NLIST * 39:
                h.upsert(60)
            h.join_rebuild()
            if kind is IndexKind.IVF:
                assert h.store._index.trained and h.store._index.describe() == "IndexIVFFlat", "IVF never trained"
            check(h.store, h.model, kind)
            for op, n in steps:
                h.apply(op, n)
                check(h.store, h.model, kind)
            # Always once per example: a reopen, and (HNSW) a compaction with its slot map rebuilt.
            h.mass_delete()
            h.reopen(snapshot=False)
            check(h.store, h.model, kind)
            if kind is IndexKind.IVF:
                assert h.store._index.trained, "IVF lost its training across a reopen"
            if kind is IndexKind.HNSW:
                assert h.compactions >= 1
        finally:
            h.join_rebuild()
            h.store.close()


@pytest.mark.parametrize("passages", [False, True], ids=["one-vector", "passages"])
@pytest.mark.parametrize("kind", list(IndexKind), ids=lambda kind: kind.value)
@PROFILE
@given(seed=st.integers(0, 2**32 - 1), steps=st.lists(Step, min_size=3, max_size=8))
def test_store_write_sequences_match_brute_force(
    kind: IndexKind, passages: bool, seed: int, steps: list[tuple[str, int]]
) -> None:
    run(kind, passages, seed, steps)


@pytest.mark.parametrize("kind", list(IndexKind), ids=lambda kind: kind.value)
def test_every_step_kind_in_one_fixed_sequence(kind: IndexKind) -> None:
    """The bounded profile draws few examples: this fixed sequence makes sure each step runs every time."""
    steps = [
        ("upsert", 12),
        ("replace", 8),
        ("mixed", 5),
        ("delete", 10),
        ("snapshot", 0),
        ("rebuild_with_writes", 6),
        ("crash_reopen", 0),
        ("mass_delete", 0),
        ("reopen", 0),
        ("upsert", 5),
    ]
    run(kind, True, 7, steps)
