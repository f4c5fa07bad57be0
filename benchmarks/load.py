"""Bounded loopback load test: a real server process, 32 concurrent clients, a fixed time.

Mix: Search ~80%, Upsert ~15% (ids from a bounded pool, so the index stops growing), Explain ~5%
(FAILED_PRECONDITION/UNIMPLEMENTED count as "unavailable", not as errors). Reports throughput, p50/p99 per
RPC, errors, and the server's RSS at a quarter of the run and at the end. PASS: zero errors and RSS growth
<= 10%. Talks only to 127.0.0.1 and stops by itself.

    python benchmarks/load.py --seconds 30
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import grpc
from common import percentile
from semsearch import SearchClient
from semsearch.demo import DEMO_COLLECTION, DEMO_DOCUMENTS
from semsearch.errors import SemsearchError
from semsearch_server.testing import ServerProcess

HOST = "127.0.0.1"
LOAD_COLLECTION = "load"
ID_POOL = 200
QUERIES = ["something to drink", "fish for dinner", "a glass of wine", "red meat", "cold water", "what do I eat"]
WORDS = ["apple", "river", "stone", "cloud", "quiet", "engine", "purple", "market", "winter", "garden", "signal"]
EXPLAIN_UNAVAILABLE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)
MAX_RSS_GROWTH = 0.10


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


class Stats:
    """Latencies and outcomes per RPC, shared by the client threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.unavailable = 0
        self.samples: list[str] = []

    def ok(self, rpc: str, seconds: float) -> None:
        with self._lock:
            self.latencies[rpc].append(seconds)

    def error(self, rpc: str, exc: Exception) -> None:
        with self._lock:
            self.errors[rpc] += 1
            if len(self.samples) < 5:
                self.samples.append(f"{rpc}: {exc}")

    def explain_unavailable(self) -> None:
        with self._lock:
            self.unavailable += 1


def client_loop(client: SearchClient, stats: Stats, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        roll = rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.80:
                rpc = "Search"
                client.search(rng.choice(QUERIES), collection=DEMO_COLLECTION, top_k=3)
            elif roll < 0.95:
                rpc = "Upsert"
                text = " ".join(rng.choices(WORDS, k=8))
                client.upsert([(f"doc-{rng.randrange(ID_POOL)}", text)], collection=LOAD_COLLECTION)
            else:
                rpc = "Explain"
                client.explain(rng.choice(QUERIES), doc_id=rng.choice(DEMO_DOCUMENTS)[0], collection=DEMO_COLLECTION)
        except SemsearchError as exc:
            if rpc == "Explain" and exc.code in EXPLAIN_UNAVAILABLE:
                stats.explain_unavailable()
            else:
                stats.error(rpc, exc)
            continue
        stats.ok(rpc, time.perf_counter() - started)


def server_request_total(metrics_port: int) -> float:
    """Sum of semsearch_grpc_requests_total for SearchService, as the server counted it."""
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'^semsearch_grpc_requests_total\{[^}]*grpc_service="semsearch\.v1\.SearchService"[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def run(seconds: float, clients: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="semsearch-load-") as tmp:
        metrics_port = free_port()
        server = ServerProcess(Path(tmp) / "data", "--seed-demo", "true", "--metrics-port", str(metrics_port))
        try:
            server.start()
            address = server.address
            with SearchClient(address, timeout=60) as admin:
                admin.create_collection(LOAD_COLLECTION)
                before_requests = server_request_total(metrics_port)
            channels = [SearchClient(server.address, timeout=60) for _ in range(clients)]
            stats = Stats()
            started = time.monotonic()
            deadline = started + seconds
            threads = [
                threading.Thread(target=client_loop, args=(c, stats, deadline, i), daemon=True)
                for i, c in enumerate(channels)
            ]
            for t in threads:
                t.start()
            time.sleep(seconds / 4)
            rss_quarter = rss_kib(server.pid)
            for t in threads:
                t.join(timeout=seconds + 120)
            elapsed = time.monotonic() - started
            rss_end = rss_kib(server.pid)
            counted = server_request_total(metrics_port) - before_requests
            for c in channels:
                c.close()
        finally:
            code = server.terminate()
            server.stop()

    total = sum(len(v) for v in stats.latencies.values())
    errors = sum(stats.errors.values())
    print(f"{clients} clients for {elapsed:.1f}s against {address} (server exit code {code})")
    print(f"{'rpc':<8} {'ok':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for rpc in ("Search", "Upsert", "Explain"):
        lat = sorted(stats.latencies.get(rpc, []))
        print(
            f"{rpc:<8} {len(lat):>7} {stats.errors.get(rpc, 0):>6} "
            f"{percentile(lat, 0.50) * 1000:>8.1f} {percentile(lat, 0.99) * 1000:>8.1f}"
        )
    print(f"throughput {total / elapsed:.1f} ok calls/s; errors {errors}; Explain unavailable {stats.unavailable}")
    print(f"server counted {counted:.0f} SearchService calls; clients made {total + errors + stats.unavailable}")
    for sample in stats.samples:
        print(f"  error: {sample}")
    growth = (rss_end - rss_quarter) / rss_quarter if rss_quarter else float("inf")
    print(f"server RSS: {rss_quarter / 1024:.0f} MiB at 1/4, {rss_end / 1024:.0f} MiB at the end ({growth:+.1%})")
    passed = errors == 0 and growth <= MAX_RSS_GROWTH and total > 0
    print(f"{'PASS' if passed else 'MISS'}: target zero errors and RSS growth <= {MAX_RSS_GROWTH:.0%}")
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients run (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    args = parser.parse_args()
    return 0 if run(args.seconds, args.clients) else 1


if __name__ == "__main__":
    sys.exit(main())
