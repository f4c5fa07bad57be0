"""The local store's write path, without a model: small random vectors, hand-made passages."""

from __future__ import annotations

import numpy as np
import pytest
from semsearch_server.domain import CollectionSettings, Document, ModelFingerprint, Passage, PassageConfig
from semsearch_server.errors import DeadlineExceeded
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.faiss_store import FaissIndexStore

FINGERPRINT = ModelFingerprint("fake", "0" * 64, 8, "mean", True, 16, "fake")


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def embedded(doc_id: str, text: str, seeds: list[int]) -> EmbeddedDocument:
    step = max(1, len(text) // len(seeds))
    passages = tuple(
        Passage(i, i * step, len(text) if i == len(seeds) - 1 else (i + 1) * step) for i in range(len(seeds))
    )
    return EmbeddedDocument(Document(doc_id, text), passages, np.vstack([unit(s) for s in seeds]))


@pytest.fixture
def store(tmp_path):
    settings = CollectionSettings(passages=PassageConfig(True, 16, 4))
    store = FaissIndexStore.create(tmp_path / "c", "c", settings, FINGERPRINT, snapshot_every=2)
    yield store
    store.close()


def test_a_write_whose_caller_gave_up_while_it_waited_commits_nothing(store):
    # The service asks still_wanted() before taking the collection's lock; the store asks again once it
    # holds it, so a write that queued behind a slow one past its deadline is not committed later.
    with pytest.raises(DeadlineExceeded):
        store.upsert([embedded("a", "some text", [1])], still_wanted=lambda: False)
    with pytest.raises(DeadlineExceeded):
        store.delete(["a"], still_wanted=lambda: False)
    assert store.count() == 0


def test_a_committed_write_whose_index_update_fails_is_rebuilt_and_acknowledged(store, monkeypatch):
    store.upsert([embedded("a", "the first document", [1])])
    real_add = store._index.add
    calls = []

    def failing_add(labels, vectors):
        calls.append(len(labels))
        if len(calls) == 1:
            raise RuntimeError("simulated failure after the commit")
        return real_add(labels, vectors)

    monkeypatch.setattr(store._index, "add", failing_add)
    assert store.upsert([embedded("b", "the second document", [2, 3])]) == 1
    monkeypatch.undo()
    # Durable and searchable: the in-memory indexes were rebuilt from the database.
    assert [d.id for d in store.get(["a", "b"])] == ["a", "b"]
    best = store.search_dense(unit(3)[None, :], 1, {})[0][0]
    assert best.doc_id == "b" and best.passage.index == 1 and abs(best.score - 1) < 1e-5
    assert {m.doc_id for m in store.search_lexical(["second"], 5, {})[0]} == {"b"}


def test_replacing_a_document_removes_its_old_passages_from_both_indexes(store):
    store.upsert([embedded("a", "alpha beta gamma delta", [1, 2, 3])])
    store.upsert([embedded("a", "omega", [4])])
    assert store._index.ntotal == 1
    match = store.search_dense(unit(2)[None, :], 5, {})[0]
    assert [m.doc_id for m in match] == ["a"] and match[0].passage == Passage(0, 0, 5)
    assert store.search_lexical(["gamma"], 5, {})[0] == []
    assert [m.doc_id for m in store.search_lexical(["omega"], 5, {})[0]] == ["a"]
    store.delete(["a"])
    assert store._index.ntotal == 0 and store.search_lexical(["omega"], 5, {})[0] == []


def test_a_growing_collection_snapshots_in_proportion_to_its_size(store, monkeypatch):
    snapshots = []
    real = store._write_snapshot
    monkeypatch.setattr(store, "_write_snapshot", lambda: (snapshots.append(store._index.ntotal), real())[1])
    for i in range(64):
        store.upsert([embedded(f"d{i}", f"document number {i}", [i])])
    # snapshot_every is 2, but past it a snapshot waits for half the index: sizes grow ~1.5x each time.
    assert 5 <= len(snapshots) <= 10, snapshots
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        assert after >= 1.4 * before
