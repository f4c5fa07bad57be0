"""SciFact (BEIR format): the loader and the retrieval metrics the quality benchmarks share.

Data: ``../shared/data/scifact-train`` (5,183 abstracts, 809 claims, 919 judged pairs; see SOURCES.md there).

- A document's text is ``title + " " + text`` (the title alone or the text alone when the other is empty),
  as BEIR does for dense models and bm25s's BEIR script does for BM25; ids stay strings (``"31715818"``:
  they look numeric, but BEIR compares them as strings).
- qrels/train.tsv has a header row (``query-id corpus-id score``); a pair with score <= 0 is not relevant.
- queries.jsonl also holds claims without judgements in other BEIR splits; only judged queries are
  evaluated (here all 809 are judged).

Metrics follow pytrec_eval (what BEIR reports): nDCG@k with graded gain (the qrels score, not 2^rel - 1) and
log2(rank + 1) discount, the ideal DCG from the query's qrels; Recall@k = judged-relevant documents in the
top k / all judged-relevant documents. Averages are over every judged query; a query for which a method
returns nothing counts as 0 (pytrec_eval would leave it out, which flatters a method that returns nothing).

Run it to print the data's counts: ``python benchmarks/scifact.py [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCIFACT_DIR = REPO.parent / "shared" / "data" / "scifact-train"


@dataclass(frozen=True)
class SciFact:
    doc_ids: list[str]
    texts: list[str]  # title + " " + text, in corpus order
    queries: dict[str, str]  # judged queries only: query id -> claim
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance > 0}


def document_text(title: str, text: str) -> str:
    """BEIR's document text: the title, a space, the abstract (either alone if the other is empty)."""
    title, text = title.strip(), text.strip()
    return f"{title} {text}" if title and text else title or text


def load_scifact(data_dir: Path = DEFAULT_SCIFACT_DIR, split: str = "train") -> SciFact:
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (data_dir / name).is_file():
            sys.exit(f"{data_dir / name} not found: pass --scifact-dir with the BEIR SciFact folder")
    doc_ids, texts = [], []
    with open(data_dir / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                doc_ids.append(str(doc["_id"]))
                texts.append(document_text(doc.get("title") or "", doc.get("text") or ""))
    qrels: dict[str, dict[str, int]] = {}
    with open(data_dir / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["query-id", "corpus-id"]:
            sys.exit(f"{data_dir}/qrels/{split}.tsv: unexpected header {header}")
        for query_id, doc_id, score in reader:
            if int(score) > 0:
                qrels.setdefault(query_id, {})[doc_id] = int(score)
    queries: dict[str, str] = {}
    with open(data_dir / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                query = json.loads(line)
                if str(query["_id"]) in qrels:
                    queries[str(query["_id"])] = query["text"]
    missing = set(qrels) - set(queries)
    if missing:
        sys.exit(f"{len(missing)} judged queries have no text in queries.jsonl (e.g. {sorted(missing)[:3]})")
    return SciFact(doc_ids, texts, queries, qrels)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 100) -> float:
    return sum(1 for doc in ranked[:k] if relevant.get(doc, 0) > 0) / len(relevant) if relevant else 0.0


def evaluate(data: SciFact, run: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean nDCG@10 and Recall@100 over every judged query; run maps query id -> doc ids, best first."""
    ndcg, recall = [], []
    for query_id, relevant in data.qrels.items():
        ranked = run.get(query_id, [])
        ndcg.append(ndcg_at_k(ranked, relevant, 10))
        recall.append(recall_at_k(ranked, relevant, 100))
    return {"ndcg@10": sum(ndcg) / len(ndcg), "recall@100": sum(recall) / len(recall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact-dir", type=Path, default=DEFAULT_SCIFACT_DIR)
    args = parser.parse_args()
    data = load_scifact(args.scifact_dir)
    pairs = sum(len(r) for r in data.qrels.values())
    words = sorted(len(t.split()) for t in data.texts)
    median = words[len(words) // 2]
    print(f"{len(data.doc_ids)} documents (median {median} words), {len(data.queries)} judged queries, {pairs} pairs")


if __name__ == "__main__":
    main()
