"""Upsert throughput with 10 typed attributes a document against none, as a client sees it, in one run.

A real server process (its default engines, a warm engine cache) and two collections; rounds alternate
which one an Upsert call of --batch STS sentences goes to: one with the 10 attributes of
filtered_search.py (ints, a float, a bool, strings, a list, a timestamp) on every document, one with none.
Each call is timed from the client (the attributes built into the request, the server's validation,
embedding, storage, the durable commit); the medians of docs/s are compared (target: within 10 %).

filtered_search.py measures the same thing on the store alone, with vectors given and 10-byte texts: the
harshest case, where storing the attributes is most of what changes. Here the texts are real sentences and
the server embeds them, as every Upsert does (the API takes no vectors).

    python benchmarks/upsert_attributes.py [--data-dir ../shared/data/stsbenchmark] [--rounds 30] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from common import DEFAULT_DATA_DIR, sts_sentences, verdict
from filtered_search import attributes
from semsearch import Document, SearchClient
from semsearch_server.testing import ServerProcess

TARGET = 0.90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS Benchmark folder")
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds (one call to each collection)")
    parser.add_argument("--batch", type=int, default=64, help="documents per Upsert call")
    args = parser.parse_args()
    if args.rounds < 2 or args.batch < 1:
        parser.error("--rounds must be at least 2 and --batch at least 1")

    texts = sts_sentences(args.data_dir, args.rounds * args.batch)
    if len(texts) < args.rounds * args.batch:
        parser.error(f"{args.data_dir} has {len(texts)} sentences, fewer than --rounds x --batch")
    rng = np.random.default_rng(7)
    load = os.getloadavg()
    print(f"{len(texts)} STS sentences, {args.rounds} rounds of {args.batch}; load average {load[0]:.2f}")
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="semsearch-upsert-attrs-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start(timeout=900)
        try:
            with SearchClient(server.address, timeout=600) as client:
                print(f"service: backend {client.info().backend}")
                for typed in (True, False):
                    client.create_collection(f"typed-{typed}")
                    client.upsert([Document("warm", texts[0])], collection=f"typed-{typed}")  # first-call costs
                for round_no in range(args.rounds):
                    # The same texts go to both collections, so that both embed the same work.
                    chunk = texts[round_no * args.batch : (round_no + 1) * args.batch]
                    for typed in (True, False) if round_no % 2 == 0 else (False, True):
                        # Drawn before the clock starts: a client has its values; making the request is timed.
                        docs = [
                            Document(f"d{round_no}-{i}", text, attributes(rng, i) if typed else {})
                            for i, text in enumerate(chunk)
                        ]
                        started = time.perf_counter()
                        client.upsert(docs, collection=f"typed-{typed}")
                        rates[typed].append(len(docs) / (time.perf_counter() - started))
        finally:
            server.stop()
    with_attrs, without = statistics.median(rates[True]), statistics.median(rates[False])
    ratio = with_attrs / without
    print(f"| Upsert calls of {args.batch} | with 10 attributes | without | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| docs/s (median of {args.rounds}) | {with_attrs:,.0f} | {without:,.0f} | {ratio:.3f}x "
          f"| >= {TARGET:.2f}x {verdict(ratio >= TARGET)} |")  # fmt: skip
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
