"""The weighted fusion's dense_weight and candidate pool, swept in-process on SciFact train.

Embeds the abstracts' passages and the claims once (the server's default backend and passage splitting),
scores BM25 with the service's own lexical index, then fuses exactly as the service does (min-max cosine and
max-normalised BM25 over the candidate pool: the union of the dense and lexical top-N) for each weight and
pool size, and prints nDCG@10. At pool 100 and weight 0.5 it reproduces the service's figure from
retrieval_quality.py, which is what makes the sweep worth reading.

    python benchmarks/fusion_sweep.py [--scifact-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_quality import exact_scores, ranked  # noqa: E402
from scifact import DEFAULT_SCIFACT_DIR, evaluate, load_scifact  # noqa: E402

POOLS = (50, 100, 200, 400, None)  # None: every document
WEIGHTS = (0.4, 0.5, 0.6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact-dir", type=Path, default=DEFAULT_SCIFACT_DIR)
    args = parser.parse_args()
    data = load_scifact(args.scifact_dir)
    scores = exact_scores(data, truncated=False)
    dense, lexical = scores["dense_on"], scores["lexical"]

    def ndcg(fused: np.ndarray) -> float:
        return evaluate(data, ranked(data, fused))["ndcg@10"]

    print(f"dense {ndcg(dense):.4f}  lexical {ndcg(np.where(lexical > 0, lexical, -np.inf)):.4f}")
    for pool in POOLS:
        for weight in WEIGHTS:
            fused = np.full_like(dense, -np.inf)
            for i in range(len(dense)):
                if pool is None:
                    candidates = np.arange(dense.shape[1])
                else:
                    top_lexical = np.argsort(-lexical[i])[:pool]
                    candidates = np.union1d(np.argsort(-dense[i])[:pool], top_lexical[lexical[i][top_lexical] > 0])
                d, b = dense[i, candidates], lexical[i, candidates]
                fused[i, candidates] = weight * (d - d.min()) / (d.max() - d.min()) + (1 - weight) * b / max(
                    b.max(), 1e-9
                )
            print(f"pool {pool} w {weight}: nDCG@10 {ndcg(fused):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
