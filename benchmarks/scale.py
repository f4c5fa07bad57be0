"""Does the vector index scale? Recall@10 and single-query latency of hnsw and ivf against flat at 100k and 1M.

Issue target: `hnsw` recall@10 >= 0.98 against `flat` at 1M vectors, search p50 under 1 ms for the index part.

Everything goes through semsearch's own `VectorIndex` (built with `rebuild(labels, vectors)`, as the service does
when it builds from every stored vector), with exact `flat` as the reference computed in the same run.

Data, shaped like real embeddings rather than uniform random:
  * the unique sentences of STS-B sts-train.csv + sts-dev.csv, embedded with the service's default model
    (cached as .npy under --cache); a seeded random --queries * 0.8 of them are held out as queries and never
    enter the index or the mixtures below;
  * the rest are the "real" part of every index; it is grown to N with synthetic vectors, each a normalised
    random mixture of 2-4 real embeddings (uniform random weights) plus Gaussian noise of --sigma per dimension;
  * the other --queries * 0.2 queries are fresh synthetic vectors made the same way (not in the index).
Mean top-1 / top-10 cosines of real and synthetic vectors are printed so the reader can check the set is
embedding-like (clustered, with near neighbours) rather than the flat distances of random vectors.

Latency is VectorIndex.search of ONE query at a time with FAISS on 1 thread (faiss.omp_set_num_threads(1)),
k=10, over every query, --passes times with the settings interleaved; p50 is the median of the per-pass p50s,
p99 is over all passes. Builds use all cores. Memory per vector is the size of faiss.serialize_index() of the
index divided by N (RSS deltas proved meaningless here: the allocator reuses the previous index's freed pages).
Rows are printed as each index finishes, so a long run's log is useful before it ends.

Run from the repository root (the full run takes about half an hour on 2 cores; --quick is 100k only):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale.py [--quick | --sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss
import numpy as np
from common import DEFAULT_DATA_DIR, sts_sentences
from semsearch_server.domain import IndexKind, IndexSpec
from semsearch_server.index.vector_index import VectorIndex, ivf_nlist_for

K = 10
TARGET_SIZE = 1_000_000
TARGET_RECALL = 0.98
TARGET_P50_MS = 1.0
SERVICE_DEFAULT = IndexSpec()
REAL_QUERY_SHARE = 0.8


@dataclass
class Row:
    kind: str
    build: str  # build parameters, e.g. "M32 efC200"
    knob: str  # search parameter, e.g. "ef=128"
    spec: IndexSpec
    build_s: float = float("nan")
    ser_bytes_per_vec: float = float("nan")
    recall: float = float("nan")
    p50s: list[float] = dataclasses.field(default_factory=list)
    lat_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.p50s)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.lat_ms, 99))

    def meets_target(self) -> bool:
        return self.recall >= TARGET_RECALL and self.p50 < TARGET_P50_MS


# -- data ------------------------------------------------------------------------------------------
def embed_cached(texts: list[str], cache_dir: Path) -> np.ndarray:
    from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder, default_model_path

    model_path = default_model_path()
    key = hashlib.sha256("\n".join([model_path, *texts]).encode()).hexdigest()[:16]
    path = cache_dir / f"sts_embeddings_{key}.npy"
    if path.exists():
        print(f"base embeddings: cached {path}", flush=True)
        return np.load(path)
    t0 = time.perf_counter()
    vectors = SentenceTransformerEmbedder(model_path).encode(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    print(f"base embeddings: {len(texts)} sentences embedded in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return vectors


def mixtures(sources: np.ndarray, out: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """Fills `out` with normalised random mixtures of 2-4 rows of `sources` plus N(0, sigma) noise per dim."""
    chunk = 20_000  # bounds the (chunk, 4, d) gather
    for start in range(0, len(out), chunk):
        n = min(chunk, len(out) - start)
        picks = rng.integers(0, len(sources), size=(n, 4))
        weights = rng.random((n, 4), dtype=np.float32)
        weights[np.arange(4)[None, :] >= rng.integers(2, 5, size=(n, 1))] = 0.0
        mixed = np.einsum("nj,njd->nd", weights, sources[picks])
        mixed += rng.normal(0.0, sigma, size=mixed.shape).astype(np.float32)
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        out[start : start + n] = mixed


def neighbour_cosines(vectors: np.ndarray, index: VectorIndex, exclude_self: bool) -> tuple[float, float]:
    """Mean cosine of the 1st and 10th nearest neighbour of `vectors` in `index` (skipping the vector itself)."""
    scores, _ = index.search(vectors, K + 1)
    scores = scores[:, 1:] if exclude_self else scores[:, :K]
    return float(scores[:, 0].mean()), float(scores[:, K - 1].mean())


# -- measurement -----------------------------------------------------------------------------------
def build(spec: IndexSpec, vectors: np.ndarray, row: Row) -> VectorIndex:
    gc.collect()  # drop the previous index before timing this one
    index = VectorIndex(spec, vectors.shape[1])
    t0 = time.perf_counter()
    index.rebuild(np.arange(len(vectors), dtype=np.int64), vectors)
    row.build_s = time.perf_counter() - t0
    row.ser_bytes_per_vec = faiss.serialize_index(index._index).nbytes / len(vectors)
    return index


def time_queries(index: VectorIndex, queries: np.ndarray, row: Row, truth: np.ndarray | None) -> None:
    """One pass of single-query searches: appends latencies, and recall@10 on the first pass."""
    index.spec = row.spec  # the search knob (efSearch / nprobe) is read from the spec at every search
    latencies = np.empty(len(queries))
    found = np.empty((len(queries), K), dtype=np.int64)
    for i in range(len(queries)):
        t0 = time.perf_counter_ns()
        _, labels = index.search(queries[i : i + 1], K)
        latencies[i] = (time.perf_counter_ns() - t0) / 1e6
        found[i] = labels[0]
    row.p50s.append(float(np.median(latencies)))
    row.lat_ms.extend(latencies.tolist())
    if truth is not None and np.isnan(row.recall):
        row.recall = float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)]))


def sweep(index: VectorIndex, rows: list[Row], queries: np.ndarray, truth: np.ndarray, passes: int) -> None:
    """Interleaves the settings pass by pass so machine noise spreads over all of them alike."""
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:20], K)  # warm-up
        for _ in range(passes):
            for row in rows:
                time_queries(index, queries, row, truth)
    finally:
        faiss.omp_set_num_threads(os.cpu_count() or 1)


def print_header() -> None:
    print(f"  {'index':<6} {'build':<12} {'search':<10} {'build s':>8} {'bytes/vec':>10} "
          f"{'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8}")  # fmt: skip


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        mark = "  <- meets target" if r.kind == "hnsw" and r.meets_target() else ""
        print(f"  {r.kind:<6} {r.build:<12} {r.knob:<10} {r.build_s:>8.1f} {r.ser_bytes_per_vec:>10.0f} "
              f"{r.recall:>9.4f} {r.p50:>8.3f} {r.p99:>8.3f}{mark}", flush=True)  # fmt: skip


# -- one size --------------------------------------------------------------------------------------
def run_size(n: int, real: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[Row]:
    rng = np.random.default_rng(args.seed + n)
    n_real = min(n, len(real))
    vectors = np.empty((n, real.shape[1]), dtype=np.float32)
    vectors[:n_real] = real[:n_real]
    mixtures(real, vectors[n_real:], args.sigma, rng)
    print(f"\n== N = {n:,}: {n_real:,} real + {n - n_real:,} synthetic vectors, {len(queries)} queries, k={K}")

    flat_row = Row("flat", "-", "exact", IndexSpec(kind=IndexKind.FLAT))
    flat = build(flat_row.spec, vectors, flat_row)
    _, truth = flat.search(queries, K)  # batched, all cores: the reference
    flat_row.recall = 1.0
    sweep(flat, [flat_row], queries[: args.flat_latency_queries], None, 1)

    sample = np.sort(rng.choice(np.arange(n_real, n), size=min(500, n - n_real), replace=False))
    n_real_q = round(len(queries) * REAL_QUERY_SHARE)
    print("  neighbourhoods (mean cosine of the 1st / 10th nearest neighbour in the N-vector index):")
    groups = [
        ("real vectors", real[:500], True),
        ("synthetic vectors", vectors[sample], True),
        ("real queries", queries[:n_real_q], False),
        ("synthetic queries", queries[n_real_q:], False),
    ]
    for name, group, in_index in groups:
        if len(group):
            top1, top10 = neighbour_cosines(group, flat, exclude_self=in_index)
            print(f"    {name:<18} {top1:.3f} / {top10:.3f}", flush=True)
    del flat
    rows = [flat_row]
    print_header()
    print_rows(rows)

    for m, efc in args.hnsw_builds:
        base = IndexSpec(kind=IndexKind.HNSW, hnsw_m=m, hnsw_ef_construction=efc)
        label = f"M{m} efC{efc}"
        print(f"  building hnsw {label} ...", flush=True)
        settings = [Row("hnsw", label, f"ef={ef}", dataclasses.replace(base, hnsw_ef_search=ef)) for ef in args.ef]
        rows += build_and_sweep(base, settings, vectors, queries, truth, args.passes)

    base = IndexSpec(kind=IndexKind.IVF)
    label = f"nlist{ivf_nlist_for(n)}"
    print(f"  building ivf {label} ...", flush=True)
    settings = [Row("ivf", label, f"nprobe={p}", dataclasses.replace(base, ivf_nprobe=p)) for p in args.nprobe]
    return rows + build_and_sweep(base, settings, vectors, queries, truth, args.passes)


def build_and_sweep(
    base: IndexSpec, settings: list[Row], vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, passes: int
) -> list[Row]:
    """Builds one index and measures every search setting of it; [] for an IVF too small to train."""
    index = build(base, vectors, settings[0])
    if not index.trained:
        print(f"  {base.kind.value} skipped: {len(vectors):,} vectors are too few to train it (exact search)")
        return []
    print(f"  built {index.describe()} in {settings[0].build_s:.0f} s", flush=True)
    for row in settings[1:]:
        row.build_s, row.ser_bytes_per_vec = settings[0].build_s, settings[0].ser_bytes_per_vec
    sweep(index, settings, queries, truth, passes)
    del index
    print_rows(settings)
    return settings


def verdict(results: dict[int, list[Row]]) -> None:
    print("\n== verdict (hnsw; latency = VectorIndex.search, 1 query, 1 FAISS thread)")
    size = max(results)
    if size < TARGET_SIZE:
        print(f"  the target is at {TARGET_SIZE:,} vectors; the largest size run is {size:,}: indicative only")
    default_build = f"M{SERVICE_DEFAULT.hnsw_m} efC{SERVICE_DEFAULT.hnsw_ef_construction}"
    for n, rows in sorted(results.items()):
        hnsw = [r for r in rows if r.kind == "hnsw"]
        default = next((r for r in hnsw if r.spec.hnsw_m == SERVICE_DEFAULT.hnsw_m
                        and r.spec.hnsw_ef_construction == SERVICE_DEFAULT.hnsw_ef_construction
                        and r.spec.hnsw_ef_search == SERVICE_DEFAULT.hnsw_ef_search), None)  # fmt: skip
        if default is None:
            print(f"  N={n:,}: the service default ({default_build} ef={SERVICE_DEFAULT.hnsw_ef_search}) was not run")
        else:
            print(f"  N={n:,}: service default {default_build} ef={SERVICE_DEFAULT.hnsw_ef_search}: "
                  f"recall@10 {default.recall:.4f} {'PASS' if default.recall >= TARGET_RECALL else 'MISS'} "
                  f"(>= {TARGET_RECALL}), p50 {default.p50:.3f} ms "
                  f"{'PASS' if default.p50 < TARGET_P50_MS else 'MISS'} (< {TARGET_P50_MS} ms)")  # fmt: skip
        passing = sorted((r for r in hnsw if r.meets_target()), key=lambda r: (r.build_s, r.p50))
        if passing:
            best = passing[0]
            print(f"           cheapest build meeting both: {best.build} {best.knob} "
                  f"(build {best.build_s:.0f} s, recall@10 {best.recall:.4f}, p50 {best.p50:.3f} ms)")  # fmt: skip
        else:
            print("           no hnsw setting run meets both")
    ivf_default = [r for r in results[size] if r.kind == "ivf" and r.spec.ivf_nprobe == SERVICE_DEFAULT.ivf_nprobe]
    if ivf_default:
        r = ivf_default[0]
        print(f"  (ivf default nprobe={r.spec.ivf_nprobe} at N={size:,}: recall@10 {r.recall:.4f}, p50 {r.p50:.3f} ms)")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def builds(text: str) -> list[tuple[int, int]]:
    """Parses "32:200,16:100" into [(M, efConstruction), ...]."""
    return [(int(m), int(efc)) for m, efc in (part.split(":") for part in text.split(",") if part)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=ints, default=[100_000, 1_000_000], help="comma-separated index sizes")
    parser.add_argument("--quick", action="store_true", help="100k only")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS-B directory")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "semsearch-bench-cache",
                        help="directory for the cached sentence embeddings")  # fmt: skip
    parser.add_argument("--hnsw-builds", type=builds, default=[(32, 200), (16, 100)], help="M:efConstruction,...")
    parser.add_argument("--ef", type=ints, default=[64, 128, 256, 512], help="efSearch values to sweep")
    parser.add_argument("--nprobe", type=ints, default=[16, 32, 64, 128], help="IVF nprobe values to sweep")
    parser.add_argument("--sigma", type=float, default=0.02, help="per-dimension noise of synthetic vectors")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the queries per setting")
    parser.add_argument("--flat-latency-queries", type=int, default=100, help="flat is slow: time only this many")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.sizes = [100_000]

    sentences = sts_sentences(args.data_dir, None, files=("sts-train.csv", "sts-dev.csv"))
    embeddings = embed_cached(sentences, args.cache)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(sentences))
    n_real_q = round(args.queries * REAL_QUERY_SHARE)
    real = np.ascontiguousarray(embeddings[order[n_real_q:]])
    queries = np.empty((args.queries, embeddings.shape[1]), dtype=np.float32)
    queries[:n_real_q] = embeddings[order[:n_real_q]]
    mixtures(real, queries[n_real_q:], args.sigma, rng)
    print(f"data: {len(sentences):,} unique STS-B train+dev sentences -> {len(real):,} real base vectors; "
          f"synthetic = normalised mix of 2-4 real vectors with uniform random weights, + N(0, {args.sigma}) per dim; "
          f"queries = {n_real_q} held-out real sentences + {args.queries - n_real_q} synthetic")  # fmt: skip
    print(f"faiss {faiss.__version__}, {os.cpu_count()} cores for builds, 1 thread for latency", flush=True)

    results = {n: run_size(n, real, queries, args) for n in args.sizes}
    verdict(results)


if __name__ == "__main__":
    main()
