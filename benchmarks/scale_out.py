"""Scale-out: the local store against the Milvus store, one and two replicas, and the Ray Data bulk path.

Corpus: N distinct texts from STS Benchmark (train, dev, test): every unique sentence, then pairs of two
different sentences joined, until N (real embeddings, which cluster as a real corpus does; random vectors
are the worst case of HNSW and say little about a real collection). Queries: Q other STS sentences.

What is measured, all in one run on the same machine:

1. Embedding once, in process, with the server's embedder (the default backend) and the server's passage
   split (`core.service.embed_documents`): docs/s of the model alone. These vectors are then loaded into
   every store below through its own `upsert` (the store alone: what it costs to hold them, without
   re-embedding 100k texts per store on 2 cores; the end-to-end ingest through the service is part 4).
2. Stores: local (FAISS + SQLite, flat) and Milvus (milvus-lite server; FLAT and HNSW): ingest docs/s;
   HNSW recall@10 against exact numpy search over the same vectors.
3. Search through the service (a real server process, text queries, top_k 10): local store vs Milvus store,
   p50/p99 sequential; the flat top-10 of both compared id by id; then 1 vs 2 Milvus replicas under 4
   concurrent clients (round robin), p50/p99 and QPS.
4. Ingest end to end on the first `--ingest-n` texts: the gRPC indexer (`semsearch index`) into a local
   replica and into a Milvus replica, and `semsearch index --engine ray` with 1 worker of 2 CPUs and
   2 workers of 1 CPU (a local Ray of 3 logical CPUs: the read task needs one the actors do not hold).

Milvus Lite seals segments on flush but keeps serving the collection from its unindexed, brute-force copy
until the collection is released and loaded again (measured: 20k vectors, recall 1.0 and 110 ms per search
before, HNSW 12-14 ms after). So after loading, this benchmark flushes, waits for the index to be built and
reloads each Milvus collection before measuring searches; a Milvus standalone or cluster hands sealed,
indexed segments over to its query nodes by itself.

Usage: python benchmarks/scale_out.py [--n 100000] [--queries 200] [--ingest-n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA_DIR, percentile, sts_sentences, verdict  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from semsearch.cli import main as cli  # noqa: E402
from semsearch_server.core.service import embed_documents  # noqa: E402
from semsearch_server.domain import CollectionSettings, Document, IndexKind, IndexSpec, PassageConfig  # noqa: E402
from semsearch_server.errors import Unavailable  # noqa: E402
from semsearch_server.index.local_provider import LocalStoreProvider  # noqa: E402
from semsearch_server.index.milvus_provider import MilvusStoreProvider  # noqa: E402
from semsearch_server.testing import ServerProcess  # noqa: E402

STS_FILES = ("sts-train.csv", "sts-dev.csv", "sts-test.csv")
LOAD_BATCH = 1000


def corpus(n: int, queries: int, data_dir: Path) -> tuple[list[str], list[str]]:
    sentences = sts_sentences(data_dir, None, STS_FILES)
    rng = random.Random(0)
    rng.shuffle(sentences)
    held_out, pool = sentences[:queries], sentences[queries:]
    texts = list(pool[:n])
    seen = set(texts)
    while len(texts) < n:
        a, b = rng.sample(pool, 2)
        text = f"{a} {b}"
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts, held_out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000


def log(message: str) -> None:
    print(message, flush=True)


def load_store(store, embedded) -> float:
    started = time.perf_counter()
    for i in range(0, len(embedded), LOAD_BATCH):
        store.upsert(embedded[i : i + LOAD_BATCH])
    return len(embedded) / (time.perf_counter() - started)


def seal_and_reload(client, collection: str, timeout: float = 1800, data_dir: Path | None = None) -> float:
    """Flush, wait until the vector index covers every row, release and load (see the module docstring)."""
    started = time.perf_counter()
    client.flush(collection)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.describe_index(collection, "vector")
        if info.get("state") == "Finished" and not info.get("pending_index_rows"):
            break
        time.sleep(2)
    if data_dir is not None:  # Milvus Lite: see settle (loading while an index file is written fails)
        settle(data_dir, collection)
    client.release_collection(collection)
    client.load_collection(collection)
    if data_dir is not None:
        settle(data_dir, collection)
    return time.perf_counter() - started


def settle(data_dir: Path, collection: str, quiet: float = 10.0, timeout: float = 1800.0) -> float:
    """Waits until every live data file has its vector index file and nothing has changed for ``quiet`` s.

    Milvus Lite's DescribeIndex reports every index Finished at once, and its background compaction (after
    a flush) replaces indexed files by a merged one that is searched by brute force until its index is
    built; a search measured in between measures that (at 100k: 400 ms a search, measured)."""
    root = next(data_dir.rglob(f"collections/{collection}"))
    started = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - started < timeout:
        manifest = json.loads((root / "manifest.json").read_text())
        state = []
        ready = True
        for name, part in manifest["partitions"].items():
            for f in part["data_files"]:
                stem = Path(f).stem
                index = sorted((root / "partitions" / name / "indexes").glob(f"{stem}.vector.*"))
                ready = ready and bool(index)
                state += [(str(i), i.stat().st_size, i.stat().st_mtime_ns) for i in index] + [(f, 0, 0)]
        if state != last:
            last, since = state, time.monotonic()
        elif ready and time.monotonic() - since >= quiet:
            return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError(f"Milvus Lite's files of {collection} did not settle in {timeout:.0f} s")


def search_latencies(client, queries: list[str], collection: str) -> tuple[list[float], list[list[str]]]:
    client.search(queries[0], collection=collection, top_k=10)  # warm
    lat, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = client.search(q, collection=collection, top_k=10)
        lat.append(time.perf_counter() - t0)
        ids.append([h.id for h in hits])
    return lat, ids


def concurrent_search(addresses: list[str], queries: list[str], collection: str, threads: int = 4):
    """`threads` clients, each sending every query to the replicas in turn; (latencies, QPS)."""
    from semsearch import SearchClient

    lat: list[float] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        clients = [SearchClient(a, timeout=120) for a in addresses]
        mine = []
        for i, q in enumerate(queries):
            c = clients[(i + offset) % len(clients)]
            t0 = time.perf_counter()
            c.search(q, collection=collection, top_k=10)
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
        for c in clients:
            c.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return lat, len(lat) / (time.perf_counter() - started)


def run_cli(argv: list[str]) -> dict:
    out = StringIO()
    with redirect_stdout(out):
        code = cli(argv)
    summary = json.loads(out.getvalue())
    if code != 0:
        raise RuntimeError(f"semsearch {' '.join(argv[:3])}... exited {code}: {summary.get('error')}")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest-n", type=int, default=100_000, help="texts for the end-to-end ingest comparison")
    ap.add_argument("--ingest-only", action="store_true", help="only part 4 (the end-to-end ingest comparison)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="scale_out_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    os.environ["SEMSEARCH_CACHE_DIR"] = str(cache)
    texts, queries = corpus(args.n, args.queries, args.data_dir)
    log(f"corpus: {len(texts)} texts ({sum(len(t) for t in texts) / len(texts):.0f} chars on average), "
        f"{len(queries)} queries; machine: {os.cpu_count()} cores, shared with other work")  # fmt: skip
    results: dict[str, float] = {}
    targets: list[tuple[str, bool]] = []

    # 1. the server's embedder, in process
    from semsearch_server.embedding.factory import build_embedder
    from semsearch_server.embedding.passages import PassageSplitter
    from semsearch_server.embedding.sentence_transformer import default_model_path

    model = default_model_path()
    docs = [Document(f"d{i}", t, {"part": str(i % 10)}) for i, t in enumerate(texts)]
    if args.ingest_only:
        from semsearch_server.embedding.reference import ModelReference

        fingerprint = ModelReference(model, cache).fingerprint
        splitter = PassageSplitter.for_model(model, fingerprint.max_seq_length)
        passages = splitter.resolve(PassageConfig()).as_config()
    else:
        embedder = build_embedder(model, "auto", cache_dir=cache)
        splitter = PassageSplitter.for_model(model, embedder.max_seq_length)
        passages = splitter.resolve(PassageConfig()).as_config()
        started = time.perf_counter()
        embedded = []
        for i in range(0, len(docs), 4096):
            embedded += embed_documents(embedder, splitter, passages, docs[i : i + 4096])
        results["embed_docs_s"] = len(docs) / (time.perf_counter() - started)
        vectors = np.vstack([e.vectors[0] for e in embedded])
        log(f"embedding in process ({embedder.fingerprint.backend}): {results['embed_docs_s']:,.0f} docs/s; "
            f"{sum(len(e.passages) for e in embedded) / len(embedded):.2f} passages per text")  # fmt: skip
        fingerprint = embedder.fingerprint
        query_vectors = embedder.encode(queries)
        del embedder  # the server processes load their own

    # 2. stores, loaded with the same vectors
    flat = CollectionSettings(index=IndexSpec(kind=IndexKind.FLAT), passages=passages)
    hnsw = CollectionSettings(index=IndexSpec(kind=IndexKind.HNSW), passages=passages)
    if not args.ingest_only:
        store = LocalStoreProvider(work / "local").create("flat", flat, fingerprint)
        results["local_ingest"] = load_store(store, embedded)
        store.close()
        log(f"local store (flat): ingest {results['local_ingest']:,.0f} docs/s (vectors given)")

    milvus_dir = work / "milvus"
    port = free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    milvus_log = open(work / "milvus.log", "wb")  # noqa: SIM115 - closed at the end
    milvus = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(milvus_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=milvus_log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    servers: list[ServerProcess] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                provider = MilvusStoreProvider(uri, timeout=30)
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

        def start(name: str, *extra: str) -> ServerProcess:
            srv = ServerProcess(work / name, *extra).start(timeout=600)
            servers.append(srv)
            return srv

        def stop(srv: ServerProcess) -> None:
            srv.terminate()
            servers.remove(srv)

        if args.ingest_only:
            replica_a = start("replica-a", "--store", "milvus", "--milvus-uri", uri)
        else:  # 2. the Milvus stores, then 3. search through the service
            exact = [set(np.argsort(-(vectors @ q))[:10].tolist()) for q in query_vectors]
            for name, settings in (("flat", flat), ("hnsw", hnsw)):
                store = provider.create(name, settings, fingerprint)
                results[f"milvus_{name}_ingest"] = load_store(store, embedded)
                reload_s = seal_and_reload(provider._client, provider._full(name), data_dir=milvus_dir)
                log(f"milvus store ({name}): ingest {results[f'milvus_{name}_ingest']:,.0f} docs/s (vectors given); "
                    f"flush + index + reload {reload_s:.0f} s")  # fmt: skip
            hnsw_store = provider.open("hnsw", fingerprint)
            recall = []
            for qi, hits in enumerate(hnsw_store.search_dense(query_vectors, 10, {})):
                recall.append(len({int(h.doc_id[1:]) for h in hits} & exact[qi]) / 10)
            results["hnsw_recall"] = float(np.mean(recall))
            ef = hnsw.index.hnsw_ef_search
            log(f"milvus HNSW (M {hnsw.index.hnsw_m}, efConstruction {hnsw.index.hnsw_ef_construction}, ef {ef}): "
                f"recall@10 {results['hnsw_recall']:.4f} against exact search over the same vectors")  # fmt: skip
            targets.append((f"HNSW recall@10 {results['hnsw_recall']:.4f} >= 0.98", results["hnsw_recall"] >= 0.98))

            srv = start("local")  # data dir work/local: the store loaded above
            with srv.client(timeout=120) as c:
                local_lat, local_ids = search_latencies(c, queries, "flat")
            stop(srv)
            results["local_p50"], results["local_p99"] = ms(local_lat)
            p50, p99 = results["local_p50"], results["local_p99"]
            log(f"service, local store (flat): search p50 {p50:.1f} ms  p99 {p99:.1f} ms")

            milvus_args = ("--store", "milvus", "--milvus-uri", uri)
            replica_a = start("replica-a", *milvus_args)
            with replica_a.client(timeout=120) as c:
                for name in ("flat", "hnsw"):
                    lat, ids = search_latencies(c, queries, name)
                    results[f"milvus_{name}_p50"], results[f"milvus_{name}_p99"] = ms(lat)
                    log(f"service, milvus store ({name}): search p50 {results[f'milvus_{name}_p50']:.1f} ms  "
                        f"p99 {results[f'milvus_{name}_p99']:.1f} ms")  # fmt: skip
                    if name == "flat":
                        same = sum(a == b for a, b in zip(ids, local_ids, strict=True))
                        sets = sum(set(a) == set(b) for a, b in zip(ids, local_ids, strict=True))
                        results["flat_identical"] = same / len(ids)
                        log(f"flat top-10, milvus vs local: {same}/{len(ids)} identical lists, {sets} identical sets")
                        targets.append(
                            (f"flat top-10 identical to the local store's ({same}/{len(ids)})", same == len(ids))
                        )
            for name in ("flat", "hnsw"):
                ratio = results[f"milvus_{name}_p50"] / results["local_p50"]
                targets.append((f"milvus {name} search p50 {ratio:.2f}x local p50 <= 2x", ratio <= 2.0))

            lat1, qps1 = concurrent_search([replica_a.address], queries, "hnsw")
            replica_b = start("replica-b", *milvus_args)
            lat2, qps2 = concurrent_search([replica_a.address, replica_b.address], queries, "hnsw")
            results["one_replica_qps"], results["two_replica_qps"] = qps1, qps2
            results["one_replica_p50"], results["one_replica_p99"] = ms(lat1)
            results["two_replica_p50"], results["two_replica_p99"] = ms(lat2)
            log(f"4 concurrent clients, hnsw: 1 replica {qps1:.1f} QPS p50 {results['one_replica_p50']:.1f} ms "
                f"p99 {results['one_replica_p99']:.1f} ms; 2 replicas {qps2:.1f} QPS "
                f"p50 {results['two_replica_p50']:.1f} ms p99 {results['two_replica_p99']:.1f} ms")  # fmt: skip
            stop(replica_b)

        # 4. ingest end to end: the gRPC indexer (local, milvus) and the Ray path (1 and 2 workers)
        m = min(args.ingest_n, len(texts))
        path = work / "ingest.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for d in docs[:m]:
                fh.write(json.dumps({"id": d.id, "text": d.text, **d.metadata}) + "\n")
        with replica_a.client(timeout=120) as c:
            c.create_collection("grpc")
        summary = run_cli(["index", str(path), "--address", replica_a.address, "-c", "grpc", "--json", "-q",
                           "--checkpoint", str(work / "grpc-milvus.ckpt")])  # fmt: skip
        results["grpc_milvus"] = summary["docs_per_second"]
        log(f"gRPC indexer -> milvus replica: {summary['indexed']} docs, {summary['docs_per_second']:,.0f} docs/s")
        stop(replica_a)
        srv = start("local-ingest")
        with srv.client(timeout=120) as c:
            c.create_collection("grpc")
        summary = run_cli(["index", str(path), "--address", srv.address, "-c", "grpc", "--json", "-q",
                           "--checkpoint", str(work / "grpc-local.ckpt")])  # fmt: skip
        results["grpc_local"] = summary["docs_per_second"]
        log(f"gRPC indexer -> local replica: {summary['indexed']} docs, {summary['docs_per_second']:,.0f} docs/s")
        stop(srv)

        import ray

        for workers, cpus in ((1, 2.0), (2, 1.0)):
            name = f"ray{workers}"
            provider.create(name, CollectionSettings(passages=passages), fingerprint)
            ray.shutdown()
            summary = run_cli(["index", str(path), "--engine", "ray", "--milvus-uri", uri, "-c", name, "--json", "-q",
                               "--workers", str(workers), "--worker-cpus", str(cpus), "--cache-dir", str(cache),
                               "--checkpoint", str(work / f"{name}.ckpt")])  # fmt: skip
            ray.shutdown()
            results[name] = summary["docs_per_second"]
            steady = summary["indexed"] / max(1e-9, summary["seconds"] - summary["first_batch_seconds"])
            results[f"{name}_after_first_batch"] = steady
            log(f"Ray Data, {workers} worker(s) x {cpus:g} CPU -> milvus: {summary['indexed']} docs, "
                f"{summary['docs_per_second']:,.0f} docs/s end to end; first batch after "
                f"{summary['first_batch_seconds']:.1f} s (Ray start, model load), "
                f"{steady:,.0f} docs/s after it")  # fmt: skip
        ratio = results["ray2"] / results["grpc_milvus"]
        log(f"Ray 2 workers / gRPC indexer into Milvus: {ratio:.2f}x; 2 workers / 1 worker: "
            f"{results['ray2'] / results['ray1']:.2f}x")  # fmt: skip
    finally:
        for srv in list(servers):
            srv.stop()
        milvus.terminate()
        try:
            milvus.wait(30)
        except subprocess.TimeoutExpired:
            milvus.kill()
        milvus_log.close()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    log("\ntargets:")
    for label, ok in targets:
        log(f"  {verdict(ok)}  {label}")
    log("results: " + json.dumps({k: round(v, 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
