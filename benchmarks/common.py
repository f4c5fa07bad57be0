"""What the benchmarks share: the STS data, percentiles, verdict lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "stsbenchmark"


def sts_rows(data_dir: Path, files: tuple[str, ...] = ("sts-train.csv",)) -> Iterator[tuple[float, str, str]]:
    """(gold score, sentence1, sentence2) of STS Benchmark files.

    Tab-separated with no quoting (some sentences hold '"'); some lines carry two extra source fields,
    so only the first seven fields count.
    """
    for name in files:
        path = data_dir / name
        if not path.is_file():
            sys.exit(f"{path} not found: pass --data-dir with the STS Benchmark folder")
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")[:7]
            if len(fields) == 7:
                yield float(fields[4]), fields[5].strip(), fields[6].strip()


def sts_sentences(data_dir: Path, count: int | None = None, files: tuple[str, ...] = ("sts-train.csv",)) -> list[str]:
    """Unique non-empty sentences, in file order, at most `count` (control characters and all: sts-train.csv
    has "Treasury\x12s ...", a mangled apostrophe, which the service stores as sent)."""
    seen: dict[str, None] = {}
    for _, first, second in sts_rows(data_dir, files):
        for text in (first, second):
            if text:
                seen.setdefault(text)
        if count is not None and len(seen) >= count:
            break
    return list(seen)[:count]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; nan for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def search_latencies(client, queries: list[str], collection: str, top_k: int = 10) -> list[float]:
    """Seconds of each Search through a SearchClient, one query at a time."""
    out = []
    for query in queries:
        started = time.perf_counter()
        client.search(query, collection=collection, top_k=top_k)
        out.append(time.perf_counter() - started)
    return out


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"
