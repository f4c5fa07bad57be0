"""Which lexical engine behind LEXICAL / HYBRID search: quality, ingest, query latency, and update cost.

For each engine (and for the in-process LexicalIndex, each tokenisation and k1/b) it measures, in one run:

- quality on scifact-train (5,183 abstracts, 809 claims): nDCG@10 and Recall@100 (benchmarks/scifact.py);
- ingest: documents/s indexing the abstracts in batches of 100, as the service's upserts arrive;
- query p50 (top 10, the scifact claims, ~12 words) at 5k documents and at ``--large`` documents;
- the cost of an update: replacing 100 documents and deleting 100, at 5k and at ``--large`` documents, until
  the change is visible to searches (bm25s is a static index: an update is a full rebuild).

The large corpus is synthetic: each document joins the first half of one sentence to the second half of
another, both drawn (seeded) from the STS Benchmark sentences and the scifact abstracts split into
sentences, so it has the term statistics of real English and scientific text, ~10-15 terms per document,
and the scifact claims still find matches in it. Engines:

- ``lexical``: semsearch_server.index.lexical.LexicalIndex (numpy postings, in memory, snapshot files);
- ``fts5``: SQLite FTS5, ``tokenize='porter unicode61'``, ranked by its bm25() (k1 1.2, b 0.75 are fixed
  in SQLite; no stopword list), a table in a real database file (WAL, synchronous=NORMAL: the fsync would be
  the store's own transaction's); upsert = DELETE by rowid + INSERT, delete = DELETE by rowid;
- ``bm25s``: English stopwords + Snowball stemmer (PyStemmer), the issue's reference;
- ``tantivy``: simple tokenizer, lower-case, the same stopwords, Snowball English stemmer; an update is
  delete-by-term + add + commit + reload (what makes it searchable); k1 1.2, b 0.75 are fixed.

Run: ``.venv/bin/python benchmarks/lexical_engines.py`` (needs ``pip install -e './server[bench]'``);
``--large 200000`` for a smaller machine. The machine is shared: compare rows of one run.
"""

from __future__ import annotations

import argparse
import gc
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA_DIR, sts_rows
from scifact import DEFAULT_SCIFACT_DIR, SciFact, evaluate, load_scifact
from semsearch_server.index.lexical import ENGLISH_STOPWORDS, Analyzer, LexicalIndex

BATCH = 100
_QUERY_WORD = re.compile(r"\w+")


# -- engines ---------------------------------------------------------------------------------------------
class Engine:
    """Labels are ints; search returns labels best first."""

    name: str
    static = False  # True: an update rebuilds the whole index

    def add(self, labels: Sequence[int], texts: Sequence[str]) -> None: ...

    def finish(self) -> None:
        """After bulk ingest: whatever makes the documents searchable."""

    def search(self, query: str, k: int) -> list[int]: ...

    def upsert(self, labels: Sequence[int], texts: Sequence[str]) -> None:
        self.add(labels, texts)

    def delete(self, labels: Sequence[int]) -> None: ...

    def close(self) -> None: ...


class Lexical(Engine):
    def __init__(self, name: str, analyzer: Analyzer, k1: float, b: float) -> None:
        self.name, self.index = name, LexicalIndex(analyzer, k1, b)

    def add(self, labels, texts):
        self.index.add(labels, texts)

    def search(self, query, k):
        return self.index.search(query, k)[0].tolist()

    def delete(self, labels):
        self.index.remove(labels)


class Fts5(Engine):
    name = "SQLite FTS5 porter unicode61, bm25() 1.2/0.75"

    def __init__(self, directory: Path) -> None:
        self.db = sqlite3.connect(directory / "fts.sqlite3", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE VIRTUAL TABLE docs USING fts5(body, tokenize='porter unicode61')")

    def add(self, labels, texts):
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO docs(rowid, body) VALUES (?, ?)", zip(labels, texts, strict=True))
        self.db.execute("COMMIT")

    def upsert(self, labels, texts):
        self.db.execute("BEGIN")
        self.db.executemany("DELETE FROM docs WHERE rowid = ?", [(x,) for x in labels])
        self.db.executemany("INSERT INTO docs(rowid, body) VALUES (?, ?)", zip(labels, texts, strict=True))
        self.db.execute("COMMIT")

    def delete(self, labels):
        self.db.execute("BEGIN")
        self.db.executemany("DELETE FROM docs WHERE rowid = ?", [(x,) for x in labels])
        self.db.execute("COMMIT")

    def search(self, query, k):
        words = _QUERY_WORD.findall(query)
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = self.db.execute(
            "SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs), rowid LIMIT ?", (match, k)
        ).fetchall()
        return [r[0] for r in rows]

    def close(self):
        self.db.close()


class Bm25s(Engine):
    name = "bm25s stopwords+Snowball, k1 0.9 b 0.4"
    static = True

    def __init__(self) -> None:
        import bm25s
        import Stemmer

        self.bm25s, self.stemmer = bm25s, Stemmer.Stemmer("english")
        self.labels: list[int] = []
        self.texts: list[str] = []
        self.retriever = None

    def add(self, labels, texts):
        self.labels += list(labels)
        self.texts += list(texts)
        self.retriever = None

    def finish(self):
        tokens = self.bm25s.tokenize(self.texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever = self.bm25s.BM25(k1=0.9, b=0.4)
        self.retriever.index(tokens, show_progress=False)
        self.label_array = np.asarray(self.labels)

    def upsert(self, labels, texts):
        position = {label: i for i, label in enumerate(self.labels)}
        for label, text in zip(labels, texts, strict=True):
            self.texts[position[label]] = text
        self.finish()

    def delete(self, labels):
        gone = set(labels)
        keep = [i for i, label in enumerate(self.labels) if label not in gone]
        self.labels, self.texts = [self.labels[i] for i in keep], [self.texts[i] for i in keep]
        self.finish()

    def search(self, query, k):
        tokens = self.bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, show_progress=False)
        if not tokens.vocab:
            return []
        docs, scores = self.retriever.retrieve(tokens, k=min(k, len(self.labels)), show_progress=False)
        return [int(self.label_array[d]) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


class Tantivy(Engine):
    name = "tantivy stopwords+Snowball, 1.2/0.75"

    def __init__(self, directory: Path) -> None:
        import tantivy

        self.tantivy = tantivy
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field("label", stored=True, indexed=True, fast=True)
        builder.add_text_field("body", tokenizer_name="en_stop_stem")
        self.index = tantivy.Index(builder.build(), path=str(directory))
        analyzer = (
            tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.custom_stopword(sorted(ENGLISH_STOPWORDS)))
            .filter(tantivy.Filter.stemmer("english"))
            .build()
        )
        self.index.register_tokenizer("en_stop_stem", analyzer)
        self.writer = self.index.writer(heap_size=200_000_000, num_threads=1)

    def add(self, labels, texts):
        for label, text in zip(labels, texts, strict=True):
            doc = self.tantivy.Document()
            doc.add_unsigned("label", int(label))
            doc.add_text("body", text)
            self.writer.add_document(doc)

    def finish(self):
        self.writer.commit()
        self.index.reload()

    def upsert(self, labels, texts):
        for label in labels:
            self.writer.delete_documents_by_term("label", int(label))
        self.add(labels, texts)
        self.finish()

    def delete(self, labels):
        for label in labels:
            self.writer.delete_documents_by_term("label", int(label))
        self.finish()

    def search(self, query, k):
        words = _QUERY_WORD.findall(query)
        if not words:
            return []
        parsed = self.index.parse_query(" ".join(words), ["body"])
        searcher = self.index.searcher()
        hits = searcher.search(parsed, k).hits
        return [searcher.doc(address)["label"][0] for _, address in hits]


# -- measurements ------------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    ndcg: float = float("nan")
    recall: float = float("nan")
    ingest: float = float("nan")  # docs/s
    p50_small: float = float("nan")  # ms
    p50_large: float = float("nan")
    upsert_small: float = float("nan")  # ms per 100 documents
    delete_small: float = float("nan")
    upsert_large: float = float("nan")
    delete_large: float = float("nan")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def ingest(engine: Engine, texts: Sequence[str]) -> float:
    """Seconds to index texts (labels 0..n-1) in batches of BATCH, searchable at the end."""
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        engine.add(range(start, min(start + BATCH, len(texts))), texts[start : start + BATCH])
    engine.finish()
    return time.perf_counter() - started


def query_p50(engine: Engine, queries: Sequence[str], k: int = 10) -> float:
    for query in queries[:20]:  # warm caches
        engine.search(query, k)
    return 1e3 * statistics.median(timed(lambda q=q: engine.search(q, k)) for q in queries)


def update_costs(engine: Engine, texts: Sequence[str], rounds: int) -> tuple[float, float]:
    """Median ms to replace BATCH documents with other texts, and to delete BATCH (then put them back)."""
    rng = np.random.default_rng(7)
    upserts, deletes = [], []
    for _ in range(rounds):
        labels = sorted(rng.choice(len(texts), BATCH, replace=False).tolist())
        replacement = [texts[i] for i in rng.choice(len(texts), BATCH, replace=False)]
        upserts.append(timed(lambda labels=labels, texts=replacement: engine.upsert(labels, texts)))
        deletes.append(timed(lambda labels=labels: engine.delete(labels)))
        original = [texts[i] for i in labels]
        if engine.static:
            engine.add(labels, original)
            engine.finish()
        else:
            engine.upsert(labels, original)
    return 1e3 * statistics.median(upserts), 1e3 * statistics.median(deletes)


def measure_small(engine: Engine, data: SciFact, row: Row) -> None:
    row.ingest = len(data.texts) / ingest(engine, data.texts)
    run = {qid: [data.doc_ids[x] for x in engine.search(text, 100)] for qid, text in data.queries.items()}
    quality = evaluate(data, run)
    row.ndcg, row.recall = quality["ndcg@10"], quality["recall@100"]
    row.p50_small = query_p50(engine, list(data.queries.values()))
    row.upsert_small, row.delete_small = update_costs(engine, data.texts, 3 if engine.static else 10)


def measure_large(engine: Engine, texts: list[str], queries: list[str], row: Row) -> float:
    seconds = ingest(engine, texts)
    row.p50_large = query_p50(engine, queries)
    row.upsert_large, row.delete_large = update_costs(engine, texts, 1 if engine.static else 5)
    return seconds


def synthetic_corpus(count: int, scifact: SciFact, sts_dir: Path) -> list[str]:
    """count documents, each the first half of one sentence + the second half of another (seeded)."""
    pool: dict[str, None] = {}
    for _, first, second in sts_rows(sts_dir, ("sts-train.csv", "sts-dev.csv", "sts-test.csv")):
        pool.setdefault(first)
        pool.setdefault(second)
    for text in scifact.texts:
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if len(sentence.split()) >= 4:
                pool.setdefault(sentence)
    sentences = [s.split() for s in pool]
    rng = np.random.default_rng(2026)
    firsts, seconds = rng.integers(0, len(sentences), count), rng.integers(0, len(sentences), count)
    out = []
    for a, b in zip(firsts.tolist(), seconds.tolist(), strict=True):
        x, y = sentences[a], sentences[b]
        out.append(" ".join(x[: max(1, len(x) // 2)] + y[len(y) // 2 :]))
    return out


def fmt(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def print_table(rows: list[Row], large: int) -> None:
    size = f"{large // 1000}k" if large < 1_000_000 else f"{large / 1e6:g}M"
    print(
        f"| engine / config | nDCG@10 | Recall@100 | ingest docs/s | query p50 ms (5k) | query p50 ms ({size}) "
        f"| upsert 100 ms (5k) | delete 100 ms (5k) | upsert 100 ms ({size}) | delete 100 ms ({size}) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.name} | {fmt(r.ndcg)} | {fmt(r.recall)} | {fmt(r.ingest, 0)} | {fmt(r.p50_small, 2)} "
            f"| {fmt(r.p50_large, 2)} | {fmt(r.upsert_small, 1)} | {fmt(r.delete_small, 1)} "
            f"| {fmt(r.upsert_large, 1)} | {fmt(r.delete_large, 1)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact-dir", type=Path, default=DEFAULT_SCIFACT_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS Benchmark folder")
    parser.add_argument("--large", type=int, default=1_000_000, help="documents of the large corpus (0: skip)")
    parser.add_argument("--large-queries", type=int, default=200)
    parser.add_argument("--engines", default="lexical,fts5,bm25s,tantivy")
    args = parser.parse_args()
    wanted = set(args.engines.split(","))
    data = load_scifact(args.scifact_dir)
    queries = list(data.queries.values())
    workdir = Path(tempfile.mkdtemp(prefix="lexical-engines-"))

    default = Analyzer()  # for counting terms only: each engine gets its own (its stem cache starts cold)
    configs: list[Callable[[], Engine]] = []
    if "lexical" in wanted:
        configs += [
            lambda: Lexical("LexicalIndex stopwords+Snowball, k1 0.9 b 0.4 (default)", Analyzer(), 0.9, 0.4),
            lambda: Lexical("LexicalIndex stopwords+Snowball, k1 1.2 b 0.75", Analyzer(), 1.2, 0.75),
            lambda: Lexical("LexicalIndex stopwords+Snowball, k1 1.5 b 0.75", Analyzer(), 1.5, 0.75),
            lambda: Lexical("LexicalIndex no stemming, k1 0.9 b 0.4", Analyzer(stemming=False), 0.9, 0.4),
            lambda: Lexical("LexicalIndex no stopwords, k1 0.9 b 0.4", Analyzer(stopwords=False), 0.9, 0.4),
            lambda: Lexical("LexicalIndex neither, k1 0.9 b 0.4", Analyzer(False, False), 0.9, 0.4),
        ]
    if "fts5" in wanted:
        configs.append(lambda: Fts5(Path(tempfile.mkdtemp(dir=workdir))))
    if "bm25s" in wanted:
        configs.append(Bm25s)
    if "tantivy" in wanted:
        configs.append(lambda: Tantivy(Path(tempfile.mkdtemp(dir=workdir))))

    large_texts: list[str] = []
    if args.large:
        started = time.perf_counter()
        large_texts = synthetic_corpus(args.large, data, args.data_dir)
        terms = statistics.mean(len(default.terms(t)) for t in large_texts[:5000])
        print(
            f"# synthetic corpus: {len(large_texts)} documents, {terms:.1f} terms each after analysis "
            f"(built in {time.perf_counter() - started:.1f}s)",
            flush=True,
        )

    rows = []
    for make in configs:
        engine = make()
        row = Row(engine.name)
        measure_small(engine, data, row)
        engine.close()
        print(f"# {row.name}: 5k done", flush=True)
        # Speed does not depend on k1/b or on the stopword list enough to repeat the large run per config.
        if large_texts and (not isinstance(engine, Lexical) or "(default)" in row.name):
            del engine
            gc.collect()
            engine = make()
            seconds = measure_large(engine, large_texts, queries[: args.large_queries], row)
            print(f"# {row.name}: {len(large_texts)} documents ingested in {seconds:.1f}s", flush=True)
            if isinstance(engine, Lexical):
                snapshot_times(engine.index, workdir)
            engine.close()
        del engine
        gc.collect()
        rows.append(row)
    print()
    print_table(rows, args.large or 5000)


def snapshot_times(index: LexicalIndex, workdir: Path) -> None:
    path = workdir / "lexical.npz"
    write = timed(lambda: index.write(path))
    read = timed(lambda: LexicalIndex.read(path, index.analyzer, index.k1, index.b))
    print(
        f"# LexicalIndex snapshot of {len(index)} documents: {path.stat().st_size / 1e6:.0f} MB, "
        f"write {write:.1f}s, read {read:.1f}s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
