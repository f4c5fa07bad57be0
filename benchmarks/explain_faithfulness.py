"""Is Explain faithful? ERASER comprehensiveness of word contributions on STS-B dev pairs.

For each (sentence1 = query, sentence2 = doc) pair with gold similarity >= 3, the doc's words are
ranked three ways: by Explain's word contributions, at random (10 orderings), and by leave-one-out
occlusion (delete each word, re-encode, score drop; what txtai's explain does, one forward pass per
word). Deleting the top 10/20/30/50% of the doc's words and re-encoding gives a score drop per level;
their mean is the AOPC (higher = the ranking found the words the score really depends on).

Run from the repository root:
    HF_HUB_OFFLINE=1 PYTHONPATH=server/src .venv/bin/python benchmarks/explain_faithfulness.py
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA_DIR, sts_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LEVELS = (0.1, 0.2, 0.3, 0.5)
RANDOM_ORDERINGS = 10


@dataclass(frozen=True)
class Pair:
    query: str
    doc: str
    gold: float


def load_pairs(data_dir: Path, count: int, seed: int, min_gold: float = 3.0) -> list[Pair]:
    """Picks ``count`` sts-dev.csv pairs with gold >= ``min_gold``, at random with ``seed``."""
    pairs = [
        Pair(query, doc, gold)
        for gold, query, doc in sts_rows(data_dir, ("sts-dev.csv",))
        if gold >= min_gold and query and doc
    ]
    return random.Random(seed).sample(pairs, min(count, len(pairs)))


def delete_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with the given character spans removed (the tokenizer ignores the leftover spaces)."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + text[end:]
    return text


def encode(model, texts: list[str]) -> np.ndarray:
    return model.encode(
        texts,
        batch_size=64,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def leave_one_out(model, query: str, doc: str, spans: list[tuple[int, int]]) -> tuple[list[int], float]:
    """Ranks words by the score drop when each alone is deleted; returns (ranking, seconds taken)."""
    started = time.perf_counter()
    vectors = encode(model, [query, doc, *(delete_spans(doc, [span]) for span in spans)])
    drops = vectors[0] @ vectors[1] - vectors[2:] @ vectors[0]
    seconds = time.perf_counter() - started
    return sorted(range(len(spans)), key=lambda k: -drops[k]), seconds


def aopc(
    model,
    query_vector: np.ndarray,
    doc: str,
    spans: list[tuple[int, int]],
    rankings: list[list[int]],
) -> list[float]:
    """Mean score drop over LEVELS when each ranking's top words are deleted, one value per ranking."""
    base = float(encode(model, [doc])[0] @ query_vector)
    edited = []
    for ranking in rankings:
        for level in LEVELS:
            top = ranking[: max(1, math.ceil(level * len(spans)))]
            edited.append(delete_spans(doc, [spans[k] for k in top]))
    drops = base - encode(model, edited) @ query_vector
    return [float(value) for value in drops.reshape(len(rankings), len(LEVELS)).mean(axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with sts-dev.csv",
    )
    parser.add_argument("--pairs", type=int, default=200, help="number of pairs (gold >= 3)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--model",
        default=None,
        help="sentence-transformers model dir (default: all-MiniLM-L6-v2)",
    )
    args = parser.parse_args()

    import torch
    from semsearch_server.embedding.explain import Explainer
    from semsearch_server.embedding.sentence_transformer import default_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_grad_enabled(False)
    model_path = args.model or default_model_path()
    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    explainer = Explainer(model, str(model_path))
    pairs = load_pairs(args.data_dir.resolve(), args.pairs, args.seed)
    rng = np.random.default_rng(args.seed)
    explainer.explain("warm up", "the model")  # first calls pay one-off allocation costs

    scores: dict[str, list[float]] = {
        "contributions": [],
        "random": [],
        "leave-one-out": [],
    }
    explain_seconds, loo_seconds = [], []
    started = time.perf_counter()
    for pair in pairs:
        tick = time.perf_counter()
        explanation = explainer.explain(pair.query, pair.doc)
        explain_seconds.append(time.perf_counter() - tick)
        words = [s for s in explanation.doc_segments if not s.special]
        spans = [(s.start, s.end) for s in words]
        by_contribution = sorted(range(len(words)), key=lambda k: -words[k].contribution)
        by_loo, seconds = leave_one_out(model, pair.query, pair.doc, spans)
        loo_seconds.append(seconds)
        randoms = [list(rng.permutation(len(words))) for _ in range(RANDOM_ORDERINGS)]
        values = aopc(
            model,
            explanation.query_vector,
            pair.doc,
            spans,
            [by_contribution, by_loo, *randoms],
        )
        scores["contributions"].append(values[0])
        scores["leave-one-out"].append(values[1])
        scores["random"].append(float(np.mean(values[2:])))
    total = time.perf_counter() - started

    mean = {name: float(np.mean(values)) for name, values in scores.items()}
    model_name = Path(args.model).name if args.model else "all-MiniLM-L6-v2"
    print(f"Explain faithfulness: {len(pairs)} STS-B dev pairs (gold >= 3), model {model_name}, seed {args.seed}")
    print(
        "ERASER comprehensiveness, AOPC over deleting the top "
        f"{'/'.join(f'{int(p * 100)}' for p in LEVELS)}% of doc words"
    )
    print()
    print(f"{'ranking':<16}{'AOPC':>9}{'median s/explanation':>23}")
    print(f"{'contributions':<16}{mean['contributions']:>9.4f}{statistics.median(explain_seconds):>23.4f}")
    print(f"{'leave-one-out':<16}{mean['leave-one-out']:>9.4f}{statistics.median(loo_seconds):>23.4f}")
    print(f"{'random (mean 10)':<16}{mean['random']:>9.4f}{'-':>23}")
    print()
    vs_loo = mean["contributions"] / mean["leave-one-out"]
    vs_random = mean["contributions"] / mean["random"] if mean["random"] > 0 else math.inf
    speed = statistics.median(loo_seconds) / statistics.median(explain_seconds)
    print(f"contributions / leave-one-out AOPC: {vs_loo:.3f}  target >= 0.9  {'PASS' if vs_loo >= 0.9 else 'MISS'}")
    print(
        f"contributions / random AOPC:        {vs_random:.3f}  target >= 2.0  {'PASS' if vs_random >= 2.0 else 'MISS'}"
    )
    print(f"leave-one-out / contributions median time: {speed:.2f}x")
    print(f"total wall time {total:.1f} s")


if __name__ == "__main__":
    main()
