"""The local store's write path, without a model: small random vectors, hand-made passages."""

from __future__ import annotations

import time
import tracemalloc

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
from semsearch_server.errors import DeadlineExceeded
from semsearch_server.index import local_reindex as faiss_store_module
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

    def counted(*args, **kwargs):
        snapshots.append(store._index.ntotal)
        real(*args, **kwargs)

    monkeypatch.setattr(store, "_write_snapshot", counted)
    for i in range(64):
        store.upsert([embedded(f"d{i}", f"document number {i}", [i])])
    # snapshot_every is 2, but past it a snapshot waits for half the index: sizes grow ~1.5x each time.
    assert 5 <= len(snapshots) <= 10, snapshots
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        assert after >= 1.4 * before


def _filled_store(directory, kind: IndexKind, size: int) -> FaissIndexStore:
    # Small graph parameters: the fill is not what is measured.
    spec = IndexSpec(kind=kind, hnsw_m=8, hnsw_ef_construction=16, hnsw_ef_search=16)
    store = FaissIndexStore.create(directory, directory.name, CollectionSettings(index=spec), FINGERPRINT)
    for start in range(0, size, 1000):
        store.upsert(_numbered(start, min(1000, size - start)))
    store.snapshot()  # no snapshot falls due inside the measured writes
    return store


def _numbered(start: int, n: int, version: int = 0) -> list[EmbeddedDocument]:
    words = "wine fish rain river stone bread music light paper glass".split()
    docs = []
    for i in range(start, start + n):
        text = f"document {i} {'revised ' * version}" + " ".join(words[(i + k) % len(words)] for k in range(3))
        docs.append(
            EmbeddedDocument(
                Document(f"d{i}", text, {"group": str(i % 7)}),
                (Passage(0, 0, len(text)),),
                unit(i + 7919 * version)[None, :],
            )
        )
    return docs


@pytest.mark.parametrize("kind", [IndexKind.HNSW, IndexKind.FLAT])
def test_an_upserts_work_does_not_grow_with_the_collection(tmp_path, kind):
    """The same batch (4 new documents, 4 replaced) into a collection of 2,000 and of 16,000 documents: the
    SQLite statements' virtual-machine steps (a scan steps through every row) and the Python/numpy memory
    allocated at its peak (a temporary over every label, term or slot shows there) stay the same. Medians of
    5 batches, so that an amortised doubling of a buffer in one of them does not count."""

    def work(size: int) -> tuple[float, float]:
        store = _filled_store(tmp_path / f"c{size}", kind, size)
        steps, peaks = [], []
        counted = [0]

        def tick() -> int:
            counted[0] += 1
            return 0

        try:
            for round_no in range(5):
                batch = _numbered(size + 4 * round_no, 4) + _numbered(100 + 4 * round_no, 4, version=1)
                counted[0] = 0
                store._db.set_progress_handler(tick, 10)
                tracemalloc.start()
                try:
                    store.upsert(batch)
                    peaks.append(tracemalloc.get_traced_memory()[1])
                finally:
                    tracemalloc.stop()
                    store._db.set_progress_handler(None, 0)
                steps.append(10 * counted[0])
            assert store.count() == size + 20
            revised = {m.doc_id for m in store.search_lexical(["revised"], 50, {})[0]}
            assert revised == {f"d{i}" for i in range(100, 120)}
        finally:
            store.close(snapshot=False)
        return float(np.median(steps)), float(np.median(peaks))

    small_steps, small_peak = work(2_000)
    big_steps, big_peak = work(16_000)
    assert big_steps <= 1.1 * small_steps + 100, (big_steps, small_steps)
    # 16,000 labels of int64 are 128 KB: one temporary over them would show.
    assert big_peak <= 1.2 * small_peak + 32_000, (big_peak, small_peak)


def test_a_rebuild_cut_short_by_close_is_abandoned_quietly(tmp_path, monkeypatch, caplog):
    # close() abandons a rebuild running beside the live index; what the rebuild meets next (the closed
    # database) must not be logged as a failure with a traceback, as a benchmark's close showed it was.
    import logging
    import threading

    from semsearch_server.domain import IndexKind, IndexSpec

    settings = CollectionSettings(index=IndexSpec(kind=IndexKind.HNSW, hnsw_m=8), passages=PassageConfig(False))
    store = FaissIndexStore.create(tmp_path / "h", "h", settings, FINGERPRINT, snapshot_every=10_000)
    store.upsert([embedded(f"d{i}", f"document {i}", [i]) for i in range(40)])
    catching_up, release = threading.Event(), threading.Event()
    real_catch_up = store._catch_up

    def catch_up_after_close(index, after):  # the store closes between the round's check and its read
        catching_up.set()
        assert release.wait(30), "the test never released the rebuild"
        return real_catch_up(index, after)

    monkeypatch.setattr(store, "_catch_up", catch_up_after_close)
    with caplog.at_level(logging.INFO, logger="semsearch_server"):
        store.delete([f"d{i}" for i in range(12)])  # 30 % dead: compaction starts beside the live index
        assert catching_up.wait(10)
        store.close()
        release.set()
        store._rebuild_thread.join(30)
    assert not store._rebuild_thread.is_alive()
    assert "rebuild abandoned: the collection was closed" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_an_hnsw_compaction_runs_beside_the_live_index_without_stopping_search_or_writes(tmp_path, monkeypatch):
    import threading

    from semsearch_server.domain import IndexKind, IndexSpec
    from semsearch_server.index import faiss_store
    from semsearch_server.index.vector_index import VectorIndex

    settings = CollectionSettings(index=IndexSpec(kind=IndexKind.HNSW, hnsw_m=8), passages=PassageConfig(False))
    store = FaissIndexStore.create(tmp_path / "h", "h", settings, FINGERPRINT, snapshot_every=10_000)
    try:
        store.upsert([embedded(f"d{i}", f"document {i}", [i]) for i in range(40)])
        building, release = threading.Event(), threading.Event()
        real_rebuild = VectorIndex.rebuild

        def slow_rebuild(self, labels, vectors):
            building.set()
            assert release.wait(30), "the test never released the rebuild"
            return real_rebuild(self, labels, vectors)

        monkeypatch.setattr(faiss_store.VectorIndex, "rebuild", slow_rebuild)
        under_lock = []
        real_replay = store._replay_vectors_after

        def replay(after):
            under_lock.append(real_replay(after))
            return under_lock[-1]

        monkeypatch.setattr(store, "_replay_vectors_after", replay)
        store.delete([f"d{i}" for i in range(12)])  # 30 % dead: compaction starts beside the live index
        assert building.wait(10)
        # While it builds: searches are answered and writes land, from another thread, within seconds.
        done = {}

        def meanwhile():
            done["search"] = store.search_dense(unit(20)[None, :], 1, {})[0][0].doc_id
            store.upsert([embedded("new", "a document written during the rebuild", [99])])
            store.delete(["d13"])
            done["writes"] = True

        worker = threading.Thread(target=meanwhile)
        worker.start()
        worker.join(10)
        assert done == {"search": "d20", "writes": True}, "search or writes waited for the rebuild"
        release.set()
        store._rebuild_thread.join(30)
        monkeypatch.undo()
        # The writes made during the build were applied beside it: the write lock replayed none of them.
        assert under_lock == [0]
        # The new index has the writes that arrived meanwhile; of the dead, only the delete made during
        # the rebuild (HNSW masks removals until the next compaction).
        assert store._index.ntotal == 40 - 12 + 1 - 1
        assert len(store._index._dead) == 1
        assert store.search_dense(unit(99)[None, :], 1, {})[0][0].doc_id == "new"
        found = {m.doc_id for m in store.search_dense(unit(13)[None, :], 40, {})[0]}
        assert "d13" not in found and not any(f"d{i}" in found for i in range(12))
    finally:
        store.close()
    reopened = FaissIndexStore.open(tmp_path / "h", FINGERPRINT)
    try:
        assert reopened.count() == 28 and reopened.search_dense(unit(99)[None, :], 1, {})[0][0].doc_id == "new"
    finally:
        reopened.close()


def test_reindex_embeds_without_the_lock_and_keeps_what_was_written_meanwhile(store):
    store.upsert([embedded(f"d{i}", f"document {i}", [i]) for i in range(5)])
    new_model = ModelFingerprint("fake2", "1" * 64, 8, "mean", True, 16, "fake")

    def embed_documents(docs):
        # Runs with no lock held: a search and a write go through, from this very thread.
        assert store.search_dense(unit(3)[None, :], 1, {})[0][0].doc_id == "d3"
        store.upsert([embedded("d0", "rewritten during the reindex", [50])])
        store.delete(["d1"])
        return [EmbeddedDocument(d, (Passage(0, 0, len(d.text)),), unit(100 + int(d.id[1:]))[None, :]) for d in docs]

    assert store.replace_all_vectors(new_model, embed_documents) == 4
    assert store.fingerprint == new_model
    # Re-embedded: d2..d4 score 1 against their new vectors; d0 keeps its newer write; d1 stays deleted.
    for i in (2, 3, 4):
        best = store.search_dense(unit(100 + i)[None, :], 1, {})[0][0]
        assert best.doc_id == f"d{i}" and abs(best.score - 1) < 1e-5
    assert store.search_dense(unit(50)[None, :], 1, {})[0][0].doc_id == "d0"
    assert store.get(["d1"]) == [] and store._index.ntotal == 4


def test_reindex_embeds_in_chunks_and_stores_every_chunks_passages(store, monkeypatch):
    # A Reindex hands embed_documents a chunk at a time (so a chunk's objects are gone before the next are
    # made); the passages of every chunk, with their own counts and spans, end up stored and searchable.
    monkeypatch.setattr(faiss_store_module, "_REINDEX_CHUNK", 3)
    store.upsert([embedded(f"d{i}", f"document number {i} " * 3, [i]) for i in range(8)])
    new_model = ModelFingerprint("fake2", "1" * 64, 8, "mean", True, 16, "fake")
    chunks = []

    def embed_documents(docs):
        chunks.append([d.id for d in docs])
        # Document i gets i % 3 + 1 passages, the vector of passage j seeded 100 * (i + 1) + j.
        return [
            embedded(d.id, d.text, [100 * (int(d.id[1:]) + 1) + j for j in range(int(d.id[1:]) % 3 + 1)]) for d in docs
        ]

    assert store.replace_all_vectors(new_model, embed_documents) == 8
    assert chunks == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6", "d7"]]
    assert store._index.ntotal == sum(i % 3 + 1 for i in range(8))
    for reopened in (False, True):
        if reopened:
            store.close()
            store = FaissIndexStore.open(store.directory, new_model, 2)
        for i in range(8):
            want = embedded(f"d{i}", f"document number {i} " * 3, [100 * (i + 1) + j for j in range(i % 3 + 1)])
            passages, vectors = store.get_passages([f"d{i}"])[f"d{i}"]
            assert passages == want.passages
            np.testing.assert_allclose(vectors, want.vectors, atol=1e-6)
            best = store.search_dense(want.vectors[-1][None, :], 1, {})[0][0]
            assert best.doc_id == f"d{i}" and best.passage == want.passages[-1] and abs(best.score - 1) < 1e-5
    store.close()


def test_a_snapshot_being_written_stops_neither_searches_nor_writes(tmp_path, monkeypatch):
    import json
    import threading

    from semsearch_server.index.vector_index import VectorIndex

    store = FaissIndexStore.create(tmp_path / "s", "s", CollectionSettings(), FINGERPRINT, snapshot_every=20)
    try:
        store.upsert([embedded(f"d{i}", f"document {i}", [i]) for i in range(19)])
        writing, release = threading.Event(), threading.Event()
        real_write = VectorIndex.write

        def slow_write(self, path):
            writing.set()
            assert release.wait(30), "the test never released the snapshot"
            return real_write(self, path)

        monkeypatch.setattr(VectorIndex, "write", slow_write)
        # The 20th document makes a snapshot due: its writer writes it after its write, from a copy.
        trigger = threading.Thread(target=lambda: store.upsert([embedded("d19", "document 19", [19])]))
        trigger.start()
        assert writing.wait(10)
        done = {}

        def meanwhile():
            done["search"] = store.search_dense(unit(7)[None, :], 1, {})[0][0].doc_id
            store.upsert([embedded("new", "written during the snapshot", [99])])
            store.delete(["d3"])
            # A search after the writes sees them (nothing waits for the snapshot to be on disk).
            done["after"] = store.search_dense(unit(99)[None, :], 1, {})[0][0].doc_id
            done["deleted"] = "d3" not in {m.doc_id for m in store.search_dense(unit(3)[None, :], 30, {})[0]}
            store.snapshot()  # a second snapshot waits for the first, and then writes its own

        worker = threading.Thread(target=meanwhile)
        worker.start()
        deadline = time.monotonic() + 10
        while "deleted" not in done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done == {"search": "d7", "after": "new", "deleted": True}, "searches or writes waited for it"
        assert worker.is_alive() and trigger.is_alive()  # the snapshots wait for the file write
        release.set()
        trigger.join(30)
        worker.join(30)
        monkeypatch.undo()
        meta = json.loads((store.directory / "index.json").read_text())
        assert meta["seq"] == store._seq() and meta["count"] == 20  # the second snapshot, of everything
    finally:
        store.close()
    reopened = FaissIndexStore.open(tmp_path / "s", FINGERPRINT)
    try:
        assert reopened.count() == 20 and reopened.search_dense(unit(99)[None, :], 1, {})[0][0].doc_id == "new"
        assert reopened.get(["d3"]) == []
    finally:
        reopened.close()


def test_a_snapshot_crashed_after_its_copy_leaves_the_log_to_replay(tmp_path, monkeypatch):
    # The snapshot records the sequence number of its copy; writes after it are replayed from SQLite.
    import json

    from semsearch_server.index.vector_index import VectorIndex

    store = FaissIndexStore.create(tmp_path / "s", "s", CollectionSettings(), FINGERPRINT, snapshot_every=10_000)
    store.upsert([embedded(f"d{i}", f"document {i}", [i]) for i in range(10)])
    store.snapshot()
    before = json.loads((store.directory / "index.json").read_text())

    def crash(self, path):
        path.write_bytes(b"partial")
        raise OSError("the process died here")

    monkeypatch.setattr(VectorIndex, "write", crash)
    store.upsert([embedded("late", "after the last good snapshot", [40])])
    store.delete(["d2"])
    with pytest.raises(OSError, match="died"):
        store.snapshot()
    assert json.loads((store.directory / "index.json").read_text()) == before
    assert not list(store.directory.glob(".*.tmp"))
    store.close(snapshot=False)
    monkeypatch.undo()
    reopened = FaissIndexStore.open(tmp_path / "s", FINGERPRINT)
    try:
        assert reopened.count() == 10 and reopened.get(["d2"]) == []
        assert reopened.search_dense(unit(40)[None, :], 1, {})[0][0].doc_id == "late"
    finally:
        reopened.close()


def test_readers_pass_a_waiting_writer_while_a_copy_holds_writers_off():
    import threading

    from semsearch_server.index.rwlock import ReadWriteLock

    lock = ReadWriteLock()
    events: list[str] = []
    copying, copied = threading.Event(), threading.Event()

    def copy():
        with lock.read_holding_writers():
            copying.set()
            copied.wait(10)
            events.append("copy done")

    def write():
        with lock.write():
            events.append("write")

    def read():
        with lock.read():
            events.append("read")

    threads = [threading.Thread(target=copy)]
    threads[0].start()
    assert copying.wait(10)
    threads.append(threading.Thread(target=write))
    threads[1].start()
    deadline = time.monotonic() + 10
    while not lock._writers_waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)
    assert events == ["read"], "a reader waited behind a writer that could not run anyway"
    copied.set()
    for t in threads:
        t.join(10)
    assert events == ["read", "copy done", "write"]
    # Without a copy in progress a waiting writer goes first (writers are not starved).
    with lock.read():
        writer = threading.Thread(target=write)
        writer.start()
        while not lock._writers_waiting:
            time.sleep(0.01)
        late = threading.Thread(target=read)
        late.start()
        late.join(0.3)
        assert late.is_alive()
    writer.join(10)
    late.join(10)
    assert events[-2:] == ["write", "read"]


def test_reindex_builds_beside_and_rewrites_while_searches_go_on(store, monkeypatch):
    import threading

    from semsearch_server.index.vector_index import VectorIndex

    store.upsert([embedded(f"d{i}", f"document {i}", [i]) for i in range(10)])
    new_model = ModelFingerprint("fake2", "1" * 64, 8, "mean", True, 16, "fake")
    building, release_build = threading.Event(), threading.Event()
    rewriting, release_rewrite = threading.Event(), threading.Event()
    real_built = VectorIndex.built.__func__

    def slow_built(cls, *args, **kwargs):
        building.set()
        assert release_build.wait(30), "the test never released the build"
        return real_built(cls, *args, **kwargs)

    class HeldDatabase:
        """The writer's connection, held at the rewrite's insert of the new passages."""

        def __init__(self, db):
            self.db = db

        def __getattr__(self, name):
            return getattr(self.db, name)

        def executemany(self, sql, rows):
            if sql.startswith("INSERT INTO passages(label"):
                rewriting.set()
                assert release_rewrite.wait(30), "the test never released the rewrite"
            return self.db.executemany(sql, rows)

    monkeypatch.setattr(VectorIndex, "built", classmethod(slow_built))
    store._db = HeldDatabase(store._db)
    real_catch_up = store._catch_up

    def catch_up_then_replace_x(index, after):
        # The new index has x's first version now; x is replaced before the rewrite: the swap must drop it.
        result = real_catch_up(index, after)
        store.upsert([embedded("x", "replaced after the catch-up", [60])])
        return result

    monkeypatch.setattr(store, "_catch_up", catch_up_then_replace_x)

    def embed_documents(docs):
        return [EmbeddedDocument(d, (Passage(0, 0, len(d.text)),), unit(100 + int(d.id[1:]))[None, :]) for d in docs]

    result = []
    reindex = threading.Thread(target=lambda: result.append(store.replace_all_vectors(new_model, embed_documents)))
    reindex.start()

    def within_seconds(call, seconds=10):
        out = []
        worker = threading.Thread(target=lambda: out.append(call()))
        worker.start()
        worker.join(seconds)
        assert out, "it waited for the reindex"
        return out[0]

    try:
        # While the new index is built: searches and writes go through.
        assert building.wait(10)
        assert within_seconds(lambda: store.search_dense(unit(3)[None, :], 1, {})[0][0].doc_id) == "d3"
        within_seconds(lambda: store.upsert([embedded("d0", "rewritten during the reindex", [50])]))
        within_seconds(lambda: store.delete(["d1"]))
        within_seconds(lambda: store.upsert([embedded("x", "new during the reindex", [61])]))
        release_build.set()
        # While the database is rewritten: searches go on (the old vectors); a write waits for it.
        assert rewriting.wait(10)
        writer = threading.Thread(target=lambda: store.upsert([embedded("y", "waits for the rewrite", [70])]))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "a write went in during the rewrite"
        best = within_seconds(lambda: store.search_dense(unit(4)[None, :], 1, {})[0][0])
        assert best.doc_id == "d4" and abs(best.score - 1) < 1e-5
        release_rewrite.set()
        reindex.join(30)
        writer.join(30)
    finally:
        release_build.set()
        release_rewrite.set()
        store._db = store._db.db
    monkeypatch.undo()
    assert result == [10] and store.fingerprint == new_model  # d0..d9 less d1, plus x
    for i in range(2, 10):
        best = store.search_dense(unit(100 + i)[None, :], 1, {})[0][0]
        assert best.doc_id == f"d{i}" and abs(best.score - 1) < 1e-5
    for doc_id, seed in (("d0", 50), ("x", 60), ("y", 70)):
        best = store.search_dense(unit(seed)[None, :], 1, {})[0][0]
        assert best.doc_id == doc_id and abs(best.score - 1) < 1e-5
    # No passage left behind by the writes made meanwhile (x's first version, d0's and d1's old ones).
    assert store.get(["d1"]) == [] and store._index.ntotal == 11 and store.count() == 11
    store.close()
    reopened = FaissIndexStore.open(store.directory, new_model)
    try:
        assert reopened._index.ntotal == 11
        assert reopened.search_dense(unit(105)[None, :], 1, {})[0][0].doc_id == "d5"
    finally:
        reopened.close()


def test_an_upgrade_waits_for_the_readers_in_and_keeps_new_ones_and_writers_out():
    import threading

    from semsearch_server.index.rwlock import ReadWriteLock

    lock = ReadWriteLock()
    events: list[str] = []
    inside, leave = threading.Event(), threading.Event()

    def reader(name, ready=None, go=None):
        with lock.read():
            if ready:
                ready.set()
                go.wait(10)
            events.append(name)

    def writer():
        with lock.write():
            events.append("write")

    early = threading.Thread(target=reader, args=("early read", inside, leave))
    early.start()
    assert inside.wait(10)
    with lock.read_holding_writers():
        w = threading.Thread(target=writer)
        w.start()
        upgraded = threading.Event()

        def upgrade():
            with lock.upgraded():
                upgraded.set()
                time.sleep(0.2)
                events.append("exclusive")

        up = threading.Thread(target=upgrade)
        # The upgrade runs in another thread only to watch it wait; the holder is this thread's section.
        up.start()
        up.join(0.3)
        assert not upgraded.is_set(), "the upgrade did not wait for the reader inside"
        late = threading.Thread(target=reader, args=("late read",))
        late.start()
        leave.set()
        for t in (early, up, late):
            t.join(10)
    w.join(10)
    assert events == ["early read", "exclusive", "late read", "write"]
