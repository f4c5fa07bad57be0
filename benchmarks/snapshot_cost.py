"""What a snapshot costs on the local store: its time, its file against the data directory, what it does to
Search latency while it runs, and how long a restore takes.

N documents of random unit vectors (no model) go through the store directly (``LocalStoreProvider``, the
code CreateSnapshot and RestoreSnapshot call). Search p99 is measured idle and then while the snapshot is
written, side by side in one run, and reported as a ratio (dense search of random query vectors, top 10,
one thread). The restore includes opening the new collection, which rebuilds its FAISS and BM25 indexes
from the database.

    .venv/bin/python benchmarks/snapshot_cost.py [--n 200000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import percentile  # noqa: E402
from semsearch_server.domain import CollectionSettings, PassageConfig  # noqa: E402
from semsearch_server.index.local_provider import LocalStoreProvider  # noqa: E402
from store_scale import FINGERPRINT, batch_of, unit_vectors  # noqa: E402

BATCH = 2000
IDLE_SEARCHES = 400


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def search_once(store, rng: np.random.Generator) -> float:
    query = unit_vectors(rng, 1)
    started = time.perf_counter()
    store.search_dense(query, 10, None, documents=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="documents in the collection (default 200000)")
    parser.add_argument("--dir", type=Path, default=None, help="data directory (default: a temporary one)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="snapshot-cost-", dir=args.dir))
    rng = np.random.default_rng(7)
    provider = LocalStoreProvider(data_dir)
    settings = CollectionSettings(passages=PassageConfig(enabled=False))
    try:
        store = provider.create("bench", settings, FINGERPRINT)
        started = time.perf_counter()
        for start in range(0, args.n, BATCH):
            store.upsert(batch_of(start, min(BATCH, args.n - start), rng))
        store.snapshot()
        print(f"filled {args.n} documents in {time.perf_counter() - started:.1f}s")
        data_bytes = directory_bytes(data_dir / "collections")

        idle = [search_once(store, rng) for _ in range(IDLE_SEARCHES)]
        during: list[float] = []
        result = {}

        def snapshot() -> None:
            t0 = time.perf_counter()
            result["info"] = provider.create_snapshot(store)
            result["seconds"] = time.perf_counter() - t0

        writer = threading.Thread(target=snapshot)
        writer.start()
        while writer.is_alive():
            during.append(search_once(store, rng))
        writer.join()
        info = result["info"]

        t0 = time.perf_counter()
        restored = provider.restore_snapshot(info.name, "restored", FINGERPRINT)
        restore_seconds = time.perf_counter() - t0
        assert restored.count() == args.n == info.document_count
        restored.close(snapshot=False)

        idle_p99, during_p99 = percentile(idle, 0.99), percentile(during, 0.99)
        print(f"snapshot: {result['seconds']:.2f}s for {info.document_count} documents")
        print(
            f"file: {info.size_bytes / 2**20:.1f} MiB against the collection directory's {data_bytes / 2**20:.1f} "
            f"MiB ({info.size_bytes / data_bytes:.2f}x; the FAISS and BM25 snapshots are not in it)"
        )
        print(
            f"search p99: idle {idle_p99 * 1e3:.2f} ms ({len(idle)} searches), during the snapshot "
            f"{during_p99 * 1e3:.2f} ms ({len(during)} searches): {during_p99 / idle_p99:.2f}x idle"
        )
        print(f"restore (checksum, copy, open and index rebuild): {restore_seconds:.2f}s")
        store.close(snapshot=False)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
