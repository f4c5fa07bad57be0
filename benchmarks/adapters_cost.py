"""What the adapters and the asyncio client cost, side by side against one real server process.

  * similarity_search through the LangChain adapter against SearchClient.search on the same collection and
    queries, interleaved one by one: p50 of each and the ratio (target <= 1.1x);
  * 16 concurrent searches from one event loop (AsyncSearchClient, asyncio.gather) against 16 threads of the
    sync client, each client made once and warmed up, for the same wall time each, in rounds whose order
    alternates: searches/s and the median of the rounds' ratios (target >= 1.0x).

The server runs the torch backend on the STS sample shipped in examples/ (300 sentences); the queries are the
sample's own sentences. Run from the repository's root:

    .venv/bin/python benchmarks/adapters_cost.py [--queries 300] [--seconds 5] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from semsearch import AsyncSearchClient, SearchClient
from semsearch.integrations.langchain import SemsearchVectorStore
from semsearch_server.testing import ServerProcess

REPO = Path(__file__).resolve().parents[1]


def sentences() -> list[str]:
    out = []
    for line in (REPO / "examples" / "sts-sample.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line)["text"])
        except (ValueError, KeyError):  # the sample's one broken record
            continue
    return out


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def adapter_against_client(client: SearchClient, queries: list[str]) -> tuple[float, float]:
    store = SemsearchVectorStore(client=client, collection="bench")
    direct, adapter = [], []
    for query in queries:
        started = time.perf_counter()
        client.search(query, collection="bench", top_k=10)
        direct.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.similarity_search(query, k=10)
        adapter.append(time.perf_counter() - started)
    return p50_ms(direct), p50_ms(adapter)


def threads_rate(client: SearchClient, queries: list[str], seconds: float, workers: int = 16) -> float:
    done = [0] * workers
    stop = time.monotonic() + seconds

    def work(slot: int) -> None:
        i = slot
        while time.monotonic() < stop:
            client.search(queries[i % len(queries)], collection="bench", top_k=10)
            done[slot] += 1
            i += workers

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(workers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


class EventLoopClient:
    """One AsyncSearchClient on one event loop, kept across rounds as the threads keep their SearchClient."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(self._connect(address))

    @staticmethod
    async def _connect(address: str) -> AsyncSearchClient:
        return AsyncSearchClient(address, timeout=60)

    def rate(self, queries: list[str], seconds: float, concurrent: int = 16) -> float:
        async def run() -> float:
            done = 0
            stop = time.monotonic() + seconds

            async def work(slot: int) -> None:
                nonlocal done
                i = slot
                while time.monotonic() < stop:
                    await self.client.search(queries[i % len(queries)], collection="bench", top_k=10)
                    done += 1
                    i += concurrent

            started = time.monotonic()
            await asyncio.gather(*(work(slot) for slot in range(concurrent)))
            return done / (time.monotonic() - started)

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    texts = sentences()
    queries = (texts * (args.queries // len(texts) + 1))[: args.queries]
    with tempfile.TemporaryDirectory(prefix="adapters-cost-") as tmp:
        server = ServerProcess(Path(tmp) / "data", "--backend", "torch").start()
        try:
            with SearchClient(server.address, timeout=60) as client:
                client.create_collection("bench")
                client.upsert([(f"s{i}", t) for i, t in enumerate(texts)], collection="bench")
                adapter_against_client(client, queries[:20])  # warm-up
                direct, adapter = adapter_against_client(client, queries)
                ratio = adapter / direct
                print(
                    f"search p50: SearchClient {direct:.2f} ms, LangChain similarity_search {adapter:.2f} ms: "
                    f"{ratio:.2f}x {'PASS' if ratio <= 1.1 else 'MISS'} (<= 1.10x)"
                )
                looped = EventLoopClient(server.address)
                looped.rate(queries, 1.0)  # warm-up: the channel's connection and first calls
                threads_rate(client, queries, 1.0)
                ratios, thread_rates, loop_rates = [], [], []
                for round_ in range(args.rounds):  # side by side, the order alternating per round
                    if round_ % 2:
                        loop_rates.append(looped.rate(queries, args.seconds))
                        thread_rates.append(threads_rate(client, queries, args.seconds))
                    else:
                        thread_rates.append(threads_rate(client, queries, args.seconds))
                        loop_rates.append(looped.rate(queries, args.seconds))
                    ratios.append(loop_rates[-1] / thread_rates[-1])
                looped.close()
                threads, loop = statistics.median(thread_rates), statistics.median(loop_rates)
                ratio = statistics.median(ratios)
                print(
                    f"16 concurrent searches: 16 threads {threads:.0f}/s, one event loop {loop:.0f}/s: "
                    f"{ratio:.2f}x {'PASS' if ratio >= 1.0 else 'MISS'} (>= 1.00x; median of {args.rounds} "
                    f"rounds' ratios: {', '.join(f'{r:.2f}' for r in ratios)})"
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
