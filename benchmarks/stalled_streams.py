"""100 stalled UpsertStreams against another client's Search latency and the server's memory.

One real server process holds 2,000 STS train sentences. Each round measures one client's Search
latency (STS dev queries, one at a time) with no streams open, and while a second process holds 100
UpsertStreams open: each sends one message and then stays silent, except 10 that send 4 more documents
every 5 s. Odd rounds measure the loaded side first. The holder then cancels its streams. The server
runs with a long idle timeout (600 s), so no stream is closed for idleness: the worst case for it.

Targets (issue 15): the loaded Search p50 within 1.5x of the unloaded p50 (median of the rounds'
ratios); RSS bounded: the streams cost at most 1 MiB each while open (RSS with them open minus RSS
before the first round), and RSS does not creep from round to round (the last round's loaded RSS
within 5 % of the first's). Also printed: p99, RSS after the streams are cancelled, and whether every
trickled message was stored while its stream stayed open.

    python benchmarks/stalled_streams.py [--streams 100 --trickle 10 --rounds 7]
"""

from __future__ import annotations

import argparse
import json
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from common import DEFAULT_DATA_DIR, percentile, search_latencies, sts_sentences, verdict
from load import rss_kib
from semsearch import Document, SearchClient
from semsearch.v1 import search_service_pb2 as pb
from semsearch.v1 import search_service_pb2_grpc as pb_grpc
from semsearch_server.testing import ServerProcess

COLLECTION = "stalled"
MAX_P50_RATIO = 1.5
MAX_MIB_PER_STREAM = 1.0
MAX_RSS_CREEP = 0.05
_DONE = object()


# -- the holder: a separate process that opens the streams and keeps them open until its stdin closes ----
def hold(address: str, streams: int, trickle: int, trickle_seconds: float, tag: str) -> None:
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.SearchServiceStub(channel)
    outboxes = [queue.Queue() for _ in range(streams)]
    calls = [stub.UpsertStream.future(iter(box.get, _DONE), timeout=3600) for box in outboxes]
    sent: dict[int, list[str]] = {k: [] for k in range(streams)}

    def send(k: int, ids: list[str]) -> None:
        docs = [pb.Document(id=i, text=f"stream {k} keeps sending now and then, message {i}") for i in ids]
        outboxes[k].put(pb.UpsertRequest(collection=COLLECTION, documents=docs))
        sent[k] += ids

    started = time.monotonic()
    for k in range(streams):
        send(k, [f"{tag}-{k}-first"])
    # Every first message stored while its stream stays open: each stream is being served.
    with SearchClient(address, timeout=30) as client:
        firsts = [f"{tag}-{k}-first" for k in range(streams)]
        while len(client.get(firsts, collection=COLLECTION)) < streams:
            refused = [c for c in calls if c.done()]
            if refused:
                sys.exit(f"{len(refused)} streams ended early: {refused[0].exception()}")
            time.sleep(0.1)
    print(json.dumps({"ready_seconds": round(time.monotonic() - started, 2)}), flush=True)

    stop = threading.Event()

    def trickler() -> None:
        n = 0
        while not stop.wait(trickle_seconds / max(trickle, 1)):
            k = n % trickle
            send(k, [f"{tag}-{k}-t{n}-{j}" for j in range(4)])
            n += 1

    thread = threading.Thread(target=trickler, daemon=True)
    if trickle:
        thread.start()
    sys.stdin.read()  # the parent closes stdin when the round is over
    stop.set()
    if trickle:
        thread.join()
    trickled = [i for k in range(trickle) for i in sent[k][1:]]
    time.sleep(2.0)  # the last trickled messages: paused streams store them within a moment
    with SearchClient(address, timeout=30) as client:
        stored = sum(
            len(client.get(trickled[i : i + 1000], collection=COLLECTION)) for i in range(0, len(trickled), 1000)
        )
    for call in calls:
        call.cancel()
    channel.close()
    print(json.dumps({"trickled": len(trickled), "trickled_stored": stored}), flush=True)


# -- the measuring side ---------------------------------------------------------------------------------
def mib(kib: int) -> float:
    return kib / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS Benchmark folder")
    parser.add_argument("--count", type=int, default=2000, help="sentences in the collection")
    parser.add_argument("--queries", type=int, default=150, help="Search calls per measurement")
    parser.add_argument("--rounds", type=int, default=7, help="unloaded/loaded rounds (medians)")
    parser.add_argument("--streams", type=int, default=100, help="UpsertStreams held open")
    parser.add_argument("--trickle", type=int, default=10, help="of them, streams that keep sending")
    parser.add_argument("--trickle-seconds", type=float, default=5.0, help="each trickling stream's period")
    parser.add_argument("--server-args", default="", help="extra semsearch-server flags")
    parser.add_argument("--hold", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="hold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold(args.hold, args.streams, args.trickle, args.trickle_seconds, args.tag)
        return 0

    texts = sts_sentences(args.data_dir, args.count)
    queries = sts_sentences(args.data_dir, args.queries, files=("sts-dev.csv",))
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp) / "data", "--stream-idle-seconds", "600", *shlex.split(args.server_args)
        ).start()
        try:
            return run(args, server, texts, queries)
        finally:
            server.stop()


def run(args: argparse.Namespace, server: ServerProcess, texts: list[str], queries: list[str]) -> int:
    with server.client(timeout=600) as client:
        client.create_collection(COLLECTION)
        docs = [Document(f"s{i}", t) for i, t in enumerate(texts)]
        client.upsert_stream([docs[i : i + 64] for i in range(0, len(docs), 64)], collection=COLLECTION)
        search_latencies(client, queries[:50], COLLECTION)  # warm-up
        rss_before = rss_kib(server.pid)
        rounds = []
        for r in range(args.rounds):
            # Odd rounds measure the loaded side first, so that neither side always comes first.
            unloaded = [] if r % 2 else search_latencies(client, queries, COLLECTION)
            loaded, row = with_streams_open(args, server, client, queries, r)
            unloaded = unloaded or search_latencies(client, queries, COLLECTION)
            row |= {
                "unloaded_p50": percentile(unloaded, 0.5) * 1e3,
                "unloaded_p99": percentile(unloaded, 0.99) * 1e3,
                "loaded_p50": percentile(loaded, 0.5) * 1e3,
                "loaded_p99": percentile(loaded, 0.99) * 1e3,
            }
            rounds.append(row)
            print(
                f"round {r}: Search p50 {row['unloaded_p50']:.1f} -> {row['loaded_p50']:.1f} ms "
                f"({row['loaded_p50'] / row['unloaded_p50']:.2f}x), p99 {row['unloaded_p99']:.1f} -> "
                f"{row['loaded_p99']:.1f} ms; {args.streams} streams open in {row['ready_seconds']:.1f} s; RSS "
                f"{mib(rss_before):.0f} before, {mib(row['rss_open']):.0f} open, {mib(row['rss_loaded']):.0f} "
                f"loaded, {mib(row['rss_after']):.0f} after MiB; trickled messages stored "
                f"{row['trickled_stored']}/{row['trickled']}",
                flush=True,
            )
    report(args, rss_before, rounds)
    return 0


def with_streams_open(
    args: argparse.Namespace, server: ServerProcess, client: SearchClient, queries: list[str], r: int
) -> tuple[list[float], dict]:
    """Search latencies while the holder process keeps the streams open, and the server's RSS around them."""
    holder = subprocess.Popen(
        [sys.executable, __file__, "--hold", server.address, "--streams", str(args.streams),
         "--trickle", str(args.trickle), "--trickle-seconds", str(args.trickle_seconds), "--tag", f"r{r}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    ready = json.loads(holder.stdout.readline() or '{"error": "the holder exited"}')
    if "ready_seconds" not in ready:
        holder.kill()
        sys.exit(f"round {r}: the streams did not open: {ready}")
    rss_open = rss_kib(server.pid)
    loaded = search_latencies(client, queries, COLLECTION)
    rss_loaded = rss_kib(server.pid)
    holder.stdin.close()
    summary = json.loads(holder.stdout.readline())
    holder.wait(60)
    time.sleep(2.0)
    return loaded, {
        "rss_open": rss_open,
        "rss_loaded": rss_loaded,
        "rss_after": rss_kib(server.pid),
        **ready,
        **summary,
    }


def report(args: argparse.Namespace, rss_before: int, rounds: list[dict]) -> None:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    p50_ratio = statistics.median(r["loaded_p50"] / r["unloaded_p50"] for r in rounds)
    p99_ratio = statistics.median(r["loaded_p99"] / r["unloaded_p99"] for r in rounds)
    per_stream = mib(max(r["rss_loaded"] for r in rounds) - rss_before) / args.streams
    creep = rounds[-1]["rss_loaded"] / rounds[0]["rss_loaded"] - 1
    all_trickled = all(r["trickled_stored"] == r["trickled"] for r in rounds)
    print(
        f"\n{args.rounds} rounds, {args.streams} streams open ({args.trickle} sending 4 documents every "
        f"{args.trickle_seconds:g} s), one client searching {args.queries} STS dev queries (medians of rounds):"
    )
    print(f"| measure | no streams | {args.streams} stalled streams | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| Search p50 | {med('unloaded_p50'):.1f} ms | {med('loaded_p50'):.1f} ms | {p50_ratio:.2f}x |")
    print(f"| Search p99 | {med('unloaded_p99'):.1f} ms | {med('loaded_p99'):.1f} ms | {p99_ratio:.2f}x |")
    print(
        f"| server RSS | {mib(rss_before):.0f} MiB | {mib(med('rss_loaded')):.0f} MiB "
        f"(after cancel: {mib(med('rss_after')):.0f}) | +{per_stream * 1024:.0f} KiB per stream |"
    )
    print(f"trickled messages stored while their streams stayed open: {'all' if all_trickled else 'NOT ALL'}")
    print(f"Search p50 within {MAX_P50_RATIO}x of unloaded: {p50_ratio:.2f}x {verdict(p50_ratio <= MAX_P50_RATIO)}")
    bounded = per_stream <= MAX_MIB_PER_STREAM and creep <= MAX_RSS_CREEP
    print(
        f"RSS bounded (<= {MAX_MIB_PER_STREAM:g} MiB per open stream, <= {MAX_RSS_CREEP:.0%} creep from the first "
        f"round to the last): {per_stream * 1024:.0f} KiB per stream, {creep:+.1%} {verdict(bounded)}"
    )


if __name__ == "__main__":
    sys.exit(main())
