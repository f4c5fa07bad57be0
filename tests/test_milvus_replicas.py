"""Replicas on one Milvus, as real processes: a replica killed mid-write, and a Milvus lost while serving."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra: pip install './server[milvus]'")

from conftest import InProcessServer, MilvusLiteServer  # noqa: E402
from semsearch import Document, SemsearchError, UnavailableError  # noqa: E402
from semsearch_server.testing import ServerProcess  # noqa: E402

MESSAGES_PER_STREAM = 6
DOCS_PER_MESSAGE = 16
ACKNOWLEDGED_BEFORE_KILL = 4


def _doc(stream: int, message: int, i: int) -> Document:
    token = f"zq{stream}x{message}y{i}"  # one word no other document has
    return Document(f"s{stream}-m{message}-d{i}", f"entry {token} of a streamed batch", {"m": f"{stream}-{message}"})


def _ids(stream: int) -> list[str]:
    return [f"s{stream}-m{m}-d{i}" for m in range(MESSAGES_PER_STREAM) for i in range(DOCS_PER_MESSAGE)]


@pytest.mark.slow
def test_a_replica_killed_mid_upsert_stream_loses_no_acknowledged_write(milvus_server, tmp_path):
    """Two server processes on one Milvus: streams go to A one after another, and A is SIGKILLed while one is
    in flight (being sent, embedded or written to Milvus). Every stream A acknowledged is visible through B
    (Get and Search); of the stream cut short, each message is there whole or not at all, and only a prefix
    of its messages; A restarts and serves."""
    options = ("--backend", "torch", "--store", "milvus", "--milvus-uri", milvus_server)
    options += ("--milvus-prefix", f"kill{uuid.uuid4().hex[:6]}_")
    a = ServerProcess(tmp_path / "a", *options)
    b = ServerProcess(tmp_path / "b", *options)
    a.start()
    b.start()
    try:
        with a.client(timeout=300) as client_a:
            client_a.create_collection("streamed", passages=False)
        acknowledged: list[int] = []
        sent: list[int] = []  # the stream in flight
        failure: list[BaseException] = []
        enough = threading.Event()

        def messages(stream: int):
            for m in range(MESSAGES_PER_STREAM):
                yield [_doc(stream, m, i) for i in range(DOCS_PER_MESSAGE)]

        def write() -> None:
            with a.client(timeout=300) as client:
                for stream in range(1000):
                    sent.append(stream)
                    try:
                        count = client.upsert_stream(messages(stream), collection="streamed")
                    except SemsearchError as exc:
                        failure.append(exc)
                        return
                    assert count == MESSAGES_PER_STREAM * DOCS_PER_MESSAGE
                    acknowledged.append(stream)
                    if len(acknowledged) == ACKNOWLEDGED_BEFORE_KILL:
                        enough.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert enough.wait(600), "the writer did not get its first streams acknowledged"
        # Somewhere inside the next stream (a stream takes about a second here: the kill lands in its
        # sending, embedding or writing).
        time.sleep(random.uniform(0.1, 1.0))
        a.kill()
        writer.join(120)
        assert not writer.is_alive() and failure, "the stream in flight must fail, not be acknowledged"
        cut_short = sent[-1]
        assert acknowledged == list(range(cut_short))

        with b.client(timeout=120) as client_b:
            for stream in acknowledged:
                ids = _ids(stream)
                assert [d.id for d in client_b.get(ids, collection="streamed")] == ids, stream
            for stream in {0, len(acknowledged) // 2, acknowledged[-1]}:
                for m, i in [(0, 0), (MESSAGES_PER_STREAM - 1, DOCS_PER_MESSAGE - 1)]:
                    doc = _doc(stream, m, i)
                    hits = client_b.search(f"zq{stream}x{m}y{i}", collection="streamed", mode="lexical", top_k=3)
                    assert [h.id for h in hits] == [doc.id] and hits[0].text == doc.text
                    dense = client_b.search(doc.text, collection="streamed", mode="dense", top_k=3)
                    assert doc.id in {h.id for h in dense}
            # The stream cut short: each message all or nothing, and the stored ones a prefix of the stream.
            found = {d.id: d for d in client_b.get(_ids(cut_short), collection="streamed")}
            stored = []
            for m in range(MESSAGES_PER_STREAM):
                message = [_doc(cut_short, m, i) for i in range(DOCS_PER_MESSAGE)]
                present = [d for d in message if d.id in found]
                assert len(present) in (0, DOCS_PER_MESSAGE), (m, len(present))
                assert present in ([], message)
                stored.append(bool(present))
            assert stored == sorted(stored, reverse=True)
            total = (len(acknowledged) * MESSAGES_PER_STREAM + sum(stored)) * DOCS_PER_MESSAGE
            info = {c.name: c for c in client_b.list_collections()}["streamed"]
            assert info.document_count == total

        a.start()
        with a.client(timeout=120) as client_a:
            last = _doc(acknowledged[-1], MESSAGES_PER_STREAM - 1, 0)
            assert client_a.get([last.id], collection="streamed") == [last]
            assert client_a.upsert([Document("after", "written after the restart")], collection="streamed") == 1
        with b.client(timeout=120) as client_b:
            assert client_b.search("restart", collection="streamed", mode="lexical")[0].id == "after"
    finally:
        a.stop()
        b.stop()


def test_milvus_lost_while_serving_is_unavailable_then_serves_again(tmp_path, embedder, explainer):
    """Milvus goes away under a serving replica: UNAVAILABLE with a message that says so (not INTERNAL),
    reads and writes alike, and health NOT_SERVING; when it is back on the same address, the same replica
    serves again and health says SERVING."""
    milvus = MilvusLiteServer(tmp_path / "milvus").start()
    server = InProcessServer(tmp_path / "replica", embedder, explainer, store="milvus", milvus_uri=milvus.uri)
    try:
        client = server.client
        client.create_collection("outage")
        assert client.upsert([Document("kept", "the night train to Vienna")], collection="outage") == 1
        milvus.kill()
        calls = {
            "search": lambda: client.search("train", collection="outage"),
            "lexical": lambda: client.search("train", collection="outage", mode="lexical"),
            "get": lambda: client.get(["kept"], collection="outage"),
            "upsert": lambda: client.upsert([Document("lost", "never acknowledged")], collection="outage"),
            "delete": lambda: client.delete(["kept"], collection="outage"),
        }
        for what, rpc in calls.items():
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="Milvus is unreachable") as info:
                rpc()
            assert time.monotonic() - started < 60, what
            assert "retry" in str(info.value), what
        # The failed calls flipped health at once: a load balancer stops sending traffic here.
        assert client.health() == "NOT_SERVING"
        milvus.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                hits = client.search("train", collection="outage", mode="lexical")
                break
            except UnavailableError:
                assert time.monotonic() < deadline, "the replica did not serve again after Milvus came back"
                time.sleep(0.5)
        assert [h.id for h in hits] == ["kept"]
        assert client.search("a train to Austria", collection="outage")[0].id == "kept"
        assert client.get(["kept", "lost"], collection="outage") == [Document("kept", "the night train to Vienna", {})]
        assert client.upsert([Document("new", "written after the outage")], collection="outage") == 1
        # Health follows the store's probe (once a second), which may not have run since Milvus came back.
        deadline = time.monotonic() + 5
        while client.health() != "SERVING":
            assert time.monotonic() < deadline, "health did not say SERVING again within 5 s of Milvus's return"
            time.sleep(0.1)
    finally:
        server.stop()
        milvus.kill()
