"""Start-up time, memory, Explain and one-client Search latency of a real server process, in one run.

A server (`python -m semsearch_server`, default backends unless --server-args says otherwise) is
started three times on one data directory: cold (empty model cache: exports, agreement check), warm
(everything cached, no documents) and warm again after an UpsertStream of --docs STS sentences.
Each start is timed from the process's launch to health SERVING; its memory is read from
/proc/<pid>/status (VmRSS now, VmHWM the peak since launch). Then, on the last start:

- one client's Search latency, against the in-process `auto` encode of one query in this process
  (`build_embedder(model_path, "auto", cache_dir=...)`, the server's own engine), alternating rounds;
- Explain latency (a query against its top hit, word granularity) without attention, then with it,
  and the server's memory after the first Explain with attention.

Targets (issue "lean serving"): warm restart with the documents <= 3 s; cold first start <= 15 s;
peak RSS <= 700 MB with the default backends (warm starts, ingest, Search, Explain: the first start's
exports load torch and peak higher once; that peak is printed, not judged), <= 900 MB after an Explain
with attention; Explain p50
<= 8 ms (<= 20 ms with attention); one-client Search p50 <= 1.4x the in-process encode, p99 <= 2x
its p50.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA_DIR, percentile, search_latencies, sts_sentences, verdict
from semsearch import Document, SearchClient
from semsearch_server.testing import ServerProcess

WARM_TARGET_S = 3.0
COLD_TARGET_S = 15.0
RSS_TARGET_MB = 700
RSS_ATTENTION_TARGET_MB = 900
EXPLAIN_TARGET_MS = 8.0
EXPLAIN_ATTENTION_TARGET_MS = 20.0
SEARCH_RATIO_TARGET = 1.4
TAIL_RATIO_TARGET = 2.0
BATCH = 64


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB: resident now, and the most it has been since it started."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def timed_start(data_dir: Path, extra: list[str], env: dict) -> tuple[ServerProcess, float]:
    started = time.monotonic()
    server = ServerProcess(data_dir, *extra, env=env).start(timeout=900, wait_engines=False)
    return server, time.monotonic() - started


def phases(log: str) -> str:
    """The server's own start-up phase lines, shortened ("model description 0.16s, ...")."""
    out = []
    for line in log.splitlines():
        if "start-up: " in line:
            out.append(line.split("start-up: ", 1)[1])
    return "; ".join(out)


def stop(server: ServerProcess) -> None:
    try:
        server.terminate(timeout=120)
    finally:
        server.stop()


def ingest(client: SearchClient, texts: list[str], collection: str) -> float:
    client.create_collection(collection)
    docs = [Document(f"s{i}", text) for i, text in enumerate(texts)]
    started = time.perf_counter()
    stored = client.upsert_stream([docs[i : i + BATCH] for i in range(0, len(docs), BATCH)], collection=collection)
    assert stored == len(docs), stored
    return stored / (time.perf_counter() - started)


def encode_latencies(embedder, queries: list[str]) -> list[float]:
    out = []
    for query in queries:
        started = time.perf_counter()
        embedder.encode([query])
        out.append(time.perf_counter() - started)
    return out


# A bare gRPC server in its own process: one generic unary method whose handler computes (a busy loop
# holding the GIL, as Python work does) for the number of microseconds the request names, and echoes
# 2 KB, the size of a Search reply of 10 short hits.
_BARE_SERVER = """
import sys, time
from concurrent import futures
import grpc

def handle(request, context):
    until = time.perf_counter() + int(request) / 1e6
    while time.perf_counter() < until:
        pass
    return b"x" * 2048

server = grpc.server(futures.ThreadPoolExecutor(8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "Bare", {"Work": grpc.unary_unary_rpc_method_handler(handle)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()
"""


def bare_grpc_latencies(handler_seconds: float, calls: int) -> list[float]:
    """Seconds of each call to a bare gRPC server whose handler computes for `handler_seconds`: what the
    transport alone adds around a handler as long as Search's own work (Python's gRPC, loopback, wake-ups)."""
    import grpc

    proc = subprocess.Popen([sys.executable, "-c", _BARE_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            work = channel.unary_unary("/Bare/Work")
            request = str(int(handler_seconds * 1e6)).encode()
            for _ in range(20):
                work(request)
            out = []
            for _ in range(calls):
                started = time.perf_counter()
                work(request)
                out.append(time.perf_counter() - started)
            return out
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def explain_latencies(client: SearchClient, pairs: list[tuple[str, str]], collection: str, attention: bool):
    out = []
    for query, doc_id in pairs:
        started = time.perf_counter()
        result = client.explain(query, doc_id=doc_id, collection=collection, include_attention=attention)
        out.append(time.perf_counter() - started)
        assert abs(result.pair_contributions.sum() - result.score) <= 1e-5
    return out


def ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS Benchmark folder")
    parser.add_argument("--docs", type=int, default=10_000, help="STS sentences stored before the last restart")
    parser.add_argument("--queries", type=int, default=300, help="STS dev queries per Search round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating service/in-process Search rounds")
    parser.add_argument("--explains", type=int, default=200, help="Explain calls per variant")
    parser.add_argument("--server-args", default="", help="extra semsearch-server flags, e.g. '--backend onnx'")
    args = parser.parse_args()

    texts = sts_sentences(args.data_dir, args.docs, files=("sts-train.csv", "sts-test.csv"))
    queries = sts_sentences(args.data_dir, None, files=("sts-dev.csv",))[: args.queries]
    extra = shlex.split(args.server_args)
    results: list[tuple[str, str, bool]] = []

    with tempfile.TemporaryDirectory(prefix="semsearch-footprint-") as tmp:
        data_dir = Path(tmp) / "data"
        cache_dir = Path(tmp) / "cache"
        env = {"SEMSEARCH_CACHE_DIR": str(cache_dir)}
        print(f"{os.cpu_count()} CPUs; {len(texts)} STS sentences stored, {len(queries)} STS dev queries; "
              f"server flags: {args.server_args or '(defaults)'}")  # fmt: skip

        server, cold_s = timed_start(data_dir, extra, env)
        cold_rss, cold_hwm = memory_mb(server.pid)
        print(f"cold start   {cold_s:6.2f} s to SERVING; RSS {cold_rss:.0f} MB (peak {cold_hwm:.0f})")
        print(f"             {phases(server.output())}")
        # A first start serves on torch and builds the fast engines in the background after SERVING, then
        # makes the attention export and releases torch.
        settled = time.monotonic()
        server.wait_first_start(900)
        settled_rss, _ = memory_mb(server.pid)
        switch = re.search(r"first start: (switched to .* after [0-9.]+s|staying on torch[^\n]*)", server.output())
        print(f"             {switch.group(1) if switch else 'no engine switch'}; settled "
              f"{time.monotonic() - settled:.1f} s after SERVING; RSS then {settled_rss:.0f} MB")  # fmt: skip
        stop(server)

        server, warm_s = timed_start(data_dir, extra, env)
        warm_rss, warm_hwm = memory_mb(server.pid)
        print(f"warm start   {warm_s:6.2f} s to SERVING (no documents); RSS {warm_rss:.0f} MB (peak {warm_hwm:.0f})")
        print(f"             {phases(server.output())}")
        with server.client(timeout=1800) as client:
            backend = client.info().backend
            rate = ingest(client, texts, "bench")
        ingest_rss, ingest_hwm = memory_mb(server.pid)
        print(f"ingest       {len(texts)} documents at {rate:.0f} docs/s; RSS after {ingest_rss:.0f} MB, "
              f"peak {ingest_hwm:.0f} MB")  # fmt: skip
        stop(server)

        server, loaded_s = timed_start(data_dir, extra, env)
        try:
            loaded_rss, loaded_hwm = memory_mb(server.pid)
            print(f"warm restart {loaded_s:6.2f} s to SERVING with {len(texts)} documents; RSS {loaded_rss:.0f} MB "
                  f"(peak {loaded_hwm:.0f})")  # fmt: skip
            print(f"             {phases(server.output())}")
            from semsearch_server.embedding.factory import build_embedder
            from semsearch_server.embedding.sentence_transformer import default_model_path

            local = build_embedder(default_model_path(), "auto", cache_dir=cache_dir)
            encode_latencies(local, queries[:50])  # warm-up
            with server.client(timeout=600) as client:
                search_latencies(client, queries[:50], "bench")  # warm-up
                service, in_process = [], []
                log_start = len(server.output())
                for _ in range(args.rounds):
                    service += search_latencies(client, queries, "bench")
                    in_process += encode_latencies(local, queries)
                del local
                # The server's own time per Search (its access log: from the request's arrival in our code to
                # the reply handed back to gRPC), and a bare gRPC server around a handler that long.
                handler = [
                    float(x) / 1000
                    for x in re.findall(r"rpc=\S+/Search .*?duration_ms=([0-9.]+)", server.output()[log_start:])
                ]
                bare = bare_grpc_latencies(percentile(handler, 0.5), len(service))
                pairs = []
                for query in queries[: args.explains]:
                    pairs.append((query, client.search(query, collection="bench", top_k=1)[0].id))
                explain_latencies(client, pairs[:20], "bench", attention=False)  # warm-up
                plain = explain_latencies(client, pairs, "bench", attention=False)
                before_rss, before_hwm = memory_mb(server.pid)
                attention = explain_latencies(client, pairs, "bench", attention=True)
                after_rss, after_hwm = memory_mb(server.pid)
        finally:
            stop(server)

    print(f"backend      {backend}")
    print(f"search       one client p50 {ms(service, 0.5):.2f} ms, p99 {ms(service, 0.99):.2f} ms; in-process "
          f"encode of one query p50 {ms(in_process, 0.5):.2f} ms, p99 {ms(in_process, 0.99):.2f} ms "
          f"({args.rounds} alternating rounds of {len(queries)})")  # fmt: skip
    handler_ms, bare_ms, service_ms = ms(handler, 0.5), ms(bare, 0.5), ms(service, 0.5)
    print(f"transport    the server's Search handler p50 {handler_ms:.2f} ms (access log, {len(handler)} calls); "
          f"a bare gRPC call around a handler that long p50 {bare_ms:.2f} ms (+{bare_ms - handler_ms:.2f}), "
          f"p99 {ms(bare, 0.99):.2f} ms; Search p50 +{service_ms - handler_ms:.2f} ms over its handler")  # fmt: skip
    print(f"explain      p50 {ms(plain, 0.5):.2f} ms, p99 {ms(plain, 0.99):.2f} ms; with attention p50 "
          f"{ms(attention, 0.5):.2f} ms, p99 {ms(attention, 0.99):.2f} ms ({len(pairs)} calls each); RSS "
          f"before attention {before_rss:.0f} MB (peak {before_hwm:.0f}), after {after_rss:.0f} MB "
          f"(peak {after_hwm:.0f})")  # fmt: skip
    print()
    search_ratio = percentile(service, 0.5) / percentile(in_process, 0.5)
    tail_ratio = percentile(service, 0.99) / percentile(service, 0.5)
    # The first start's exports load torch and peak far higher; that peak is printed above, not judged here.
    peak = max(warm_hwm, ingest_hwm, loaded_hwm, before_hwm)
    results = [
        ("warm restart to SERVING with documents", f"{loaded_s:.2f} s <= {WARM_TARGET_S} s", loaded_s <= WARM_TARGET_S),
        ("cold first start to SERVING", f"{cold_s:.2f} s <= {COLD_TARGET_S} s", cold_s <= COLD_TARGET_S),
        (
            "peak RSS (warm starts, ingest, Search, Explain)",
            f"{peak:.0f} MB <= {RSS_TARGET_MB} MB",
            peak <= RSS_TARGET_MB,
        ),
        (
            "peak RSS after Explain with attention",
            f"{after_hwm:.0f} MB <= {RSS_ATTENTION_TARGET_MB} MB",
            after_hwm <= RSS_ATTENTION_TARGET_MB,
        ),
        (
            "Explain p50 (word, no attention)",
            f"{ms(plain, 0.5):.2f} ms <= {EXPLAIN_TARGET_MS} ms",
            ms(plain, 0.5) <= EXPLAIN_TARGET_MS,
        ),
        (
            "Explain p50 with attention",
            f"{ms(attention, 0.5):.2f} ms <= {EXPLAIN_ATTENTION_TARGET_MS} ms",
            ms(attention, 0.5) <= EXPLAIN_ATTENTION_TARGET_MS,
        ),
        (
            "one-client Search p50 / in-process encode p50",
            f"{search_ratio:.2f}x <= {SEARCH_RATIO_TARGET}x",
            search_ratio <= SEARCH_RATIO_TARGET,
        ),
        (
            "one-client Search p99 / its p50",
            f"{tail_ratio:.2f}x <= {TAIL_RATIO_TARGET}x",
            tail_ratio <= TAIL_RATIO_TARGET,
        ),
    ]
    width = max(len(name) for name, _, _ in results)
    for name, figure, passed in results:
        print(f"{name:<{width}}  {figure:<24} {verdict(passed)}")
    # The absolute targets were set on a quiet machine; on a loaded one these ratios say what is ours.
    print()
    print(f"for the machine's load: Explain p50 is {ms(plain, 0.5) / ms(service, 0.5):.2f}x one-client Search p50 "
          f"(the Explain target's 'about 1.5x a search'); the in-process encode's own p99 / p50 is "
          f"{ms(in_process, 0.99) / ms(in_process, 0.5):.2f}x, the service's {tail_ratio:.2f}x; a bare gRPC call "
          f"around a handler as long as Search's is {ms(bare, 0.5) / ms(in_process, 0.5):.2f}x the in-process encode "
          f"p50 (the least the Search ratio can be with this transport)")  # fmt: skip
    return 0 if all(passed for _, _, passed in results) else 1


if __name__ == "__main__":
    sys.exit(main())
