"""The attribute index at 1M documents x 10 attributes: load time, and a filter's evaluation at 0.1 %, 10 %,
20 % and 90 % selectivity (medians of 5, after the column's first use). Checks its count against numpy.

    .venv/bin/python benchmarks/attribute_index.py
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

import numpy as np
from semsearch_server.filtering import parse
from semsearch_server.index.attribute_index import AttributeIndex

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def main(n: int = 1_000_000) -> None:
    rng = np.random.default_rng(0)
    r = rng.integers(0, 1000, n).tolist()
    year = rng.integers(1990, 2025, n).tolist()
    score = rng.random(n).tolist()
    lang = rng.choice(["en", "de", "fr", "es", "it"], n).tolist()
    flag = (rng.random(n) < 0.5).tolist()
    docs = [
        (
            i,
            {
                "r": r[i],
                "year": year[i],
                "score": score[i],
                "lang": lang[i],
                "flag": flag[i],
                "id2": i,
                "title": f"title {i % 5000}",
                "t": T0,
                "tags": ("a", "b"),
                "n": 1.5,
            },
        )
        for i in range(n)
    ]
    index = AttributeIndex()
    start = time.perf_counter()
    index.put_many(docs)
    put_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index.evaluate(parse("r < 1"))
    print(f"put_many {n:,} x 10: {put_seconds:.2f} s; first evaluate (freezes r): {time.perf_counter() - start:.2f} s")
    for text, fraction in [("r < 1", 0.001), ("r < 100", 0.1), ('lang == "en"', 0.2), ("r < 900", 0.9)]:
        tree = parse(text)
        index.evaluate(tree)  # freezes the column
        times = []
        for _ in range(5):
            start = time.perf_counter()
            got = index.evaluate(tree)
            times.append(time.perf_counter() - start)
        print(f"{text} (~{fraction:.1%}): {len(got):,} matches, p50 {statistics.median(times) * 1000:.1f} ms")
    assert len(index.evaluate(parse("r < 100"))) == sum(1 for x in r if x < 100)


if __name__ == "__main__":
    main()
