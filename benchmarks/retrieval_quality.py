"""Retrieval quality on SciFact (train): dense, lexical and hybrid search through a real server.

Indexes the 5,183 SciFact abstracts (title + abstract) into two collections of one server process (the
default backend): one with passages off (one truncated vector per document, the service before
passages) and one with the default passages. Every claim with judgements is searched in each
configuration (BatchSearch, top 100), and scored with nDCG@10 and Recall@100 as BEIR computes them.
Beside each figure: an exact in-process reference computed without the service (the same embedding
backend and the same BM25 code, brute force over every document), ingest documents/s per collection,
and the one-client Search p50 of each mode over 200 claims.

Targets (issue "Find the right document"): HYBRID nDCG@10 >= 0.745; LEXICAL >= 0.69; DENSE with passages
>= 0.68; DENSE with passages off within 0.002 of its exact reference; hybrid query p50 <= 1.3x dense p50;
ingest with passages >= 0.45x ingest without.

    python benchmarks/retrieval_quality.py [--scifact-dir DIR] [--server-args "..."]

Takes about ten minutes on 2 cores (most of it embedding ~24,000 passages twice: in the service and
for the reference).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import verdict  # noqa: E402
from scifact import DEFAULT_SCIFACT_DIR, SciFact, evaluate, load_scifact  # noqa: E402
from semsearch import Document  # noqa: E402
from semsearch_server.testing import ServerProcess  # noqa: E402

COLLECTION_OFF = "scifact_passages_off"
COLLECTION_ON = "scifact"
CONFIGS = [
    # (label, collection, mode, fusion)
    ("dense, passages off", COLLECTION_OFF, "dense", None),
    ("dense, passages on", COLLECTION_ON, "dense", None),
    ("lexical (BM25)", COLLECTION_ON, "lexical", None),
    ("hybrid, weighted", COLLECTION_ON, "hybrid", "weighted"),
    ("hybrid, rrf", COLLECTION_ON, "hybrid", "rrf"),
]
LATENCY_QUERIES = 200


def ingest(client, data: SciFact, collection: str, passages: bool) -> float:
    """Creates the collection and streams every abstract into it; returns documents/s."""
    client.create_collection(collection, passages=passages)
    docs = [Document(i, t) for i, t in zip(data.doc_ids, data.texts, strict=True)]
    started = time.perf_counter()
    client.upsert_stream((docs[i : i + 64] for i in range(0, len(docs), 64)), collection=collection, timeout=3600)
    return len(docs) / (time.perf_counter() - started)


def rankings(client, data: SciFact, collection: str, mode: str, fusion: str | None) -> dict[str, list[str]]:
    """query id -> the top 100 document ids, through BatchSearch."""
    query_ids = list(data.queries)
    out: list[list[str]] = []
    for start in range(0, len(query_ids), 64):
        chunk = [data.queries[q] for q in query_ids[start : start + 64]]
        results = client.batch_search(
            chunk,
            collection=collection,
            top_k=100,
            min_score=-1.0 if mode == "dense" else 0.0,
            mode=mode,
            fusion=fusion,
        )
        out += [[h.id for h in hits] for hits in results]
    return dict(zip(query_ids, out, strict=True))


def search_p50(client, data: SciFact, collection: str, mode: str, fusion: str | None) -> float:
    times = []
    for query in list(data.queries.values())[:LATENCY_QUERIES]:
        started = time.perf_counter()
        client.search(query, collection=collection, top_k=10, mode=mode, fusion=fusion)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def exact_scores(data: SciFact, truncated: bool = True) -> dict[str, np.ndarray]:
    """In-process scores of every claim against every abstract (rows in data.queries order): "dense_off"
    (one truncated vector per abstract; only if truncated), "dense_on" (best default passage), "lexical"
    (BM25, the service's own index code). The server's default backend and passage splitting."""
    from semsearch_server.domain import PassageConfig
    from semsearch_server.embedding.factory import build_embedder
    from semsearch_server.embedding.passages import PassageSplitter
    from semsearch_server.embedding.sentence_transformer import default_model_path
    from semsearch_server.index.lexical import LexicalIndex

    model = default_model_path()
    embedder = build_embedder(model, "auto", cache_dir=Path(tempfile.gettempdir()) / "semsearch-bench-cache")
    splitter = PassageSplitter.for_model(model, embedder.max_seq_length)
    queries = embedder.encode(list(data.queries.values()))
    out: dict[str, np.ndarray] = {}
    if truncated:
        out["dense_off"] = queries @ embedder.encode(data.texts).T
    spans = splitter.split(data.texts, splitter.resolve(PassageConfig()))
    passages = [t[p.start : p.end] for t, ps in zip(data.texts, spans, strict=True) for p in ps]
    first_passage = np.cumsum([0] + [len(ps) for ps in spans[:-1]])
    # Passages are in document order: a document's score is the maximum over its run of columns.
    out["dense_on"] = np.maximum.reduceat(queries @ embedder.encode(passages).T, first_passage, axis=1)
    lexical_index = LexicalIndex()
    lexical_index.add(list(range(len(data.texts))), data.texts)
    out["lexical"] = np.zeros_like(out["dense_on"])
    for i, query in enumerate(data.queries.values()):
        labels, scores = lexical_index.all_scores(query)
        out["lexical"][i, labels] = scores
    return out


def ranked(data: SciFact, scores: np.ndarray, k: int = 100) -> dict[str, list[str]]:
    """query id -> the top k document ids by these scores (documents scoring -inf left out)."""
    ids = np.array(data.doc_ids)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    lists = [ids[row][np.isfinite(s[row])].tolist() for row, s in zip(order, scores, strict=True)]
    return dict(zip(data.queries, lists, strict=True))


def references(data: SciFact) -> dict[str, dict[str, list[str]]]:
    """Exact in-process rankings: the server's embedding backend, numpy brute force, the same BM25 code."""
    from semsearch_server.domain import Fusion, HybridParams

    scores = exact_scores(data)
    dense_on, lexical = scores["dense_on"], scores["lexical"]
    weighted = HybridParams(Fusion.WEIGHTED)
    span = dense_on.max(axis=1, keepdims=True) - dense_on.min(axis=1, keepdims=True)
    fused = weighted.dense_weight * (dense_on - dense_on.min(axis=1, keepdims=True)) / span + (
        1 - weighted.dense_weight
    ) * lexical / np.maximum(lexical.max(axis=1, keepdims=True), 1e-9)
    return {
        "dense, passages off": ranked(data, scores["dense_off"]),
        "dense, passages on": ranked(data, dense_on),
        "lexical (BM25)": ranked(data, np.where(lexical > 0, lexical, -np.inf)),
        "hybrid, weighted": ranked(data, fused),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact-dir", type=Path, default=DEFAULT_SCIFACT_DIR)
    parser.add_argument("--server-args", default="", help="extra semsearch-server flags, e.g. '--backend torch'")
    args = parser.parse_args()
    data = load_scifact(args.scifact_dir)
    print(f"SciFact train: {len(data.doc_ids)} abstracts, {len(data.queries)} judged claims", flush=True)

    quality: dict[str, tuple[float, float]] = {}
    p50: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", *shlex.split(args.server_args)).start(timeout=900)
        try:
            with server.client(timeout=600) as client:
                ingest_rate = {
                    False: ingest(client, data, COLLECTION_OFF, passages=False),
                    True: ingest(client, data, COLLECTION_ON, passages=True),
                }
                print(
                    f"ingest: passages off {ingest_rate[False]:.0f} docs/s, on {ingest_rate[True]:.0f} docs/s",
                    flush=True,
                )
                for label, collection, mode, fusion in CONFIGS:
                    scores = evaluate(data, rankings(client, data, collection, mode, fusion))
                    quality[label] = (scores["ndcg@10"], scores["recall@100"])
                    p50[label] = search_p50(client, data, collection, mode, fusion)
                    print(f"  {label}: nDCG@10 {quality[label][0]:.4f}, Search p50 {p50[label]:.2f} ms", flush=True)
        finally:
            server.stop()
    reference = {
        label: (scores["ndcg@10"], scores["recall@100"])
        for label, scores in ((label, evaluate(data, run)) for label, run in references(data).items())
    }

    print()
    print("| configuration | nDCG@10 | Recall@100 | exact in-process nDCG@10 | Search p50 ms |")
    print("| --- | --- | --- | --- | --- |")
    for label, _, _, _ in CONFIGS:
        ndcg, recall = quality[label]
        ref = f"{reference[label][0]:.4f}" if label in reference else "-"
        print(f"| {label} | {ndcg:.4f} | {recall:.4f} | {ref} | {p50[label]:.2f} |")
    print(f"| ingest docs/s | passages off {ingest_rate[False]:.0f} | passages on {ingest_rate[True]:.0f} | | |")
    print()
    default_hybrid = "hybrid, weighted"
    checks = [
        (f"HYBRID nDCG@10 {quality[default_hybrid][0]:.4f} >= 0.745", quality[default_hybrid][0] >= 0.745),
        (f"LEXICAL nDCG@10 {quality['lexical (BM25)'][0]:.4f} >= 0.69", quality["lexical (BM25)"][0] >= 0.69),
        (
            f"DENSE with passages nDCG@10 {quality['dense, passages on'][0]:.4f} >= 0.68",
            quality["dense, passages on"][0] >= 0.68,
        ),
        (
            f"DENSE passages off {quality['dense, passages off'][0]:.4f} within 0.002 of the exact "
            f"{reference['dense, passages off'][0]:.4f}",
            abs(quality["dense, passages off"][0] - reference["dense, passages off"][0]) <= 0.002,
        ),
        (
            f"hybrid p50 {p50[default_hybrid]:.2f} ms <= 1.3x dense p50 {p50['dense, passages on']:.2f} ms "
            f"({p50[default_hybrid] / p50['dense, passages on']:.2f}x)",
            p50[default_hybrid] <= 1.3 * p50["dense, passages on"],
        ),
        (
            f"ingest with passages {ingest_rate[True]:.0f} >= 0.45x without {ingest_rate[False]:.0f} docs/s "
            f"({ingest_rate[True] / ingest_rate[False]:.2f}x)",
            ingest_rate[True] >= 0.45 * ingest_rate[False],
        ),
    ]
    for text, passed in checks:
        print(f"{verdict(passed)}  {text}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
