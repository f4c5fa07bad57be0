"""MicroBatchingEmbedder: grouping, each caller's own rows, errors, no delay for a lone caller."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from semsearch_server.deadlines import caller_deadline, give_up_if, remaining
from semsearch_server.embedding.base import ModelFingerprint
from semsearch_server.embedding.batching import MicroBatchingEmbedder
from semsearch_server.embedding.onnx_backend import balanced_batches
from semsearch_server.errors import DeadlineExceeded, DiskFull

DIM = 8


class FakeEmbedder:
    """A deterministic vector per text; records the size of every call; optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: list[int] = []
        self.fingerprint = ModelFingerprint("fake", "0" * 64, DIM, "mean", True, 16, "fake")
        self.dimension = DIM
        self.max_seq_length = 16

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("model exploded")
        return np.stack([vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def vector(text: str) -> np.ndarray:
    raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[: DIM * 4], dtype=np.uint32).astype(np.float32)
    return raw / np.linalg.norm(raw)


def run_concurrently(batcher: MicroBatchingEmbedder, requests: list[list[str]]) -> list:
    """encode() each request from its own thread, all released at once; results (or exceptions) in order."""
    results: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = batcher.encode(requests[i])
        except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


@pytest.fixture
def make_batcher():
    made: list[MicroBatchingEmbedder] = []

    def make(inner, **kwargs) -> MicroBatchingEmbedder:
        made.append(MicroBatchingEmbedder(inner, **kwargs))
        return made[-1]

    yield make
    for batcher in made:
        batcher.close()


def test_many_threads_get_their_own_vectors(make_batcher):
    inner = FakeEmbedder(delay=0.005)
    batcher = make_batcher(inner, max_batch=16, max_wait_ms=5)
    requests = [[f"request {i} text {j} " + "x" * ((i * 7 + j) % 13) for j in range(i % 4 + 1)] for i in range(24)]
    results = run_concurrently(batcher, requests)
    for texts, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got, np.stack([vector(t) for t in texts]))
    assert sum(inner.calls) == sum(len(r) for r in requests)


def test_concurrent_callers_are_grouped(make_batcher):
    inner = FakeEmbedder(delay=0.03)  # slow enough that the others queue behind the first call
    batcher = make_batcher(inner, max_batch=32, max_wait_ms=20)
    run_concurrently(batcher, [[f"text {i}"] for i in range(8)])
    assert max(inner.calls) > 1
    assert len(inner.calls) < 8


def test_max_batch_bounds_a_group(make_batcher):
    inner = FakeEmbedder(delay=0.02)
    batcher = make_batcher(inner, max_batch=4, max_wait_ms=20)
    run_concurrently(batcher, [[f"text {i}", f"more {i}"] for i in range(8)])
    assert max(inner.calls) <= 4


def test_lone_call_goes_straight_through(make_batcher):
    inner = FakeEmbedder()
    batcher = make_batcher(inner, max_wait_ms=1000)
    for _ in range(3):
        started = time.perf_counter()
        got = batcher.encode(["alone", "together"])
        assert time.perf_counter() - started < 0.2  # far below the 1 s max_wait
        np.testing.assert_array_equal(got, np.stack([vector("alone"), vector("together")]))
    assert inner.calls == [2, 2, 2]


def test_inner_failure_raises_in_every_caller(make_batcher):
    batcher = make_batcher(FakeEmbedder(delay=0.01, fail=True), max_wait_ms=10)
    results = run_concurrently(batcher, [[f"text {i}"] for i in range(6)])
    assert all(isinstance(r, ValueError) and "model exploded" in str(r) for r in results)
    with pytest.raises(ValueError, match="model exploded"):
        batcher.encode(["alone"])


def test_delegates_and_handles_empty(make_batcher):
    inner = FakeEmbedder()
    batcher = make_batcher(inner)
    assert batcher.fingerprint is inner.fingerprint
    assert (batcher.dimension, batcher.max_seq_length) == (DIM, 16)
    assert batcher.token_counts(["a b c"]) == [3]
    assert batcher.encode([]).shape == (0, DIM)
    assert inner.calls == []


def test_close_stops_the_worker():
    batcher = MicroBatchingEmbedder(FakeEmbedder())
    batcher.close()
    assert not batcher._worker.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.encode(["late"])


class BulkGatedEmbedder(FakeEmbedder):
    """A FakeEmbedder whose calls of more than `bulk_over` texts block until `release` is set."""

    def __init__(self, bulk_over: int) -> None:
        super().__init__()
        self.bulk_over = bulk_over
        self.release = threading.Event()
        self.bulk_started = threading.Event()
        self.bulk_running = 0
        self.most_bulk_running = 0
        self._count = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        if len(texts) <= self.bulk_over:
            return super().encode(texts)
        with self._count:
            self.bulk_running += 1
            self.most_bulk_running = max(self.most_bulk_running, self.bulk_running)
        self.bulk_started.set()
        try:
            assert self.release.wait(10), "the test never released the bulk call"
            return super().encode(texts)
        finally:
            with self._count:
                self.bulk_running -= 1


def in_thread(call) -> tuple[threading.Thread, list]:
    """Runs call() in a started thread; the list receives its result."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


BULK = [f"document {i} " + "y" * (i % 9) for i in range(40)]


def test_bulk_lane_lets_small_requests_pass_a_running_bulk_request(make_batcher):
    inner = BulkGatedEmbedder(bulk_over=8)
    batcher = make_batcher(inner, max_batch=8, bulk_lane=True)
    bulk_thread, bulk_out = in_thread(lambda: batcher.encode(BULK))
    assert inner.bulk_started.wait(5)
    small_thread, small_out = in_thread(lambda: batcher.encode(["a query", "another"]))
    small_thread.join(5)
    assert small_out, "the small request waited for the bulk one"
    np.testing.assert_array_equal(small_out[0], np.stack([vector("a query"), vector("another")]))
    assert bulk_thread.is_alive()
    inner.release.set()
    bulk_thread.join(5)
    np.testing.assert_array_equal(bulk_out[0], np.stack([vector(t) for t in BULK]))


def test_without_bulk_lane_a_small_request_waits_for_the_bulk_one(make_batcher):
    inner = BulkGatedEmbedder(bulk_over=8)
    batcher = make_batcher(inner, max_batch=8)
    bulk_thread, _ = in_thread(lambda: batcher.encode(BULK))
    assert inner.bulk_started.wait(5)
    small_thread, small_out = in_thread(lambda: batcher.encode(["a query"]))
    small_thread.join(0.3)
    assert not small_out
    inner.release.set()
    small_thread.join(5)
    bulk_thread.join(5)
    np.testing.assert_array_equal(small_out[0], vector("a query")[None])


def test_bulk_lane_runs_one_bulk_request_at_a_time(make_batcher):
    inner = BulkGatedEmbedder(bulk_over=8)
    inner.release.set()
    batcher = make_batcher(inner, max_batch=8, bulk_lane=True)
    requests = [[f"{i}: {t}" for t in BULK] for i in range(4)] + [[f"small {i}"] for i in range(4)]
    results = run_concurrently(batcher, requests)
    for texts, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got, np.stack([vector(t) for t in texts]))
    assert inner.most_bulk_running == 1


def in_thread_with_deadline(batcher: MicroBatchingEmbedder, texts: list[str], seconds: float):
    """batcher.encode(texts) in a thread whose caller gives up after `seconds`; the list gets the
    result or the exception, and the time it took."""
    out: list = []

    def call() -> None:
        started = time.monotonic()
        with caller_deadline(seconds):
            try:
                out.append(batcher.encode(texts))
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                out.append(exc)
        out.append(time.monotonic() - started)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, out


def test_a_queued_request_leaves_at_its_deadline_and_is_never_encoded(make_batcher):
    inner = BulkGatedEmbedder(bulk_over=8)
    batcher = make_batcher(inner, max_batch=8)
    bulk_thread, _ = in_thread(lambda: batcher.encode(BULK))  # holds the model until released
    assert inner.bulk_started.wait(5)
    waiting, out = in_thread_with_deadline(batcher, ["too late"], 0.2)
    waiting.join(3)
    assert not waiting.is_alive(), "the request was held past its deadline"
    assert isinstance(out[0], DeadlineExceeded) and out[1] < 2.0
    inner.release.set()
    bulk_thread.join(5)
    assert batcher.encode(["next"]).shape == (1, DIM)
    assert inner.calls == [len(BULK), 1]  # "too late" never reached the model


def test_a_bulk_request_leaves_the_bulk_lane_queue_at_its_deadline(make_batcher):
    inner = BulkGatedEmbedder(bulk_over=8)
    batcher = make_batcher(inner, max_batch=8, bulk_lane=True)
    bulk_thread, _ = in_thread(lambda: batcher.encode(BULK))
    assert inner.bulk_started.wait(5)
    waiting, out = in_thread_with_deadline(batcher, [f"other {t}" for t in BULK], 0.2)
    waiting.join(3)
    assert not waiting.is_alive() and isinstance(out[0], DeadlineExceeded)
    inner.release.set()
    bulk_thread.join(5)
    assert inner.calls == [len(BULK)]


def test_a_queued_request_leaves_as_soon_as_its_caller_gives_up(make_batcher):
    # A write whose disk filled while it waited for the model: its caller's check raises, the wait ends at once
    # (not at the deadline a minute away) with the check's error, and its texts are never embedded.
    inner = BulkGatedEmbedder(bulk_over=8)
    batcher = make_batcher(inner, max_batch=8)
    bulk_thread, _ = in_thread(lambda: batcher.encode(BULK))
    assert inner.bulk_started.wait(5)
    disk_full = threading.Event()
    out: list = []

    def check() -> None:
        if disk_full.is_set():
            raise DiskFull("disk full")

    def call() -> None:
        with caller_deadline(60), give_up_if(check):
            try:
                out.append(batcher.encode(["a write"]))
            except DiskFull as exc:
                out.append(exc)
        out.append(time.monotonic())

    waiting = threading.Thread(target=call, daemon=True)
    waiting.start()
    time.sleep(0.2)
    assert not out, "the caller gave up before its check raised"
    disk_full.set()
    given_up = time.monotonic()
    waiting.join(3)
    assert isinstance(out[0], DiskFull) and out[1] - given_up < 1.0
    inner.release.set()
    bulk_thread.join(5)
    assert inner.calls == [len(BULK)]  # "a write" never reached the model


def test_a_caller_who_may_give_up_is_queued_not_served_in_its_own_thread(make_batcher):
    inner = FakeEmbedder()
    batcher = make_batcher(inner, max_batch=8)
    callers: list[str] = []
    real_encode = inner.encode

    def encode(texts: list[str]) -> np.ndarray:
        callers.append(threading.current_thread().name)
        return real_encode(texts)

    inner.encode = encode
    with give_up_if(lambda: None):
        np.testing.assert_array_equal(batcher.encode(["x"]), vector("x")[None])
    np.testing.assert_array_equal(batcher.encode(["y"]), vector("y")[None])
    assert callers == ["embedding-batcher", threading.current_thread().name]


def test_a_deadline_far_away_changes_nothing(make_batcher):
    inner = FakeEmbedder(delay=0.02)
    batcher = make_batcher(inner, max_batch=16, max_wait_ms=5)
    with caller_deadline(60):
        results = run_concurrently(batcher, [[f"text {i}"] for i in range(6)])
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, vector(f"text {i}")[None])


def test_the_interceptor_hands_the_grpc_deadline_down():
    import grpc
    from semsearch_server.transport.deadlines import DeadlineInterceptor

    seen: list = []
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: seen.append(remaining()))
    wrapped = DeadlineInterceptor().intercept_service(lambda _: handler, None)
    for time_remaining in (5.0, None):
        context = type("Context", (), {"time_remaining": lambda self, t=time_remaining: t})()
        wrapped.unary_unary(None, context)
    assert 4.0 < seen[0] <= 5.0 and seen[1] is None
    assert remaining() is None  # reset after the call


@pytest.mark.parametrize("two_engines", [True, False])
def test_the_service_gets_a_bulk_lane_only_with_two_engines(tmp_path, two_engines):
    from semsearch_server.config import ServerConfig
    from semsearch_server.embedding.routing import SizeRoutedEmbedder
    from semsearch_server.wiring import build_service

    embedder = SizeRoutedEmbedder(FakeEmbedder(), FakeEmbedder()) if two_engines else FakeEmbedder()
    service = build_service(ServerConfig(data_dir=tmp_path), embedder=embedder)
    try:
        assert service.embedder.bulk_lane is two_engines
    finally:
        service.close()


def test_real_model_rows_match_direct_encode(make_batcher):
    from semsearch_server.embedding.sentence_transformer import (
        SentenceTransformerEmbedder,
        default_model_path,
    )

    inner = SentenceTransformerEmbedder(default_model_path())
    batcher = make_batcher(inner, max_batch=32, max_wait_ms=5)
    requests = [
        [f"A person number {i} is walking a dog in the park.", "Short." * (i % 3 + 1)][: i % 2 + 1] for i in range(12)
    ]
    results = run_concurrently(batcher, requests)
    for texts, got in zip(requests, results, strict=True):
        # Batch composition changes the float rounding a little, never the vector.
        np.testing.assert_allclose(got, inner.encode(texts), atol=1e-5)


def _padded_cost(batch: list[int], lengths: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


@pytest.mark.parametrize("seed", range(40))
def test_balanced_batches_cut_sorted_texts_at_the_best_points(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 120, size=int(rng.integers(1, 14))).tolist()
    parts = int(rng.integers(1, 4))
    batches = balanced_batches(lengths, parts)

    assert 1 <= len(batches) <= parts
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat)  # shortest first, each batch a run of similar lengths
    # Against every way of cutting the sorted lengths into at most `parts` runs.
    ordered = sorted(lengths)
    best = min(
        max(len(run) * run[-1] for run in np.split(ordered, list(cut)) if len(run))
        for k in range(parts)
        for cut in itertools.combinations(range(1, len(ordered)), k)
    )
    assert max(_padded_cost(batch, lengths) for batch in batches) == best


def test_balanced_batches_of_nothing_and_of_one():
    assert balanced_batches([], 2) == []
    assert balanced_batches([7], 2) == [[0]]
    # Eight short texts and one long one: the long one alone, not four-and-five.
    lengths = [10, 11, 9, 12, 10, 11, 10, 12, 60]
    batches = balanced_batches(lengths, 2)
    assert [len(b) for b in batches] == [8, 1]


def test_a_first_start_gets_the_bulk_lane_when_it_switches_to_two_engines(tmp_path):
    """A first start serves on torch, then switches to two engines while serving (switching.py): the
    batcher built before the switch must follow the engine it has now, in both directions of the answer."""
    from semsearch_server.config import ServerConfig
    from semsearch_server.embedding.routing import SizeRoutedEmbedder
    from semsearch_server.embedding.switching import SwitchingEmbedder
    from semsearch_server.wiring import build_service

    first, small, bulk = FakeEmbedder(), FakeEmbedder(), FakeEmbedder()
    switching = SwitchingEmbedder(first)
    service = build_service(ServerConfig(data_dir=tmp_path), embedder=switching)
    try:
        assert service.embedder.bulk_lane is False
        service.embedder.encode(["one"])
        switching.switch_to(SizeRoutedEmbedder(bulk, small))
        assert switching.switched.is_set()
        assert service.embedder.bulk_lane is True
        service.embedder.encode(["two"])
        service.embedder.encode([f"text {i}" for i in range(100)])
        assert first.calls == [1]  # nothing reaches the engine switched away from
        assert small.calls == [1] and bulk.calls == [100]
    finally:
        service.close()


def test_an_engine_of_another_dimension_is_refused():
    from semsearch_server.embedding.switching import SwitchingEmbedder

    other = FakeEmbedder()
    other.dimension = DIM * 2
    switching = SwitchingEmbedder(FakeEmbedder())
    with pytest.raises(ValueError, match="dimension 8 -> 16"):
        switching.switch_to(other)
    assert not switching.switched.is_set()


class FakeTorch(BulkGatedEmbedder):
    """The torch engine of a first start: `encode_beside` runs a call beside the one running (and is counted)."""

    def __init__(self, bulk_over: int) -> None:
        super().__init__(bulk_over=bulk_over)
        self.beside: list[int] = []

    def encode_beside(self, texts: list[str]) -> np.ndarray:
        self.beside.append(len(texts))
        return FakeEmbedder.encode(self, texts)


def query_beside_an_upsert(batcher, gated: BulkGatedEmbedder):
    """Starts an upsert of 16 texts (held in `gated` until released), then a query, which must be answered
    while the upsert still runs; returns the upsert's texts, thread and output."""
    upsert = [f"abstract {i}" for i in range(16)]
    upsert_thread, upsert_out = in_thread(lambda: batcher.encode(upsert))
    assert gated.bulk_started.wait(5)
    query_thread, query_out = in_thread(lambda: batcher.encode(["a query"]))
    query_thread.join(5)
    assert query_out, "the query waited for the upsert"
    np.testing.assert_array_equal(query_out[0], vector("a query")[None, :])
    return upsert, upsert_thread, upsert_out


def test_while_a_first_start_builds_a_query_runs_beside_an_upsert_on_torch(make_batcher):
    """A first start's interim engine (switching.Interim): an upsert of 16 texts, fewer than a group, still
    takes the bulk lane, and a query arriving meanwhile is embedded by torch beside it, not after it."""
    from semsearch_server.embedding.switching import Interim, SwitchingEmbedder

    torch = FakeTorch(bulk_over=1)
    batcher = make_batcher(SwitchingEmbedder(Interim(torch, torch)), max_batch=32, bulk_lane=None)
    assert batcher.bulk_lane and batcher.fingerprint == torch.fingerprint  # described as torch alone
    upsert, upsert_thread, upsert_out = query_beside_an_upsert(batcher, torch)
    assert upsert_thread.is_alive() and torch.beside == [1]
    torch.release.set()
    upsert_thread.join(5)
    np.testing.assert_array_equal(upsert_out[0], np.stack([vector(t) for t in upsert]))
    batcher.encode(["idle again"])  # torch idle: the query takes the usual path
    assert torch.beside == [1]


def test_once_openvino_serves_batches_in_a_first_start_queries_go_to_its_single_query_twin(make_batcher):
    """After the first switch (OpenVINO for batches), small requests leave torch for OpenVINO compiled for
    single queries: beside a running batch and when the batch engine is idle alike; larger ones stay on it."""
    from semsearch_server.embedding.switching import Interim, SwitchingEmbedder

    torch, openvino, twin = FakeTorch(bulk_over=10**6), BulkGatedEmbedder(bulk_over=1), FakeEmbedder()
    interim = Interim(openvino, torch)
    batcher = make_batcher(SwitchingEmbedder(interim), max_batch=32, bulk_lane=None)
    interim.take_small_requests_on(twin)
    upsert, upsert_thread, upsert_out = query_beside_an_upsert(batcher, openvino)
    assert twin.calls == [1] and torch.beside == []
    openvino.release.set()
    upsert_thread.join(5)
    np.testing.assert_array_equal(upsert_out[0], np.stack([vector(t) for t in upsert]))
    batcher.encode(["idle again"])  # the batch engine idle: still the twin
    assert twin.calls == [1, 1] and torch.beside == [] and torch.calls == []
    assert batcher.fingerprint == openvino.fingerprint  # described as the batch engine


def test_a_large_request_during_a_first_start_moves_to_the_new_engine_at_the_switch():
    """An UpsertStream's group of 1,024 texts that started on torch must not run on torch to its end
    once OpenVINO has taken over: while the engines are built, large requests run in chunks."""
    from semsearch_server.embedding.switching import Interim, SwitchingEmbedder

    torch, fast = BulkGatedEmbedder(bulk_over=8), FakeEmbedder()
    switching = SwitchingEmbedder(Interim(torch, torch))
    texts = [f"abstract {i}" for i in range(200)]
    thread, out = in_thread(lambda: switching.encode(texts))
    assert torch.bulk_started.wait(5)  # the first chunk runs on torch
    switching.switch_to(fast)
    torch.release.set()
    thread.join(5)
    assert torch.calls == [64] and fast.calls == [64, 64, 8]
    np.testing.assert_array_equal(out[0], np.stack([vector(t) for t in texts]))  # rows in input order
    switching.encode(texts)  # switched: one call, as the engines built for batches want
    assert fast.calls[-1] == 200
