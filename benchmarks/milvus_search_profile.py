"""Where a Milvus Lite search's time goes, on a collection written the way the Milvus store writes it.

A `milvus-lite server` process; N one-passage documents (random normalised 384-d vectors: what is
measured does not depend on the vectors) written through `MilvusIndexStore.upsert` in batches of 1,000,
as `scale_out.py` loads them (so with the store's flush every FLUSH_ROWS rows); then flushed, the index
waited for, released and loaded, Milvus Lite's background work let settle (`scale_out.seal_and_reload`).
Printed:

- the layout: Milvus Lite's live data files (segments) per partition and their rows, from its manifest;
- the store's dense search (`search_dense`, top 10, with documents, as a Search asks it) p50, sequential,
  first without a profiler, then while py-spy samples the server process;
- the server's time inside its Search handler by function (inclusive share of py-spy's samples).

Usage: python benchmarks/milvus_search_profile.py [--n 30000] [--kind hnsw|flat] [--seconds 20]
(py-spy: `pip install './server[bench]'`; it attaches to a child process, which needs ptrace rights.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile  # noqa: E402
from scale_out import seal_and_reload  # noqa: E402
from semsearch_server.domain import (  # noqa: E402
    CollectionSettings,
    Document,
    IndexKind,
    IndexSpec,
    ModelFingerprint,
    Passage,
)
from semsearch_server.index.base import EmbeddedDocument  # noqa: E402
from semsearch_server.index.milvus_calls import PASSAGES  # noqa: E402
from semsearch_server.index.milvus_provider import MilvusStoreProvider  # noqa: E402

_FRAME = re.compile(r"\s*(.*?) \((.*?):\d+\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layout(data_dir: Path, collection: str) -> dict[str, list[int]]:
    """{partition: [rows of each live data file]} from the collection's manifest."""
    import pyarrow.parquet as pq

    root = next(data_dir.rglob(f"collections/{collection}"))
    manifest = json.loads((root / "manifest.json").read_text())
    return {
        name: sorted(pq.read_metadata(root / "partitions" / name / f).num_rows for f in part["data_files"])
        for name, part in manifest["partitions"].items()
    }


def shares(raw: Path, handler: str = "MilvusServicer.Search") -> tuple[int, Counter]:
    """py-spy raw samples inside ``handler``: (count, inclusive samples per function it called)."""
    total, inclusive = 0, Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        at = next((k for k, f in enumerate(frames) if handler in f), None)
        if at is None:
            continue
        total += int(count)
        seen = set()
        for f in frames[at + 1 :]:  # below the handler
            m = _FRAME.match(f)
            key = f"{m.group(1)} ({m.group(2).split('site-packages/')[-1]})" if m else f.strip()
            if key not in seen:
                seen.add(key)
                inclusive[key] += int(count)
    return total, inclusive


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--kind", choices=("hnsw", "flat"), default="hnsw")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long py-spy samples the searches")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25, help="functions to print")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("py-spy not found: pip install './server[bench]'")
    work = Path(tempfile.mkdtemp(prefix="milvus_profile_"))
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("milvus-lite")), "server", "--data-dir", str(work / "milvus")]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=open(work / "milvus.log", "wb"),  # noqa: SIM115 - the child holds it
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                provider = MilvusStoreProvider(f"http://127.0.0.1:{port}", timeout=60)
                provider.names()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        fingerprint = ModelFingerprint("random", "0" * 64, 384, "mean", True, 256, "none")
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        docs = [
            EmbeddedDocument(
                Document(f"d{i}", f"text {i}", {"part": str(i % 10)}), (Passage(0, 0, 6),), vectors[i : i + 1]
            )
            for i in range(args.n)
        ]
        kind = IndexKind.HNSW if args.kind == "hnsw" else IndexKind.FLAT
        store = provider.create("profile", CollectionSettings(index=IndexSpec(kind=kind)), fingerprint)
        started = time.perf_counter()
        for i in range(0, args.n, 1000):
            store.upsert(docs[i : i + 1000])
        print(f"{args.n} documents ({args.kind}): written at {args.n / (time.perf_counter() - started):,.0f} docs/s")
        reload_s = seal_and_reload(provider._client, store._collection, data_dir=work / "milvus")
        print(f"flush, reload, and Milvus Lite's background compaction and index builds settled: {reload_s:.0f} s")
        for partition, rows in layout(work / "milvus", store._collection).items():
            role = "passages, searched" if partition == PASSAGES else "heads and markers"
            print(f"partition {partition} ({role}): {len(rows)} data files, {sum(rows):,} rows, rows per file {rows}")
        queries = rng.standard_normal((200, 384)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)

        def search(i: int) -> float:
            t0 = time.perf_counter()
            store.search_dense(queries[i % 200 : i % 200 + 1], 10, {}, documents=True)
            return time.perf_counter() - t0

        search(0)
        plain = [search(i) for i in range(200)]
        print(f"search_dense p50 {percentile(plain, 0.5) * 1000:.1f} ms, p99 {percentile(plain, 0.99) * 1000:.1f} ms")
        raw = work / "spy.txt"
        sampler = subprocess.Popen(
            [spy, "record", "--format", "raw", "-r", str(args.rate), "-d", str(int(args.seconds))]
            + ["-o", str(raw), "-p", str(server.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1)
        sampled, i, until = [], 0, time.monotonic() + args.seconds - 2
        while time.monotonic() < until:
            sampled.append(search(i))
            i += 1
        _, err = sampler.communicate()
        if not raw.exists():
            sys.exit(f"py-spy recorded nothing: {err.decode(errors='replace')[-500:]}")
        print(f"under py-spy: {len(sampled)} searches, p50 {percentile(sampled, 0.5) * 1000:.1f} ms")
        total, inclusive = shares(raw)
        print(f"server samples inside the Search handler: {total} ({total / args.rate:.1f} s); inclusive share:")
        for name, count in inclusive.most_common(args.top):
            print(f"  {100 * count / total:5.1f} %  {name}")
        provider.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
