"""Ingest THROUGH UPSERTS into one collection up to 1M documents: does the store's write path stay flat?

What is measured is the store, not the model: ``FaissIndexStore.upsert`` (SQLite transaction with
synchronous=FULL, FAISS add, BM25 add, passage map, snapshots by the proportional policy) fed with
precomputed synthetic vectors, random unit vectors of d=384 (the default model's), one passage per document,
short texts of a few random words. Nothing is embedded.

For each index kind one collection is filled, --batch documents per upsert, and the script prints:

  * docs/s per stretch: the first 10k documents, then every 100k (wall time of the upsert calls,
    snapshots included, and the same without the time spent writing snapshots): the shape of the fill;
  * side by side, at every 500k and at the end: --rounds upserts into the big collection alternating with
    --rounds into a new collection of 10k documents (same kind), docs/s of the median batch of each,
    snapshot time excluded; measured in the same minutes, so the machine's load hits both alike. Each
    batch is split into its vector index's add (timed inside the upsert: the graph insertion for HNSW,
    the assignment to lists for a trained IVF) and the rest of the store's write path, medians in ms
    per batch and their ratios: what grows with the collection, FAISS's part or ours;
  * snapshots: how many, their time and the bytes written (index.faiss + lexical.bin of each snapshot),
    against the final size of those two files;
  * Search latency (``search_dense`` of one query, top 10, no filter, from another thread, one query after
    the other) for --search-seconds without any rebuild, then during a rebuild beside the live index:
    HNSW: the compaction that deleting 26 % of the documents (one Delete) starts; IVF and flat: a rebuild
    beside started by hand (the code path of HNSW compaction and IVF training; IVF retrains its lists at
    the full size). Writes are not running during either measurement;
  * with --phases snapshot: Search latency while a regular snapshot is written, the old way (under the
    write lock) and the store's (from a copy, files written without the lock), side by side, and an
    upsert's latency during each; with --phases reindex: Search latency during a Reindex of the whole
    collection (precomputed vectors in place of a model) with one upsert a second meanwhile.

Targets (PASS/MISS):
  * ingest at 1M within 10 % of ingest at 10k: side by side at the end, big / 10k >= 0.9 (the write path's
    cost must not grow with the collection; the snapshots' share is the next target). For IVF the 10k
    collection is not trained yet (exact search, flat adds), so its ratio also holds the IVF assignment;
  * snapshot bytes written during the whole ingest <= 3 x the final index.faiss + lexical.bin;
  * Search during a rebuild: p99 during the rebuild <= 2 x p50 without one.

The machine these numbers come from has 2 cores and is shared: run the kinds one at a time if you can.

Run from the repository root:
    .venv/bin/python benchmarks/store_scale.py [--kinds flat,ivf,hnsw] [--size 1000000] [--hnsw-size 300000]
        [--phases snapshot,reindex,rebuild]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

# As the server does (semsearch_server.__main__): idle OpenMP threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from semsearch_server.domain import (  # noqa: E402
    CollectionSettings,
    Document,
    IndexKind,
    IndexSpec,
    ModelFingerprint,
    Passage,
    PassageConfig,
)
from semsearch_server.index.base import EmbeddedDocument  # noqa: E402
from semsearch_server.index.faiss_store import FaissIndexStore  # noqa: E402
from semsearch_server.index.local_manifest import LEXICAL_SNAPSHOT, SNAPSHOT  # noqa: E402
from semsearch_server.index.vector_index import VectorIndex  # noqa: E402

DIM = 384
FIRST = 10_000
STRETCH = 100_000
K = 10
FINGERPRINT = ModelFingerprint("synthetic", "0" * 64, DIM, "mean", True, 256, "synthetic")
WORDS = (
    "wine fish rain trains river stone bread music light paper glass winter garden market field horse cloud "
    "engine letter window silver copper forest harbour tower bridge lamp clock salt honey ocean valley"
).split()
SPECS = {
    IndexKind.FLAT: IndexSpec(kind=IndexKind.FLAT),
    # M 16 / efConstruction 40 (as write_path.py) so that the fill fits the time a 2-core machine gives;
    # the write path's behaviour with size, not the graph's quality, is what is measured.
    IndexKind.HNSW: IndexSpec(kind=IndexKind.HNSW, hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=64),
    # nlist 1,024 (trains at 40k documents), nprobe 16; the automatic nlist (4 sqrt(n) when it trains) would
    # make a retraining at 1M a k-means of 4,000 lists, too long for this machine.
    IndexKind.IVF: IndexSpec(kind=IndexKind.IVF, ivf_nlist=1024, ivf_nprobe=16),
}
TARGET_INGEST = 0.9
TARGET_SNAPSHOT_BYTES = 3.0
TARGET_SEARCH = 2.0


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def batch_of(start: int, n: int, rng: np.random.Generator) -> list[EmbeddedDocument]:
    vectors = unit_vectors(rng, n)
    words = rng.integers(0, len(WORDS), size=(n, 6))
    docs = []
    for j in range(n):
        text = f"document {start + j} " + " ".join(WORDS[w] for w in words[j])
        docs.append(EmbeddedDocument(Document(f"d{start + j}", text), (Passage(0, 0, len(text)),), vectors[j : j + 1]))
    return docs


class SnapshotMeter:
    """Wraps the store's snapshot writer: count, seconds and bytes of each snapshot."""

    def __init__(self, store: FaissIndexStore) -> None:
        self.store = store
        self.count = 0
        self.seconds = 0.0
        self.bytes = 0
        self.enabled = True
        real = store._write_snapshot

        def metered(*args, **kwargs) -> None:
            started = time.perf_counter()
            real(*args, **kwargs)
            if self.enabled:
                self.seconds += time.perf_counter() - started
                self.count += 1
                self.bytes += self.files_size()

        store._write_snapshot = metered

    def files_size(self) -> int:
        return sum((self.store.directory / name).stat().st_size for name in (SNAPSHOT, LEXICAL_SNAPSHOT))


class Collection:
    """A store being filled, with its snapshot meter and the next document number."""

    def __init__(self, directory: Path, kind: IndexKind) -> None:
        settings = CollectionSettings(index=SPECS[kind], passages=PassageConfig(False))
        self.store = FaissIndexStore.create(directory, directory.name, settings, FINGERPRINT)
        self.meter = SnapshotMeter(self.store)
        self.done = 0

    def upsert(self, n: int, rng: np.random.Generator) -> tuple[float, float]:
        """Upserts n new documents; returns (seconds, seconds of it spent writing snapshots)."""
        docs = batch_of(self.done, n, rng)
        snap_before = self.meter.seconds
        started = time.perf_counter()
        self.store.upsert(docs)
        spent = time.perf_counter() - started
        self.done += n
        return spent, self.meter.seconds - snap_before

    def fill(self, n: int, batch: int, rng: np.random.Generator) -> None:
        while n > 0:
            self.upsert(min(batch, n), rng)
            n -= min(batch, n)

    def close(self) -> None:
        self.store.close(snapshot=False)
        shutil.rmtree(self.store.directory, ignore_errors=True)


class IndexAddMeter:
    """Times ``VectorIndex.add`` called from this thread (the store's upserts; a rebuild beside runs in its
    own thread and is not counted), while active: the vector index's share of each upsert."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._thread = threading.get_ident()
        self._real = VectorIndex.add

    def __enter__(self) -> IndexAddMeter:
        meter, real = self, self._real

        def metered(index, *args, **kwargs):
            if threading.get_ident() != meter._thread:
                return real(index, *args, **kwargs)
            started = time.perf_counter()
            try:
                return real(index, *args, **kwargs)
            finally:
                meter.seconds += time.perf_counter() - started

        VectorIndex.add = metered
        return self

    def __exit__(self, *exc) -> None:
        VectorIndex.add = self._real


def side_by_side(big: Collection, kind: IndexKind, root: Path, batch: int, rounds: int, rng) -> dict[str, float]:
    """Upserts into the big collection alternating with upserts into a new one of FIRST documents, `rounds`
    batches each, snapshot time excluded; medians of each side, in seconds per batch: "big"/"small" the
    whole upsert, "index_big"/"index_small" its vector index's add (the graph insertion for HNSW, the
    assignment to lists for a trained IVF), "rest_big"/"rest_small" the rest of the store's write path
    (SQLite, BM25, passage map, bookkeeping), each taken from the same batches.

    The index's share is timed inside the upserts, in the same minutes as the store's: timed afterwards on
    copies of the two indexes, it moved with the shared machine's load of another moment (HNSW at 200k:
    0.79x once, 0.64x in the next run, against 0.53x and 0.49x for the store) and a copy's first adds
    reallocate what the clone allocated to the byte (a copy of a 200k IVF index: 239 ms for its first
    batch, 18 ms on the live index)."""
    small = Collection(root / f"{kind.value}-small", kind)
    try:
        small.fill(FIRST, batch, rng)
        times: dict[str, list[float]] = {key: [] for key in ("big", "small", "index_big", "index_small")}
        with IndexAddMeter() as meter:
            for _ in range(rounds):
                for side, collection in (("big", big), ("small", small)):
                    index_before = meter.seconds
                    spent, snap = collection.upsert(batch, rng)
                    times[side].append(spent - snap)
                    times[f"index_{side}"].append(meter.seconds - index_before)
    finally:
        small.close()
    out = {key: statistics.median(values) for key, values in times.items()}
    for side in ("big", "small"):
        out[f"rest_{side}"] = statistics.median(
            whole - index for whole, index in zip(times[side], times[f"index_{side}"], strict=True)
        )
    return out


def ingest(big: Collection, kind: IndexKind, size: int, root: Path, batch: int, rounds: int, rng) -> list[dict]:
    """Fills the collection to `size`, printing a row per stretch; at the end of each stretch the big
    collection's upserts are timed side by side with a collection of FIRST documents'."""
    print(
        f"{'documents':>19} | {'docs/s':>7} {'w/o snap':>8} | {'snapshots':>9} {'snap s':>7} {'snap MB':>8} | "
        f"side by side: {'big':>6} {'10k':>6} {'ratio':>5} | {'index ms':>8} {'big':>5} {'10k':>5} {'ratio':>5} | "
        f"{'rest ms':>8} {'big':>5} {'10k':>5} {'ratio':>5}",
        flush=True,
    )
    rows = []
    boundaries = [FIRST, *range(STRETCH, size + 1, STRETCH)]
    if boundaries[-1] != size:
        boundaries.append(size)
    meter = big.meter
    for stop in boundaries:
        begin, spent = big.done, 0.0
        snap_count, snap_s, snap_bytes = meter.count, meter.seconds, meter.bytes
        while big.done < stop - (rounds * batch if stop == boundaries[-1] else 0):
            spent += big.upsert(min(batch, stop - big.done), rng)[0]
        snap_spent = meter.seconds - snap_s
        row = {
            "range": (begin, big.done),
            "rate": (big.done - begin) / spent,
            "rate_no_snap": (big.done - begin) / max(spent - snap_spent, 1e-9),
        }
        if stop != FIRST and (stop == boundaries[-1] or stop % (5 * STRETCH) == 0):
            row["side"] = side = side_by_side(big, kind, root, batch, rounds, rng)
            row["big"], row["small"] = batch / side["big"], batch / side["small"]
        rows.append(row)
        pair = ""
        if "side" in row:
            pair = f"{row['big']:>6.0f} {row['small']:>6.0f} {row['big'] / row['small']:>5.2f}"
            for part in ("index", "rest"):
                b, s = side[f"{part}_big"], side[f"{part}_small"]
                pair += f" | {'':>8} {b * 1e3:>5.0f} {s * 1e3:>5.0f} {s / max(b, 1e-9):>5.2f}"
        print(
            f"{begin:>9,}-{row['range'][1]:>9,} | {row['rate']:>7.0f} {row['rate_no_snap']:>8.0f} | "
            f"{meter.count - snap_count:>9} {snap_spent:>7.1f} {(meter.bytes - snap_bytes) / 1e6:>8.0f} | "
            f"{'':>14}{pair}",
            flush=True,
        )
    return rows


def search_latencies(store: FaissIndexStore, queries: np.ndarray, while_: threading.Event | None, seconds: float):
    """ms of search_dense calls, one after the other from a thread of their own, for `seconds` or, given an
    event, until it is set."""
    out: list[float] = []

    def run() -> None:
        deadline = time.monotonic() + seconds
        i = 0
        while (while_ is None and time.monotonic() < deadline) or (while_ is not None and not while_.is_set()):
            started = time.perf_counter()
            store.search_dense(queries[i % len(queries)][None, :], K, {})
            out.append((time.perf_counter() - started) * 1000)
            i += 1

    thread = threading.Thread(target=run, name="searcher")
    thread.start()
    return thread, out


def rebuild_phase(kind: IndexKind, store: FaissIndexStore, size: int, rng: np.random.Generator, seconds: float):
    queries = unit_vectors(rng, 200)
    thread, baseline = search_latencies(store, queries, None, seconds)
    thread.join()
    finished = threading.Event()
    started = time.perf_counter()
    if kind is IndexKind.HNSW:
        # Deletes of 26 % of the documents: the delete crossing 25 % dead starts the compaction.
        victims = [f"d{i}" for i in rng.choice(size, size=int(0.26 * size), replace=False).tolist()]
        store.delete(victims)
        what = f"compaction after deleting {len(victims):,} documents"
    else:
        with store._lock.write():
            store._start_rebuild_beside()
        what = "rebuild beside (IVF retrained)" if kind is IndexKind.IVF else "rebuild beside"
    rebuild = store._rebuild_thread
    assert rebuild is not None and rebuild.is_alive(), "no rebuild started"
    thread, during = search_latencies(store, queries, finished, 0)
    rebuild.join()
    rebuild_s = time.perf_counter() - started
    finished.set()
    thread.join()
    p50 = statistics.median(baseline)
    p99_base = float(np.percentile(baseline, 99))
    p50_during = statistics.median(during) if during else float("nan")
    p99_during = float(np.percentile(during, 99)) if during else float("nan")
    worst = max(during) if during else float("nan")
    print(
        f"search without rebuild: {len(baseline)} queries, p50 {p50:.2f} ms, p99 {p99_base:.2f} ms\n"
        f"search during {what} ({rebuild_s:.1f} s): {len(during)} queries, p50 {p50_during:.2f} ms, "
        f"p99 {p99_during:.2f} ms, max {worst:.2f} ms",
        flush=True,
    )
    return {"p50": p50, "p99_base": p99_base, "p50_during": p50_during, "p99_during": p99_during, "what": what}


def snapshot_phase(big: Collection, rng: np.random.Generator, seconds: float, batch: int) -> dict:
    """Search latency while a regular snapshot is written, side by side: the way the store did it before
    (the whole write under the collection's write lock, the path close() still takes) and the way it does
    now (a copy while writers wait and searches go on, the files written without the lock). Then each is
    repeated with one upsert of `batch` documents sent from a third thread 0.5 s in; its latency is printed."""
    store = big.store
    queries = unit_vectors(rng, 200)
    thread, baseline = search_latencies(store, queries, None, seconds)
    thread.join()
    copies = []
    for _ in range(3):
        started = time.perf_counter()
        copy = store._index.copy()
        copies.append(time.perf_counter() - started)
        del copy
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def under_write_lock() -> None:
        with store._snapshot_files, store._lock.write():
            store._write_snapshot(locked=True)

    out = {"p50": statistics.median(baseline), "p99_base": float(np.percentile(baseline, 99))}
    print(
        f"search without snapshot: {len(baseline)} queries, p50 {out['p50']:.2f} ms, p99 {out['p99_base']:.2f} ms; "
        f"VectorIndex.copy() of {store._index.ntotal:,} vectors: median {statistics.median(copies):.2f} s of 3",
        flush=True,
    )
    for label, write in (("under the write lock (before)", under_write_lock), ("from a copy (now)", store.snapshot)):
        # First searches alone (the target), then again with one upsert sent 0.5 s in (its latency: does a
        # write wait for the whole snapshot?), so that the write's own lock time is not counted as the
        # snapshot's.
        finished = threading.Event()
        thread, during = search_latencies(store, queries, finished, 0)
        started = time.perf_counter()
        write()
        took = time.perf_counter() - started
        finished.set()
        thread.join()
        docs = batch_of(big.done, batch, rng)
        big.done += batch
        upsert_ms: list[float] = []

        def one_upsert(docs=docs, upsert_ms=upsert_ms) -> None:
            time.sleep(0.5)
            started = time.perf_counter()
            store.upsert(docs)
            upsert_ms.append((time.perf_counter() - started) * 1000)

        writer = threading.Thread(target=one_upsert)
        writer.start()
        write()
        writer.join()
        p50, p99 = statistics.median(during), float(np.percentile(during, 99))
        out[label] = {"p50": p50, "p99": p99, "max": max(during), "seconds": took, "upsert_ms": upsert_ms[0]}
        print(
            f"search during a snapshot {label} ({took:.1f} s): {len(during)} queries, p50 {p50:.2f} ms, "
            f"p99 {p99:.2f} ms, max {max(during):.2f} ms; in another snapshot, an upsert of {batch} sent 0.5 s "
            f"in took {upsert_ms[0]:.0f} ms",
            flush=True,
        )
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_before:.0f} MB before the snapshots, {peak_after:.0f} MB after", flush=True)
    return out


def reindex_phase(big: Collection, rng: np.random.Generator, batch: int, baseline_p50: float | None) -> dict:
    """Search latency during a Reindex of the whole collection (``replace_all_vectors`` with precomputed
    random vectors in place of a model: the store's part of a Reindex), with one upsert of `batch` documents
    sent every second meanwhile (their worst latency: writes wait for the database rewrite)."""
    store = big.store
    queries = unit_vectors(rng, 200)
    if baseline_p50 is None:
        thread, baseline = search_latencies(store, queries, None, 10)
        thread.join()
        baseline_p50 = statistics.median(baseline)

    def embed(docs: list[Document]) -> list[EmbeddedDocument]:
        vectors = unit_vectors(rng, len(docs))
        return [EmbeddedDocument(d, (Passage(0, 0, len(d.text)),), vectors[i : i + 1]) for i, d in enumerate(docs)]

    finished = threading.Event()
    upserts: list[float] = []

    def writes() -> None:
        while not finished.wait(1.0):
            docs = batch_of(big.done, batch, rng)
            big.done += batch
            started = time.perf_counter()
            store.upsert(docs)
            upserts.append((time.perf_counter() - started) * 1000)

    thread, during = search_latencies(store, queries, finished, 0)
    writer = threading.Thread(target=writes)
    writer.start()
    started = time.perf_counter()
    count = store.replace_all_vectors(FINGERPRINT, embed)
    took = time.perf_counter() - started
    finished.set()
    thread.join()
    writer.join()
    p50, p99 = statistics.median(during), float(np.percentile(during, 99))
    print(
        f"search during a Reindex of {count:,} documents ({took:.1f} s): {len(during)} queries, p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms, max {max(during):.2f} ms (p50 without: {baseline_p50:.2f} ms); {len(upserts)} upserts "
        f"of {batch} meanwhile, median {statistics.median(upserts) if upserts else float('nan'):.0f} ms, "
        f"max {max(upserts) if upserts else float('nan'):.0f} ms",
        flush=True,
    )
    return {"p50": baseline_p50, "p99_during": p99, "max": max(during)}


def run_kind(
    kind: IndexKind,
    size: int,
    batch: int,
    root: Path,
    seed: int,
    search_seconds: float,
    rounds: int,
    phases: set[str] = frozenset({"snapshot", "rebuild"}),
):
    rng = np.random.default_rng(seed)
    big = Collection(root / kind.value, kind)
    meter, store = big.meter, big.store
    meter.count = meter.seconds = meter.bytes = 0  # create's empty snapshot is not part of the ingest
    print(f"\n== {kind.value} ({store._index.describe()}), {size:,} documents, {batch} per upsert", flush=True)
    started = time.perf_counter()
    rows = ingest(big, kind, size, root, batch, rounds, rng)
    total_s = time.perf_counter() - started
    # The final size of the snapshot files: one more snapshot, not counted.
    meter.enabled = False
    store.snapshot()
    final_bytes = meter.files_size()
    print(
        f"ingest {big.done:,} in {total_s:.0f} s ({big.done / total_s:.0f} docs/s, side-by-side rounds and the "
        f"10k collections' fills included); index {store._index.describe()}, trained {store._index.trained}; "
        f"{meter.count} snapshots, {meter.seconds:.1f} s, {meter.bytes / 1e9:.2f} GB written; "
        f"final index.faiss + lexical.bin {final_bytes / 1e9:.2f} GB",
        flush=True,
    )
    meter.enabled = False
    snap = snapshot_phase(big, rng, search_seconds, batch) if "snapshot" in phases else None
    reindex = reindex_phase(big, rng, batch, snap["p50"] if snap else None) if "reindex" in phases else None
    search = rebuild_phase(kind, store, big.done, rng, search_seconds) if "rebuild" in phases else None
    big.close()
    last = rows[-1]
    ratio = last["big"] / last["small"]
    side = last["side"]
    written = meter.bytes / final_bytes

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    lines = []
    if snap is not None:
        for label in ("under the write lock (before)", "from a copy (now)"):
            r = snap[label]["p99"] / snap["p50"]
            lines.append(
                f"{kind.value:<5} search p99 during a snapshot {label} / p50 without: {snap[label]['p99']:.2f} / "
                f"{snap['p50']:.2f} ms = {r:.2f} <= {TARGET_SEARCH}  {verdict(r <= TARGET_SEARCH)}"
            )
    if reindex is not None:
        r = reindex["p99_during"] / reindex["p50"]
        lines.append(
            f"{kind.value:<5} search p99 during a Reindex / p50 without: {reindex['p99_during']:.2f} / "
            f"{reindex['p50']:.2f} ms = {r:.2f} <= {TARGET_SEARCH}  {verdict(r <= TARGET_SEARCH)}"
        )
    if search is not None:
        search_ratio = search["p99_during"] / search["p50"]
        lines.append(
            f"{kind.value:<5} search p99 during {search['what']} / p50 without: {search['p99_during']:.2f} / "
            f"{search['p50']:.2f} ms = {search_ratio:.2f} <= {TARGET_SEARCH}  {verdict(search_ratio <= TARGET_SEARCH)}"
        )
    return [
        f"{kind.value:<5} upserts into {big.done:,} vs into {FIRST // 1000}k docs, side by side (median of {rounds} "
        f"batches each, w/o snapshots): {last['big']:.0f} / {last['small']:.0f} docs/s = {ratio:.2f} >= "
        f"{TARGET_INGEST}  {verdict(ratio >= TARGET_INGEST)}",
        f"{kind.value:<5}   of which, per batch (medians, the same batches): the vector index's add "
        f"{side['index_big'] * 1e3:.0f} / {side['index_small'] * 1e3:.0f} ms = "
        f"{side['index_small'] / max(side['index_big'], 1e-9):.2f}x; the rest of the store's write path "
        f"{side['rest_big'] * 1e3:.0f} / {side['rest_small'] * 1e3:.0f} ms = "
        f"{side['rest_small'] / max(side['rest_big'], 1e-9):.2f}x",
        f"{kind.value:<5} snapshot bytes written / final size: {meter.bytes / 1e9:.2f} / {final_bytes / 1e9:.2f} GB "
        f"= {written:.2f} <= {TARGET_SNAPSHOT_BYTES}  {verdict(written <= TARGET_SNAPSHOT_BYTES)}",
        *lines,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="flat,ivf,hnsw")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--hnsw-size", type=int, default=300_000, help="HNSW's size (its fill is the slowest)")
    parser.add_argument("--batch", type=int, default=1024, help="documents per upsert")
    parser.add_argument("--search-seconds", type=float, default=20.0, help="the no-rebuild latency measurement")
    parser.add_argument("--rounds", type=int, default=9, help="batches each in a side-by-side comparison")
    parser.add_argument("--dir", type=Path, default=None, help="where the collections go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phases",
        default="snapshot,rebuild",
        help="after the fill: 'snapshot' (Search while a snapshot is written, before/after), 'reindex', 'rebuild'",
    )
    args = parser.parse_args()
    phases = set(filter(None, args.phases.split(",")))
    # The last stretch keeps --rounds batches back for the side-by-side comparison, after the first FIRST.
    smallest = FIRST + (args.rounds + 1) * args.batch
    kinds = args.kinds.split(",")
    sizes = {"--hnsw-size": args.hnsw_size} if "hnsw" in kinds else {}
    if set(kinds) - {"hnsw"}:
        sizes["--size"] = args.size
    for flag, value in sizes.items():
        if value < smallest:
            parser.error(
                f"{flag} {value}: at least {smallest:,} ({FIRST:,} documents, then --rounds {args.rounds} + 1 "
                f"batches of --batch {args.batch} for the side-by-side comparison)"
            )
    root = Path(tempfile.mkdtemp(prefix="store_scale-", dir=args.dir))
    print(
        f"store-level upserts of synthetic unit vectors (d={DIM}, no model), {os.cpu_count()} CPUs, "
        f"FAISS threads {faiss.omp_get_max_threads()}, under {root}",
        flush=True,
    )
    verdicts = []
    try:
        for kind in (IndexKind(k) for k in kinds):
            size = args.hnsw_size if kind is IndexKind.HNSW else args.size
            verdicts += run_kind(kind, size, args.batch, root, args.seed, args.search_seconds, args.rounds, phases)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
