"""Slow and abandoned UpsertStreams: the stream limits, the idle timeout, and what a cancelled stream keeps."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import InProcessServer
from semsearch import Document, SearchClient
from semsearch.v1 import search_service_pb2 as pb
from semsearch_server.config import load_config

MAX_STREAMS = 4
WORKERS = 2  # fewer than the streams: open streams must not take the threads unary calls need
IDLE_SECONDS = 3.0  # the idle tests' timeout; the others' is long enough for a loaded machine
_DONE = object()


class OpenStream:
    """An UpsertStream whose messages the test sends one at a time, then finishes, cancels or abandons."""

    def __init__(self, client: SearchClient, collection: str) -> None:
        self.collection = collection
        self._queue: queue.Queue = queue.Queue()
        self.opened = time.monotonic()
        self.future = client.stub.UpsertStream.future(iter(self._queue.get, _DONE), timeout=120)

    def send(self, docs: list[Document]) -> None:
        message = pb.UpsertRequest(collection=self.collection)
        for d in docs:
            message.documents.add(id=d.id, text=d.text, metadata=d.metadata)
        self._queue.put(message)

    def finish(self) -> int:
        self._queue.put(_DONE)
        return self.future.result(timeout=60).upserted_count

    def error(self, timeout: float = 60) -> grpc.RpcError:
        error = self.future.exception(timeout=timeout)
        assert error is not None, "the stream was expected to fail"
        return error

    def cancel(self) -> None:
        self.future.cancel()


def docs(prefix: str, count: int = 3) -> list[Document]:
    return [Document(f"{prefix}-{i}", f"{prefix} sentence number {i} about rivers and hills") for i in range(count)]


def wait_visible(client: SearchClient, collection: str, ids: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(client.get(ids, collection=collection)) < len(ids):
        assert time.monotonic() < deadline, f"{ids} not stored {timeout} s after they were sent"
        time.sleep(0.05)


def assert_no_reader_threads(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(t.name == "stream-reader" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a stream's reader thread outlived its stream"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, embedder, explainer):
    srv = InProcessServer(
        tmp_path_factory.mktemp("streams"),
        embedder,
        explainer,
        workers=WORKERS,
        max_streams=MAX_STREAMS,
        stream_idle_seconds=120.0,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def idling(tmp_path_factory, embedder, explainer):
    srv = InProcessServer(tmp_path_factory.mktemp("idle"), embedder, explainer, stream_idle_seconds=IDLE_SECONDS)
    yield srv
    srv.stop()


def new_collection(srv: InProcessServer) -> str:
    name = "s-" + uuid.uuid4().hex[:10]
    srv.client.create_collection(name)
    return name


@pytest.fixture
def coll(limited) -> str:
    return new_collection(limited)


def test_a_stream_past_max_streams_is_refused_while_unary_calls_keep_being_served(limited, coll):
    client = limited.client
    streams = [OpenStream(client, coll) for _ in range(MAX_STREAMS)]
    for n, stream in enumerate(streams):
        stream.send(docs(f"open{n}", 2))
    # Each message is stored while its stream stays open: every stream has its own thread, and a
    # paused stream stores what it sent.
    wait_visible(client, coll, [d.id for n in range(MAX_STREAMS) for d in docs(f"open{n}", 2)])

    refused = OpenStream(client, coll)
    refused.send(docs("refused"))
    error = refused.error(timeout=30)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"max_streams={MAX_STREAMS}" in error.details()
    assert client.get([d.id for d in docs("refused")], collection=coll) == []

    # Unary calls from other clients are served, with twice as many callers as worker threads. (Were
    # the open streams holding the workers, each call would wait out its 10 s deadline.)
    def search_and_get(_: int) -> None:
        with SearchClient(limited.address, timeout=10) as other:
            assert other.search("rivers", collection=coll, top_k=3)
            assert len(other.get(["open0-0"], collection=coll)) == 1

    with ThreadPoolExecutor(2 * WORKERS) as pool:
        list(pool.map(search_and_get, range(4 * WORKERS)))

    for n, stream in enumerate(streams):
        stream.send(docs(f"more{n}", 1))
        assert stream.finish() == 3
    # The slots are free again, and no stream left a reader thread behind.
    again = OpenStream(client, coll)
    again.send(docs("again", 1))
    assert again.finish() == 1
    assert_no_reader_threads()


def test_an_idle_stream_is_closed_with_deadline_exceeded_and_keeps_what_it_sent(idling):
    coll = new_collection(idling)
    stream = OpenStream(idling.client, coll)
    stream.send(docs("idle", 3))
    error = stream.error(timeout=IDLE_SECONDS + 20)
    closed_after = time.monotonic() - stream.opened
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "UpsertStream idle" in error.details()
    assert f"stream_idle_seconds={IDLE_SECONDS:g}" in error.details()
    assert "1 messages received, 3 documents stored" in error.details()
    assert IDLE_SECONDS <= closed_after < IDLE_SECONDS + 10
    assert len(idling.client.get([d.id for d in docs("idle", 3)], collection=coll)) == 3
    assert_no_reader_threads()


def test_a_slow_stream_that_keeps_sending_is_not_closed(idling):
    stream = OpenStream(idling.client, new_collection(idling))
    for n in range(6):  # 6 messages 0.75 s apart: the stream lives longer than the idle timeout
        stream.send(docs(f"slow{n}", 2))
        time.sleep(IDLE_SECONDS / 4)
    assert time.monotonic() - stream.opened > IDLE_SECONDS
    assert stream.finish() == 12


def test_a_cancelled_stream_keeps_exactly_the_messages_stored_before_the_cancel(tmp_path, embedder, explainer):
    srv = InProcessServer(tmp_path / "data", embedder, explainer, stream_idle_seconds=120.0)
    try:
        client = srv.client
        client.create_collection("c")
        stream = OpenStream(client, "c")
        acknowledged: list[str] = []
        for n in range(3):
            stream.send(docs(f"ack{n}", 4))
            acknowledged += [d.id for d in docs(f"ack{n}", 4)]
            wait_visible(client, "c", acknowledged)
        last = [d.id for d in docs("last", 50)]
        stream.send(docs("last", 50))
        stream.cancel()
        assert stream.future.cancelled()
        time.sleep(3.0)  # anything still in flight would have been stored by now

        def visible() -> tuple[int, int]:
            return len(client.get(acknowledged, collection="c")), len(client.get(last, collection="c"))

        stored_ack, stored_last = visible()
        assert stored_ack == len(acknowledged)
        # The message cut off by the cancel is stored whole or not at all, never in part.
        assert stored_last in (0, len(last))
        assert_no_reader_threads()
        count = client.list_collections()
        srv.stop()
        srv = InProcessServer(tmp_path / "data", embedder, explainer)
        client = srv.client
        assert visible() == (stored_ack, stored_last)
        assert client.list_collections() == count
    finally:
        srv.stop()


def test_a_stream_past_the_per_address_limit_is_refused(tmp_path, embedder, explainer):
    srv = InProcessServer(tmp_path / "data", embedder, explainer, max_streams_per_peer=2)
    try:
        open_ = [OpenStream(srv.client, "") for _ in range(2)]
        for n, stream in enumerate(open_):
            stream.send(docs(f"peer{n}", 1))
        wait_visible(srv.client, "", ["peer0-0", "peer1-0"])
        refused = OpenStream(srv.client, "")
        error = refused.error(timeout=30)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_peer=2" in error.details()
        assert "ipv4:127.0.0.1" in error.details()
        assert [stream.finish() for stream in open_] == [1, 1]
    finally:
        srv.stop()


def test_stream_options_come_from_flags_and_environment():
    config = load_config(
        ["--max-streams", "7", "--stream-idle-seconds", "2.5"],
        {"SEMSEARCH_MAX_STREAMS_PER_PEER": "3", "SEMSEARCH_STREAM_BUFFER_BYTES": "4096"},
    )
    assert (config.max_streams, config.stream_idle_seconds) == (7, 2.5)
    assert (config.max_streams_per_peer, config.stream_buffer_bytes) == (3, 4096)
    with pytest.raises(ValueError, match="option max_streams"):
        load_config(["--max-streams", "0"], {})


def test_a_stalled_stream_does_not_block_others_from_writing(limited, coll):
    stalled = OpenStream(limited.client, coll)
    stalled.send(docs("stalled", 1))
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(limited.client.upsert(docs("writer", 2), collection=coll)))
    writer.start()
    writer.join(10)
    assert result == [2]
    stalled.cancel()
