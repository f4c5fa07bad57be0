"""`semsearch index` retries: which failures it backs off on, the full-jitter pauses, and the stream limit."""

from __future__ import annotations

import json
import threading

import grpc
import pytest
from semsearch import indexer
from semsearch.cli import main
from semsearch.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from test_indexer import count, stored, unique_sentences, write_jsonl

STREAM_LIMIT = (
    "too many open UpsertStreams: the server allows max_streams=1 at once and all are in use; "
    "finish a stream before opening another, or retry later"
)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (UnavailableError(grpc.StatusCode.UNAVAILABLE, "Milvus is unreachable (search): ...; retry when it is back"),
         True),
        (DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), True),
        (ResourceExhaustedError(grpc.StatusCode.RESOURCE_EXHAUSTED, STREAM_LIMIT), True),
        (ResourceExhaustedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many open UpsertStreams from ipv4:10.0.0.7: "
                                "the server allows max_streams_per_peer=2"), True),
        (ResourceExhaustedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no space left on the device holding the "
                                "collection; nothing was stored"), False),
        (ResourceExhaustedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max "
                                "(5000000 vs. 4194304)"), False),
        (InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "documents[3]: empty id"), False),
    ],
)  # fmt: skip
def test_which_failures_are_retried(error, retried, monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(indexer.time, "sleep", pauses.append)
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= 3:
            raise error
        return "done"

    notes: list[str] = []
    if retried:
        assert indexer.with_retries(call, 5, "f:1-10", notes.append) == "done"
        assert len(pauses) == 3 and len(notes) == 3
        assert notes[0].startswith(f"f:1-10: {error.code.name}")
        if isinstance(error, ResourceExhaustedError):
            assert "(stream limit), retry 1/5" in notes[0]
    else:
        with pytest.raises(type(error)):
            indexer.with_retries(call, 5, "f:1-10", notes.append)
        assert (len(calls), pauses, notes) == (1, [], [])


def test_backoff_is_full_jitter_capped_and_gives_up_after_the_retries(monkeypatch):
    # Full jitter: each pause is uniform in [0, min(cap, base * 2**attempt)].
    bounds = []
    monkeypatch.setattr(indexer.random, "uniform", lambda low, high: bounds.append((low, high)) or high)
    pauses: list[float] = []
    monkeypatch.setattr(indexer.time, "sleep", pauses.append)
    refused = ResourceExhaustedError(grpc.StatusCode.RESOURCE_EXHAUSTED, STREAM_LIMIT)

    def call():
        raise refused

    with pytest.raises(ResourceExhaustedError):
        indexer.with_retries(call, 8, "chunk", lambda _: None)
    assert bounds == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 4.0), (0, 8.0), (0, 10.0), (0, 10.0), (0, 10.0)]
    assert pauses == [b for _, b in bounds]
    monkeypatch.undo()
    draws = [indexer.backoff_delay(3) for _ in range(2000)]
    assert 0 <= min(draws) < 0.2 and 3.8 < max(draws) <= 4.0  # the whole range, from 0: not "delay/2 + jitter"


def test_streams_past_the_servers_stream_limit_back_off_and_every_document_is_stored_once(
    tmp_path, capsys, embedder, explainer
):
    """A server that lets one UpsertStream open at a time, two `semsearch index` runs at once, each with two
    streams in flight: the refused streams (RESOURCE_EXHAUSTED, "too many open UpsertStreams") are retried
    with backoff until a slot is free, and both runs finish with every document stored once."""
    from conftest import InProcessServer

    server = InProcessServer(tmp_path / "data", embedder, explainer, max_streams=1)
    try:
        server.client.create_collection("limited")
        docs = unique_sentences(160)
        halves = [docs[:80], docs[80:]]
        paths = [write_jsonl(tmp_path / f"part{n}.jsonl", [{"id": i, "text": t} for i, t, _ in half])
                 for n, half in enumerate(halves)]  # fmt: skip
        capsys.readouterr()
        codes: dict[int, int] = {}

        def run(n: int) -> None:
            argv = ["index", str(paths[n]), "--address", server.address, "-c", "limited", "--batch-size", "8",
                    "--stream-batches", "2", "--concurrency", "2", "--retries", "30"]  # fmt: skip
            codes[n] = main(argv)

        runners = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(180)
        err = capsys.readouterr().err
        assert codes == {0: 0, 1: 0}, err
        assert "RESOURCE_EXHAUSTED (stream limit), retry 1/30" in err
        assert count(server.client, "limited") == len(docs)
        got = stored(server.client, "limited", [i for i, _, _ in docs])
        assert {k: d.text for k, d in got.items()} == {i: t for i, t, _ in docs}
        for path in paths:  # each run's checkpoint says it finished
            checkpoint = json.loads(path.with_name(path.name + ".semsearch-checkpoint.json").read_text())
            assert checkpoint["files"][0]["complete"]
    finally:
        server.stop()
