"""Does a write's cost depend on the collection's size? VectorIndex's write path before and after, side by side.

For each size N and index kind, one index is filled to N random unit vectors (d=384, the default model's), then
1,024-vector batches are written alternately the old way and the new way, --repeats times each:

  * add 1,024 fresh labels: before = remove_ids(IDSelectorArray(labels)) then add, as VectorIndex.add did on
    every upsert (HNSW masked labels in a dict instead); after = add only (labels above every label seen are
    known absent);
  * remove 1,024 present labels (a replacement or a delete): before = remove_ids(IDSelectorArray); after =
    IDSelectorBatch for flat, IDSelectorArray through the hash-table direct map for trained IVF (which is what
    the old code did too), masking for HNSW (unchanged).

Medians in ms per 1,024 vectors, FAISS on 1 thread while timing (fills use every core). HNSW is filled with
M=16, efConstruction=40 so that 1M fits in a few minutes: insertion cost depends on those, the before/after
difference does not. IVF uses nlist=1024, nprobe=16 at every size (trained on the first 40k vectors). The
numbers are noisy when the machine is shared; the ratio column is measured in the same run.

Run from the repository root:
    .venv/bin/python benchmarks/write_path.py [--sizes 50000,200000,1000000] [--kinds flat,hnsw,ivf]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import faiss
import numpy as np
from semsearch_server.domain import IndexKind, IndexSpec
from semsearch_server.index.vector_index import VectorIndex

DIM = 384
BATCH = 1024
FILL_CHUNK = 50_000
IVF_NLIST = 1024
ALL_THREADS = faiss.omp_get_max_threads()
SPECS = {
    IndexKind.FLAT: IndexSpec(kind=IndexKind.FLAT),
    IndexKind.HNSW: IndexSpec(kind=IndexKind.HNSW, hnsw_m=16, hnsw_ef_construction=40),
    IndexKind.IVF: IndexSpec(kind=IndexKind.IVF, ivf_nlist=IVF_NLIST, ivf_nprobe=16),
}


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def fill(kind: IndexKind, n: int, rng: np.random.Generator) -> VectorIndex:
    first = min(n, IVF_NLIST * 40) if kind is IndexKind.IVF else min(n, FILL_CHUNK)
    index = VectorIndex.built(SPECS[kind], DIM, np.arange(first), unit_vectors(rng, first))
    for start in range(first, n, FILL_CHUNK):
        stop = min(n, start + FILL_CHUNK)
        index.add(np.arange(start, stop), unit_vectors(rng, stop - start))
    if not index.trained:
        raise SystemExit(f"{n} vectors are too few to train IVF with nlist={IVF_NLIST}; use sizes >= {first}")
    assert index.ntotal == n
    return index


def old_remove(index: VectorIndex, labels: np.ndarray) -> None:
    """VectorIndex.remove as it was: masking for HNSW, remove_ids(IDSelectorArray) for the others."""
    if index.spec.kind is IndexKind.HNSW:
        index.remove(labels)
    else:
        index._index.remove_ids(faiss.IDSelectorArray(labels))


def one_round(index: VectorIndex, labels: np.ndarray, vectors: np.ndarray, old: bool) -> tuple[float, float]:
    """Adds then removes one batch of fresh labels, the old way or the new; returns both times in ms."""
    started = time.perf_counter()
    if old:
        old_remove(index, labels)  # what add() did first, on every call
    index.add(labels, vectors)
    added = time.perf_counter()
    if old:
        old_remove(index, labels)
    else:
        index.remove(labels)
    removed = time.perf_counter()
    return (added - started) * 1000, (removed - added) * 1000


def measure(kind: IndexKind, n: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    faiss.omp_set_num_threads(ALL_THREADS)
    started = time.perf_counter()
    index = fill(kind, n, rng)
    fill_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    next_label = n
    times: dict[str, list[float]] = {"add_before": [], "add_after": [], "remove_before": [], "remove_after": []}
    for _ in range(repeats):
        for way in ("before", "after"):  # interleaved, so drift in machine load hits both alike
            labels = np.arange(next_label, next_label + BATCH, dtype=np.int64)
            next_label += BATCH
            vectors = unit_vectors(rng, BATCH)
            add_ms, remove_ms = one_round(index, labels, vectors, old=way == "before")
            times[f"add_{way}"].append(add_ms)
            times[f"remove_{way}"].append(remove_ms)
    del index
    gc.collect()
    result = {name: statistics.median(values) for name, values in times.items()}
    result["fill_s"] = fill_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,200000,1000000")
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [IndexKind(k) for k in args.kinds.split(",")]
    print(f"ms per {BATCH} vectors (median of {args.repeats}), d={DIM}, FAISS on 1 thread while timing")
    header = (
        f"{'kind':<5} {'vectors':>9} | {'add before':>10} {'add after':>9} {'ratio':>6} | "
        f"{'remove before':>13} {'remove after':>12} {'ratio':>6} | {'fill s':>6}"
    )
    print(header)
    print("-" * len(header))
    for kind in kinds:
        for n in sizes:
            r = measure(kind, n, args.repeats, rng)
            print(
                f"{kind.value:<5} {n:>9,} | {r['add_before']:>10.1f} {r['add_after']:>9.1f} "
                f"{r['add_before'] / r['add_after']:>5.1f}x | {r['remove_before']:>13.1f} "
                f"{r['remove_after']:>12.1f} {r['remove_before'] / r['remove_after']:>5.1f}x | {r['fill_s']:>6.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
