"""A 2-D map of a query and its hits: PCA of their embeddings (numpy), drawn with matplotlib.

The console draws the same map in the browser (PCA of the same Embed vectors, the same sign convention:
the query on the negative side of each axis). A projection to two dimensions distorts distances; the
scores are the truth, and the picture says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NOTE = "A 2-D projection distorts distances: nearness here is a hint, the scores are the truth."


@dataclass(frozen=True)
class Projection:
    """Points in 2-D: row 0 is the query. `explained` is each axis's share of the spread."""

    coords: np.ndarray
    explained: tuple[float, float]


def project(vectors: np.ndarray) -> Projection:
    """The first two principal components of `vectors` (row 0 the query), each signed so the query is <= 0.

    Args:
        vectors: (n, d) embeddings, n >= 2.

    Returns:
        The (n, 2) coordinates and the share of the variance each component holds.
    """
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    coords = np.zeros((len(x), 2))
    k = min(2, len(s))
    coords[:, :k] = u[:, :k] * s[:k]
    coords[:, :k] *= np.where(coords[0, :k] > 0, -1.0, 1.0)
    total = float((s**2).sum())
    shares = [(float(v**2) / total if total else 0.0) for v in s[:2]] + [0.0, 0.0]
    return Projection(coords, (shares[0], shares[1]))


def write_map_png(query: str, ids: Sequence[str], scores: Sequence[float], projection: Projection, path) -> None:
    """Writes the map: the query as a black diamond, hit i as a circle coloured by its score, labelled `rank. id`.

    Raises:
        ImportError: matplotlib is not installed (it comes with ``semsearch-client[plot]``).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("write_map_png needs matplotlib: pip install 'semsearch-client[plot]'") from err
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    xy = projection.coords
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=110)
    points = ax.scatter(
        xy[1:, 0],
        xy[1:, 1],
        c=list(scores),
        cmap="Oranges",
        vmin=min(scores) - 0.2 * (max(scores) - min(scores) or 1),
        s=90,
        edgecolors="#8a3b12",
        zorder=3,
    )
    ax.scatter([xy[0, 0]], [xy[0, 1]], marker="D", c="#1d2329", s=80, zorder=4)
    ax.annotate("query", xy[0], xytext=(8, -3), textcoords="offset points", fontweight="bold")
    for rank, (doc_id, point) in enumerate(zip(ids, xy[1:], strict=True), 1):
        ax.annotate(f"{rank}. {doc_id}", point, xytext=(8, -3), textcoords="offset points")
    fig.colorbar(points, ax=ax, label="score")
    ax.set_xlabel(f"PC1 ({projection.explained[0]:.0%} of the spread)")
    ax.set_ylabel(f"PC2 ({projection.explained[1]:.0%})")
    ax.set_title(f"{_shorten(query, 60)!r} and its hits", fontsize=11)
    fig.text(0.01, 0.01, NOTE, fontsize=8, color="#5b6670")
    ax.margins(0.15)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(Path(path))
    plt.close(fig)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
