"""Replicas on one Milvus, as real processes: a replica killed mid-write, and a Milvus lost while serving."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra: pip install './server[milvus]'")

from conftest import InProcessServer, MilvusLiteServer  # noqa: E402
from semsearch import Document, SemsearchError, UnavailableError  # noqa: E402
from semsearch_server.testing import ServerProcess  # noqa: E402

MESSAGES_PER_STREAM = 48
DOCS_PER_MESSAGE = 64  # a stream of 3,072 texts: several embedding groups of 1,024 are stored before it ends
KILL_AT_MESSAGE = 40


def _doc(stream: int, message: int, i: int) -> Document:
    token = f"zq{stream}x{message}y{i}"  # one word no other document has
    return Document(f"s{stream}-m{message}-d{i}", f"entry {token} of a streamed batch", {"m": f"{stream}-{message}"})


def _ids(stream: int, message: int) -> list[str]:
    return [f"s{stream}-m{message}-d{i}" for i in range(DOCS_PER_MESSAGE)]


@pytest.mark.slow
def test_a_replica_killed_mid_upsert_stream_loses_no_acknowledged_write(milvus_server, tmp_path):
    """Two server processes on one Milvus: streams go to A, which is SIGKILLed in the middle of one. Every
    stream A acknowledged is visible through B (Get and Search); of the stream cut short, each message is
    there whole or not at all; A restarts and serves."""
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
        cut_short = threading.Event()
        failure: list[BaseException] = []

        def messages(stream: int):
            for m in range(MESSAGES_PER_STREAM):
                if stream == 2 and m == KILL_AT_MESSAGE:
                    cut_short.set()  # the earlier groups of this stream are being stored meanwhile
                    time.sleep(30)  # the kill comes first; the call fails
                yield [_doc(stream, m, i) for i in range(DOCS_PER_MESSAGE)]

        def write() -> None:
            with a.client(timeout=300) as client:
                for stream in range(3):
                    try:
                        count = client.upsert_stream(messages(stream), collection="streamed")
                    except SemsearchError as exc:
                        failure.append(exc)
                        return
                    assert count == MESSAGES_PER_STREAM * DOCS_PER_MESSAGE
                    acknowledged.append(stream)

        writer = threading.Thread(target=write)
        writer.start()
        assert cut_short.wait(600), "the writer never reached the kill point"
        time.sleep(1.0)  # let the group before the kill point reach Milvus
        a.kill()
        writer.join(120)
        assert not writer.is_alive() and failure, "the stream cut short must fail, not be acknowledged"
        assert acknowledged == [0, 1]

        with b.client(timeout=120) as client_b:
            for stream in acknowledged:
                for m in range(MESSAGES_PER_STREAM):
                    ids = _ids(stream, m)
                    assert [d.id for d in client_b.get(ids, collection="streamed")] == ids, (stream, m)
            for stream, m, i in [(0, 0, 0), (0, 47, 63), (1, 0, 5), (1, 23, 17), (1, 47, 63)]:
                doc = _doc(stream, m, i)
                hits = client_b.search(f"zq{stream}x{m}y{i}", collection="streamed", mode="lexical", top_k=3)
                assert [h.id for h in hits] == [doc.id] and hits[0].text == doc.text
                dense = client_b.search(doc.text, collection="streamed", mode="dense", top_k=3)
                assert doc.id in {h.id for h in dense}
            # The stream cut short: each message all or nothing (it may have reached Milvus in part).
            stored = []
            for m in range(MESSAGES_PER_STREAM):
                found = client_b.get(_ids(2, m), collection="streamed")
                assert len(found) in (0, DOCS_PER_MESSAGE), (m, len(found))
                stored.append(bool(found))
                if found:
                    assert found == [_doc(2, m, i) for i in range(DOCS_PER_MESSAGE)]
            # What was stored is a prefix of the stream's messages (they are applied in order).
            assert stored == sorted(stored, reverse=True)
            assert not any(stored[KILL_AT_MESSAGE:])
            total = (len(acknowledged) * MESSAGES_PER_STREAM + sum(stored)) * DOCS_PER_MESSAGE
            info = {c.name: c for c in client_b.list_collections()}["streamed"]
            assert info.document_count == total

        a.start()
        with a.client(timeout=120) as client_a:
            assert client_a.get(["s1-m47-d63"], collection="streamed")[0].text == _doc(1, 47, 63).text
            assert client_a.upsert([Document("after", "written after the restart")], collection="streamed") == 1
        with b.client(timeout=120) as client_b:
            assert client_b.search("restart", collection="streamed", mode="lexical")[0].id == "after"
    finally:
        a.stop()
        b.stop()


def test_milvus_lost_while_serving_is_unavailable_then_serves_again(tmp_path, embedder, explainer):
    """Milvus goes away under a serving replica: UNAVAILABLE with a message that says so (not INTERNAL),
    reads and writes alike; when it is back on the same address, the same replica serves again."""
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
        assert client.health() == "SERVING"
    finally:
        server.stop()
        milvus.kill()
