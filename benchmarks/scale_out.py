"""Milvus store vs an exact in-process flat baseline, through the store interface (no model, no gRPC).

Starts a `milvus-lite server` on a free port, loads N random normalised 384-d vectors (one passage per
document; random vectors are the hard case for HNSW, real embeddings cluster) into a FLAT and an HNSW
collection, and reports ingest docs/s, search p50/p99 (Strong and Bounded consistency), and HNSW recall@10
against exact numpy search. Usage: python benchmarks/scale_out.py [--n 100000] [--queries 200]

What it cannot show on a 2-core machine: more replicas than cores, or a Milvus cluster's scaling; the
Lite server runs on the same cores as the client.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from semsearch_server.domain import CollectionSettings, Document, IndexKind, IndexSpec, ModelFingerprint, Passage
from semsearch_server.errors import Unavailable
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.milvus_store import MilvusStoreProvider

DIM = 384


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(args.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    fp = ModelFingerprint("random", "0" * 64, DIM, "mean", True, 256, "none")

    data = Path(tempfile.mkdtemp(prefix="scale_out_"))
    port = free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    server = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                provider = MilvusStoreProvider(f"http://127.0.0.1:{port}", prefix=f"b{uuid.uuid4().hex[:6]}_")
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

        exact_ids = []
        t = []
        for q in queries:
            t0 = time.perf_counter()
            s = vectors @ q
            top = np.argpartition(-s, 10)[:10]
            exact_ids.append(set(top[np.argsort(-s[top])].tolist()))
            t.append(time.perf_counter() - t0)
        np_p50, np_p99 = percentiles(t)
        print(f"numpy exact flat, in process: p50 {np_p50:.2f} ms  p99 {np_p99:.2f} ms")

        for kind in (IndexKind.FLAT, IndexKind.HNSW):
            store = provider.create(kind.value, CollectionSettings(index=IndexSpec(kind=kind)), fp)
            t0 = time.perf_counter()
            for i in range(0, args.n, args.batch):
                store.upsert(
                    [
                        EmbeddedDocument(Document(str(j), f"doc {j}"), (Passage(0, 0, 4),), vectors[j : j + 1])
                        for j in range(i, min(args.n, i + args.batch))
                    ]
                )
            ingest = args.n / (time.perf_counter() - t0)
            store.snapshot()  # flush: seal the segments so the index is built
            store.search_dense(queries[:1], 10, {})
            lat, recall = [], []
            for qi, q in enumerate(queries):
                t0 = time.perf_counter()
                hits = store.search_dense(q[None, :], 10, {})[0]
                lat.append(time.perf_counter() - t0)
                recall.append(len({int(h.doc_id) for h in hits} & exact_ids[qi]) / 10)
            p50, p99 = percentiles(lat)
            print(
                f"milvus {kind.value:5s}: ingest {ingest:,.0f} docs/s  search p50 {p50:.2f} ms  p99 {p99:.2f} ms "
                f"({p50 / np_p50:.1f}x numpy)  recall@10 {np.mean(recall):.4f}  count {store.count()}"
            )
        return 0
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    sys.exit(main())
