"""Does `semsearch index` keep up with the service? Indexer rate vs the raw UpsertStream rate.

Starts a real server process, then alternates, ``--repeats`` times, on N real STS-B train sentences:
  (a) SearchClient.upsert_stream over pre-built batches (the service's own ingest rate), and
  (b) `semsearch index` on the same sentences written as JSONL (a subprocess, start-up included),
each into a fresh collection, and reports medians and the ratio (b)/(a) against the target >= 0.9.
Then sweeps --batch-size over 32/64/128/256 for the indexer: the fastest is the default.

Run from the repository root:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/indexer_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import DEFAULT_DATA_DIR, REPO, sts_sentences, verdict
from semsearch import SearchClient
from semsearch.indexer import DEFAULT_BATCH_SIZE
from semsearch_server.testing import ServerProcess

TARGET = 0.9


def fresh_collection(client: SearchClient) -> str:
    name = "bench-" + uuid.uuid4().hex[:10]
    client.create_collection(name)
    return name


def time_upsert_stream(client: SearchClient, sentences: list[str], batch_size: int) -> float:
    """Documents/s of one UpsertStream call over pre-built batches."""
    docs = [(f"s{n}", text) for n, text in enumerate(sentences)]
    batches = [docs[i : i + batch_size] for i in range(0, len(docs), batch_size)]
    collection = fresh_collection(client)
    started = time.perf_counter()
    stored = client.upsert_stream(batches, collection=collection, timeout=600)
    seconds = time.perf_counter() - started
    client.delete_collection(collection)
    assert stored == len(docs), stored
    return stored / seconds


def time_indexer(client: SearchClient, address: str, path: Path, batch_size: int, expected: int) -> tuple[float, float]:
    """(end-to-end documents/s of a `semsearch index` process, the rate it reports itself)."""
    collection = fresh_collection(client)
    command = [
        sys.executable, "-m", "semsearch.cli", "index", str(path), "--address", address, "-c", collection,
        "--batch-size", str(batch_size), "--checkpoint", str(path.with_suffix(".ckpt")), "--quiet", "--json",
    ]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    seconds = time.perf_counter() - started
    client.delete_collection(collection)
    if run.returncode != 0:
        raise RuntimeError(f"semsearch index failed ({run.returncode}):\n{run.stderr}")
    summary = json.loads(run.stdout)
    assert summary["indexed"] == expected, summary
    return expected / seconds, summary["docs_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="directory of sts-train.csv",
    )
    parser.add_argument("--count", type=int, default=2000, help="sentences per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of (a) and (b)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--sweep", default="32,64,128,256", help="batch sizes to compare ('' to skip)")
    parser.add_argument("--sweep-repeats", type=int, default=2)
    args = parser.parse_args()

    sentences = sts_sentences(args.data_dir, args.count)
    with tempfile.TemporaryDirectory(prefix="semsearch-bench-") as tmp:
        path = Path(tmp) / "sentences.jsonl"
        path.write_text("".join(json.dumps({"id": f"s{n}", "text": t}) + "\n" for n, t in enumerate(sentences)))
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            with SearchClient(server.address, timeout=600) as client:
                # Warm-up: the first thousand documents on a fresh server run slower (allocations, caches).
                time_upsert_stream(client, sentences[:1000], args.batch_size)
                print(f"{len(sentences)} sentences, batch size {args.batch_size}, {os.cpu_count()} CPUs")
                stream, indexer, reported = [], [], []
                for rep in range(args.repeats):
                    stream.append(time_upsert_stream(client, sentences, args.batch_size))
                    end_to_end, own = time_indexer(client, server.address, path, args.batch_size, len(sentences))
                    indexer.append(end_to_end)
                    reported.append(own)
                    print(f"  run {rep + 1}: UpsertStream {stream[-1]:7.1f} docs/s   "
                          f"semsearch index {end_to_end:7.1f} docs/s end to end ({own:.1f} reported)")  # fmt: skip
                ratio = statistics.median(indexer) / statistics.median(stream)
                print(f"median UpsertStream {statistics.median(stream):.1f} docs/s, semsearch index "
                      f"{statistics.median(indexer):.1f} docs/s (process start-up included; "
                      f"{statistics.median(reported):.1f} as it reports itself)")  # fmt: skip
                pairs = statistics.median(b / a for a, b in zip(stream, indexer, strict=True))
                print(f"median of per-run ratios (back-to-back pairs, less sensitive to load drift): {pairs:.3f}")
                print(f"ratio indexer/UpsertStream {ratio:.3f} -> {verdict(ratio >= TARGET)} "
                      f"(target >= {TARGET})")  # fmt: skip

                sizes = [int(s) for s in args.sweep.split(",") if s]
                if sizes:
                    print(f"batch-size sweep (semsearch index, median of {args.sweep_repeats}, end to end):")
                    rates = {size: [] for size in sizes}
                    for _ in range(args.sweep_repeats):  # interleaved, so drift in load hits every size alike
                        for size in sizes:
                            rates[size].append(time_indexer(client, server.address, path, size, len(sentences))[0])
                    best = max(sizes, key=lambda s: statistics.median(rates[s]))
                    for size in sizes:
                        median = statistics.median(rates[size])
                        mark = "  <- fastest" if size == best else ""
                        print(f"  --batch-size {size:>4}: {median:7.1f} docs/s{mark}")
        finally:
            server.terminate()
            server.stop()
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
