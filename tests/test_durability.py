"""Crash safety with a real server process and a real SIGKILL: nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from conftest import ServerProcess
from semsearch import Document, SemsearchError

pytestmark = pytest.mark.slow

# `make test` kills 3 times; `make long` runs the 20-kill loop.
KILLS = int(os.environ.get("SEMSEARCH_TEST_KILLS", "3"))
BATCH = 8


class Ingest:
    """Upserts numbered batches (and now and then deletes an older one) until the server dies.

    Records what was acknowledged and what was in flight when the connection broke.
    """

    def __init__(
        self,
        address: str,
        round_no: int,
        expected: dict[str, str],
        rng: random.Random,
        collection: str = "",
        delete_every: int = 4,
        victims: int = 3,
        texts: dict[str, str] | None = None,
    ) -> None:
        self.address = address
        self.collection = collection
        self.delete_every = delete_every  # every delete_every-th batch deletes `victims` older documents
        self.victims = victims
        self.texts = {} if texts is None else texts  # id -> text of every document sent, acknowledged or not
        self.round_no = round_no
        self.expected = expected  # id -> text of every acknowledged live document
        self.deleted: set[str] = set()
        self.rng = rng
        self.in_flight: tuple[str, list[Document] | list[str]] | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from semsearch import SearchClient

        with SearchClient(self.address, timeout=20) as client:
            for batch_no in range(10_000):
                if batch_no % self.delete_every == self.delete_every - 1 and self.expected:
                    victims = self.rng.sample(sorted(self.expected), min(self.victims, len(self.expected)))
                    self.in_flight = ("delete", victims)
                    try:
                        client.delete(victims, collection=self.collection)
                    except SemsearchError:
                        return
                    for doc_id in victims:
                        self.expected.pop(doc_id)
                        self.deleted.add(doc_id)
                else:
                    docs = [
                        Document(
                            f"r{self.round_no}-b{batch_no}-{j}",
                            f"round {self.round_no} batch {batch_no} item {j} about "
                            f"{self.rng.choice(['wine', 'fish', 'rain', 'trains'])} "
                            f"{_tag(f'r{self.round_no}-b{batch_no}-{j}')}",
                        )
                        for j in range(BATCH)
                    ]
                    self.in_flight = ("upsert", docs)
                    self.texts.update((d.id, d.text) for d in docs)
                    try:
                        client.upsert(docs, collection=self.collection)
                    except SemsearchError:
                        return
                    for d in docs:
                        self.expected[d.id] = d.text
                        self.deleted.discard(d.id)
                self.in_flight = None


def _tag(doc_id: str) -> str:
    """A word only this document contains: the lexical index must find exactly it by that word."""
    return "tag" + doc_id.replace("-", "x")


def _resolve_in_flight(client, ingest: Ingest) -> None:
    """The batch in flight at the kill must be all there or all absent; fold what happened into expected."""
    if ingest.in_flight is None:
        return
    kind, payload = ingest.in_flight
    if kind == "upsert":
        found = client.get([d.id for d in payload], collection=ingest.collection)
        assert len(found) in (0, len(payload)), f"half-applied upsert batch: {len(found)} of {len(payload)}"
        if found:
            assert [d.text for d in found] == [d.text for d in payload]
            for d in payload:
                ingest.expected[d.id] = d.text
    else:
        found = client.get(payload, collection=ingest.collection)
        assert len(found) in (0, len(payload)), f"half-applied delete batch: {len(found)} of {len(payload)} left"
        if not found:
            for doc_id in payload:
                ingest.expected.pop(doc_id, None)
                ingest.deleted.add(doc_id)


def _check_state(client, expected: dict[str, str], deleted: set[str], collection: str = "") -> None:
    ids = sorted(expected)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found = {d.id: d.text for d in client.get(chunk, collection=collection)}
        missing = [i for i in chunk if i not in found]
        assert not missing, f"acknowledged documents lost: {missing[:5]}"
        assert all(found[i] == expected[i] for i in chunk)
    gone = sorted(deleted)
    for start in range(0, len(gone), 500):
        assert client.get(gone[start : start + 500], collection=collection) == [], "a deleted document came back"
    counts = {c.name: c.document_count for c in client.list_collections()}
    assert counts[collection or "default"] == len(expected)
    if ids:  # the FAISS index agrees with the database: a stored text finds itself
        probe = random.Random(len(ids)).choice(ids)
        assert client.search(expected[probe], top_k=1, collection=collection)[0].id == probe
    # The lexical index agrees with the database: every acknowledged document is found by its own tag,
    # no deleted one is.
    for chunk_ids, want in ((ids, True), (gone, False)):
        for start in range(0, len(chunk_ids), 200):
            chunk = chunk_ids[start : start + 200]
            results = client.batch_search([_tag(i) for i in chunk], top_k=1, mode="lexical", collection=collection)
            for doc_id, hits in zip(chunk, results, strict=True):
                found = [h.id for h in hits]
                assert found == ([doc_id] if want else []), f"lexical index out of step for {doc_id}: {found}"


def test_acknowledged_writes_survive_repeated_sigkill(tmp_path):
    rng = random.Random(1234)
    # torch: the fastest start-up (no backend agreement check), and the write path is the same for every
    # backend; the SIGTERM test below runs the default backend.
    server = ServerProcess(tmp_path / "data", "--backend", "torch")
    expected: dict[str, str] = {}
    deleted: set[str] = set()
    try:
        server.start()
        for round_no in range(KILLS):
            ingest = Ingest(server.address, round_no, expected, rng)
            ingest.deleted = deleted
            ingest.thread.start()
            time.sleep(rng.uniform(0.3, 2.0))
            server.kill()
            ingest.thread.join(30)
            assert not ingest.thread.is_alive()
            server.start()
            with server.client() as client:
                _resolve_in_flight(client, ingest)
                _check_state(client, expected, deleted)
        assert len(expected) > KILLS * BATCH, "the ingest hardly ran; the test proved little"
    finally:
        server.stop()


def test_sigterm_drains_in_flight_calls_flushes_and_exits_zero(tmp_path):
    # A generous grace: the machine is shared, and the point is that the call is drained, not how fast.
    server = ServerProcess(tmp_path / "data", "--grace-seconds", "300")
    try:
        server.start()
        docs = [Document(f"d{i}", f"a longer document number {i} " * 8) for i in range(400)]
        result: dict = {}

        def slow_upsert():
            with server.client() as client:
                result["count"] = client.upsert(docs)

        worker = threading.Thread(target=slow_upsert)
        worker.start()
        time.sleep(0.5)  # the upsert is embedding 400 documents now
        code = server.terminate()
        worker.join(30)
        assert code == 0, server.output()
        assert result.get("count") == len(docs), "the in-flight call was cut off instead of drained"
        log = server.output()
        assert "draining" in log and "stopped" in log
        server.start()
        assert "replayed 0" in server.output(), "the final snapshot was not flushed at shutdown"
        with server.client() as client:
            assert len(client.get([d.id for d in docs])) == len(docs)
    finally:
        server.stop()


HNSW_KILLS = int(os.environ.get("SEMSEARCH_TEST_HNSW_KILLS", "1"))


def _check_dense_recovery(client, expected: dict[str, str], deleted: set[str], texts: dict[str, str]) -> None:
    """Beyond counts: every acknowledged document is the top dense hit for its own text (the same text
    embeds to the same vector, cosine 1), and no deleted one is found by its text any more."""
    for ids, live in ((sorted(expected), True), (sorted(deleted), False)):
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            queries = [expected[i] if live else texts[i] for i in chunk]
            results = client.batch_search(queries, top_k=3, mode="dense", collection="h")
            for doc_id, hits in zip(chunk, results, strict=True):
                if live:
                    assert hits and hits[0].id == doc_id and hits[0].score > 0.999, (
                        f"{doc_id} is not found by its own text: {[(h.id, h.score) for h in hits]}"
                    )
                else:
                    assert doc_id not in [h.id for h in hits], f"deleted {doc_id} is still in the HNSW index"


def _check_index_matches_database(directory) -> None:
    """Opens the killed collection in-process: the recovered HNSW index (snapshot + replayed log) holds
    exactly the database's passages, vector for vector, with a slot map that names each once."""
    import numpy as np
    from semsearch_server.domain import ModelFingerprint
    from semsearch_server.index.faiss_store import FaissIndexStore
    from semsearch_server.index.local_manifest import read_manifest

    fingerprint = ModelFingerprint.from_dict(read_manifest(directory)["model"])
    store = FaissIndexStore.open(directory, fingerprint)
    try:
        rows = store._db.execute("SELECT label, vector FROM passages ORDER BY label").fetchall()
        labels, vectors = store._index.all_vectors(copy=True)
        order = np.argsort(labels)
        assert labels[order].tolist() == [r[0] for r in rows], "the HNSW index and the database hold other passages"
        stored = np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        np.testing.assert_array_equal(vectors[order], stored)
        index = store._index
        assert sorted(index._slot_of) == [r[0] for r in rows]
        assert len(set(index._slot_of.values())) == len(rows), "two labels share an HNSW slot"
        assert not set(index._slot_of.values()) & index._dead, "a live label points at a dead slot"
    finally:
        store.close(snapshot=False)


def test_an_hnsw_collection_recovers_from_sigkill_consistent_with_its_database(tmp_path):
    """SIGKILL during an ingest with many deletes into an HNSW collection (masked slots, compactions beside
    the live index, snapshots every 40 writes): after each restart every acknowledged write is there and
    found by its own text, no deleted document is, and the recovered index matches SQLite exactly."""
    rng = random.Random(4321)
    server = ServerProcess(tmp_path / "data", "--backend", "torch", "--snapshot-every", "40")
    expected: dict[str, str] = {}
    deleted: set[str] = set()
    texts: dict[str, str] = {}
    logs = ""
    try:
        server.start()
        with server.client() as client:
            client.create_collection("h", index="hnsw", hnsw_m=8, hnsw_ef_search=256, passages=False)
        for round_no in range(HNSW_KILLS):
            # 6 of every 16 documents written are deleted again: a quarter of the graph is soon dead, so
            # compactions run (and the kill may land in one).
            ingest = Ingest(
                server.address, round_no, expected, rng, collection="h", delete_every=2, victims=6, texts=texts
            )
            ingest.deleted = deleted
            ingest.thread.start()
            # Enough writes for deletes, snapshots and a compaction to have happened (however loaded the
            # machine), then a random moment.
            deadline = time.monotonic() + 60
            while len(expected) + len(deleted) < 120 * (round_no + 1) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.5))
            logs += server.output()
            server.kill()
            ingest.thread.join(30)
            assert not ingest.thread.is_alive()
            server.start()
            with server.client() as client:
                _resolve_in_flight(client, ingest)
                _check_state(client, expected, deleted, collection="h")
                _check_dense_recovery(client, expected, deleted, texts)
            # The snapshot and the replayed log agreed with the database (no rebuild for a count mismatch).
            # (A kill between the renames of index.faiss and index.json makes the snapshot unusable and
            # the index is rebuilt from the database: correct, so not asserted against here.)
            assert "index holds" not in server.output(), server.output()[-3000:]
        assert len(expected) >= 20 and len(deleted) >= 60, "the ingest hardly ran; the test proved little"
        assert "rebuilt beside the live one" in logs, "no HNSW compaction ran during the ingest"
        server.kill()
        _check_index_matches_database(tmp_path / "data" / "collections" / "h")
    finally:
        server.stop()
