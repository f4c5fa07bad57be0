"""The engine dies: a real `milvus-lite server` SIGKILLed under a real replica while `semsearch index` streams
into it and clients search, then started again on the same data and port.

While it is down every Search and Upsert answers UNAVAILABLE at once and health says NOT_SERVING (so a load
balancer stops sending traffic); once it is back health says SERVING, the replica serves, and the indexer,
which retried with backoff, finishes with every document stored exactly once. The per-second timeline is
printed (run with -s to see it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra: pip install './server[milvus]'")

from conftest import MilvusLiteServer  # noqa: E402
from semsearch import Document, SemsearchError  # noqa: E402
from semsearch_server.testing import ServerProcess  # noqa: E402
from test_indexer import unique_sentences, write_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOWN_SECONDS = 10.0
ACKNOWLEDGED_BEFORE_KILL = 60  # input lines the checkpoint has passed when Milvus is killed
FAST = 1.0  # an UNAVAILABLE answer while Milvus is down takes less than this
NOT_SERVING_WITHIN = 2.0


class Recorder:
    """Calls `probe` every `every` seconds on a thread of its own; keeps (time, outcome, seconds) per call."""

    def __init__(self, probe, every: float) -> None:
        self.probe, self.every = probe, every
        self.samples: list[tuple[float, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome = self.probe()
            except SemsearchError as exc:
                outcome = exc.code.name
            self.samples.append((started, outcome, time.monotonic() - started))
            self._stop.wait(self.every)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def between(self, start: float, end: float) -> list[tuple[float, str, float]]:
        return [s for s in self.samples if start <= s[0] < end]


def timeline(recorders: dict[str, Recorder], origin: float, end: float) -> str:
    """One line per second from the kill: what each recorder saw (outcome x count)."""
    lines = []
    for second in range(-2, int(end - origin) + 1):
        start = origin + second
        parts = []
        for name, recorder in recorders.items():
            seen = Counter(outcome for _, outcome, _ in recorder.between(start, start + 1))
            parts.append(f"{name} " + (",".join(f"{k}x{v}" for k, v in sorted(seen.items())) or "-"))
        lines.append(f"  t={second:+3d}s  " + "  ".join(parts))
    return "\n".join(lines)


@pytest.mark.slow
def test_milvus_killed_under_indexing_and_searches_health_follows_and_nothing_is_lost(tmp_path):
    milvus = MilvusLiteServer(tmp_path / "milvus").start()
    replica = ServerProcess(
        tmp_path / "replica", "--backend", "torch", "--store", "milvus", "--milvus-uri", milvus.uri,
        "--milvus-prefix", "outage_",
    )  # fmt: skip
    indexer = None
    recorders: dict[str, Recorder] = {}
    try:
        replica.start()
        client = replica.client(timeout=30)
        client.create_collection("books", passages=False)
        client.create_collection("side", passages=False)
        docs = unique_sentences(300)
        path = write_jsonl(tmp_path / "books.jsonl", [{"id": i, "text": t} for i, t, _ in docs])
        checkpoint = tmp_path / "books.checkpoint.json"
        stderr = tmp_path / "indexer.stderr"
        with open(stderr, "w") as err:
            indexer = subprocess.Popen(
                [sys.executable, "-m", "semsearch.cli", "index", str(path), "--address", replica.address,
                 "-c", "books", "--checkpoint", str(checkpoint), "--batch-size", "10", "--stream-batches", "2",
                 "--concurrency", "2", "--rate-limit", "40", "--retries", "20", "--json"],
                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip

        upserted = [0]

        def upsert() -> str:
            upserted[0] += 1
            client.upsert([Document(f"u{upserted[0]}", "a note written during the outage test")], collection="side",
                          timeout=5)  # fmt: skip
            return "OK"

        with replica.client(timeout=5) as searcher, replica.client(timeout=2) as prober:

            def search() -> str:
                searcher.search("a man plays a guitar", collection="books")
                return "OK"

            recorders = {
                "search": Recorder(search, 0.1),
                "upsert": Recorder(upsert, 0.25),
                "health": Recorder(lambda: prober.health(timeout=2), 0.1),
            }
            for recorder in recorders.values():
                recorder.start()

            deadline = time.monotonic() + 60
            done = 0
            while done < ACKNOWLEDGED_BEFORE_KILL:
                assert indexer.poll() is None, "the indexer finished before Milvus could be killed"
                assert time.monotonic() < deadline, "the indexer made no progress"
                time.sleep(0.05)
                if checkpoint.exists():
                    done = json.loads(checkpoint.read_text())["files"][0]["last_line"]
            killed = time.monotonic()
            milvus.kill()
            acknowledged_at_kill = done
            time.sleep(DOWN_SECONDS)
            restarting = time.monotonic()
            milvus.start()
            up = time.monotonic()
            out, _ = indexer.communicate(timeout=120)
            finished = time.monotonic()
            time.sleep(1.0)
            for recorder in recorders.values():
                recorder.stop()

        health, search, writes = recorders["health"], recorders["search"], recorders["upsert"]
        serving_again = next(t for t, s, _ in health.between(up, finished + 1) if s == "SERVING")
        search_again = next(t for t, s, _ in search.between(restarting, finished + 1) if s == "OK")
        down_health = health.between(killed, restarting)
        first_not_serving = next(t for t, s, _ in down_health if s == "NOT_SERVING")
        retries = [line for line in stderr.read_text().splitlines() if "retry" in line]
        print(f"\nMilvus killed at t=0 ({acknowledged_at_kill} of {len(docs)} lines acknowledged), restarted at "
              f"t={restarting - killed:.1f}s, answering at t={up - killed:.1f}s; health NOT_SERVING after "
              f"{first_not_serving - killed:.2f}s, SERVING again {serving_again - up:.2f}s after Milvus answered; "
              f"first Search served {search_again - up:.2f}s after; indexer done at t={finished - killed:.1f}s "
              f"after {len(retries)} retries")  # fmt: skip
        print(timeline(recorders, killed, finished))
        for line in retries:
            print("  indexer:", line)

        # While Milvus is down (after the calls in flight at the kill): UNAVAILABLE, fast; health NOT_SERVING.
        settled = killed + NOT_SERVING_WITHIN
        for name, recorder in (("search", search), ("upsert", writes)):
            during = recorder.between(killed + 0.5, restarting)
            assert during, name
            assert {outcome for _, outcome, _ in during} == {"UNAVAILABLE"}, (name, during)
            assert max(seconds for _, _, seconds in during) < FAST, (name, during)
        assert first_not_serving - killed <= NOT_SERVING_WITHIN
        assert {s for _, s, _ in health.between(settled, restarting)} == {"NOT_SERVING"}
        # Back: health SERVING, searches answered, the indexer finished with everything stored exactly once.
        assert serving_again - up < 5.0 and search_again - up < 5.0
        assert {s for _, s, _ in health.between(serving_again, finished + 1)} == {"SERVING"}
        assert indexer.returncode == 0, stderr.read_text()[-3000:]
        assert retries, "the indexer met no failure: the kill missed its run"
        summary = json.loads(out)
        assert (summary["indexed"], summary["failed"]) == (len(docs), 0)
        assert client.count(collection="books") == len(docs)
        listed = {c.name: c.document_count for c in client.list_collections()}
        assert listed["books"] == len(docs)
        got = {d.id: d.text for d in client.get([i for i, _, _ in docs], collection="books")}
        assert got == {i: t for i, t, _ in docs}
        # Every unary Upsert that was acknowledged is there too.
        acknowledged = sum(1 for _, outcome, _ in writes.samples if outcome == "OK")
        assert client.count(collection="side") >= acknowledged
        assert client.health() == "SERVING"
        client.close()
    finally:
        for recorder in recorders.values():
            recorder.stop()
        if indexer is not None and indexer.poll() is None:
            indexer.kill()
            indexer.wait(10)
        replica.stop()
        milvus.stop()
