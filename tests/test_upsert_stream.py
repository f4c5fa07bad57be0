"""SearchService.upsert_stream across several embedding groups: overlap, order, and what a failure keeps."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
from semsearch_server.config import ServerConfig
from semsearch_server.core.service import STREAM_EMBED_GROUP
from semsearch_server.domain import CollectionSettings, Document
from semsearch_server.embedding.base import ModelFingerprint
from semsearch_server.errors import DeadlineExceeded, InvalidArgument
from semsearch_server.wiring import build_service

DIM = 8
HALF_GROUP = STREAM_EMBED_GROUP // 2


def vector(text: str) -> np.ndarray:
    raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[: DIM * 4], dtype=np.uint32).astype(np.float32)
    return raw / np.linalg.norm(raw)


class CountingEmbedder:
    """A vector per text; `started[n]` is set when call n begins; `fail_call` makes that call raise."""

    def __init__(self, fail_call: int | None = None) -> None:
        self.fingerprint = ModelFingerprint("fake", "0" * 64, DIM, "mean", True, 16, "fake")
        self.dimension = DIM
        self.max_seq_length = 16
        self.fail_call = fail_call
        self.calls: list[int] = []
        self.started = [threading.Event() for _ in range(16)]

    def encode(self, texts: list[str]) -> np.ndarray:
        n = len(self.calls)
        self.calls.append(len(texts))
        self.started[n].set()
        if n == self.fail_call:
            raise RuntimeError("model exploded")
        return np.stack([vector(t) for t in texts])

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]


@pytest.fixture
def make_service(tmp_path):
    made = []

    def make(embedder):
        service = build_service(ServerConfig(data_dir=tmp_path / f"data{len(made)}"), embedder=embedder)
        service.create_collection("c", CollectionSettings())
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def messages(count: int, size: int = HALF_GROUP) -> list[tuple[str, list[Document]]]:
    return [("c", [Document(f"m{m}-{i}", f"message {m} text {i}") for i in range(size)]) for m in range(count)]


def test_the_next_group_is_embedded_while_the_previous_one_is_stored(make_service):
    embedder = CountingEmbedder()
    service = make_service(embedder)
    store = service.registry.get("c")
    real_upsert = store.upsert
    overlapped = []

    def upsert(docs, still_wanted=None):
        # Storing group 1 waits for group 2's embedding to start: without the overlap this never happens.
        if not overlapped:
            overlapped.append(embedder.started[1].wait(5))
        return real_upsert(docs, still_wanted)

    store.upsert = upsert
    stream = messages(4)
    assert service.upsert_stream(stream) == 4 * HALF_GROUP
    assert overlapped == [True]
    assert embedder.calls == [STREAM_EMBED_GROUP, STREAM_EMBED_GROUP]
    ids = [d.id for _, docs in stream for d in docs]
    assert store.count() == len(ids)
    stored = store.get_passages(ids[:: HALF_GROUP // 4])
    assert len(stored) == len(ids[:: HALF_GROUP // 4])
    for doc_id, (passages, got) in stored.items():
        m, i = doc_id[1:].split("-")
        assert len(passages) == 1
        np.testing.assert_allclose(got[0], vector(f"message {m} text {i}"), atol=1e-6)


def test_a_bad_message_after_several_groups_keeps_every_message_before_it(make_service):
    service = make_service(CountingEmbedder())
    stream = [*messages(5), ("c", [Document("bad", "")]), *messages(1)]
    stored = 5 * HALF_GROUP
    with pytest.raises(InvalidArgument, match=rf"stream message 5 \(after {stored} documents were stored\)"):
        service.upsert_stream(stream)
    assert service.registry.get("c").count() == stored


def test_a_failed_embedding_keeps_only_the_groups_before_it(make_service):
    service = make_service(CountingEmbedder(fail_call=1))
    with pytest.raises(RuntimeError, match="model exploded"):
        service.upsert_stream(messages(6))
    assert service.registry.get("c").count() == STREAM_EMBED_GROUP


def test_a_deadline_that_passes_mid_stream_keeps_the_groups_before_it(make_service):
    service = make_service(CountingEmbedder())
    store = service.registry.get("c")
    # The deadline passes once the first group is stored (it is asked again before each store).
    with pytest.raises(DeadlineExceeded, match=f"{STREAM_EMBED_GROUP} documents were stored"):
        service.upsert_stream(messages(6), still_wanted=lambda: store.count() < STREAM_EMBED_GROUP)
    assert service.registry.get("c").count() == STREAM_EMBED_GROUP


class ClientGone(Exception):
    """What the transport raises when the client cancels."""


def test_a_pause_stores_what_was_sent_and_a_cancel_keeps_exactly_that(make_service):
    service = make_service(CountingEmbedder())
    store = service.registry.get("c")

    def stream():
        yield from messages(2, size=10)
        deadline = time.monotonic() + 10
        while store.count() < 20:  # paused: the service stores the messages without waiting for more
            assert time.monotonic() < deadline, "a paused stream's messages were not stored"
            yield None
        yield from messages(1, size=10)  # no pause after it: still gathering when the client goes
        raise ClientGone

    with pytest.raises(ClientGone):
        service.upsert_stream(stream())
    assert store.count() == 20


def test_a_source_error_stores_every_message_before_it_and_says_how_many(make_service):
    service = make_service(CountingEmbedder())

    def stream():
        yield from messages(3, size=10)
        raise DeadlineExceeded("stream idle")

    with pytest.raises(DeadlineExceeded, match=r"stream idle \(3 messages received, 30 documents stored\)"):
        service.upsert_stream(stream())
    assert service.registry.get("c").count() == 30


def test_a_group_ends_at_the_byte_bound(make_service):
    embedder = CountingEmbedder()
    service = make_service(embedder)
    text = "x" * 1_000
    stream = [("c", [Document(f"m{m}-{i}", text) for i in range(10)]) for m in range(5)]
    # 10 documents of about 1 kB per message: a group passes 15 kB at its second message.
    assert service.upsert_stream(stream, group_bytes=15_000) == 50
    assert embedder.calls == [20, 20, 10]
