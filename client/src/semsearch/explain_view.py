"""Renders an ExplainResult for people: terminal text, a PNG heatmap and a self-contained HTML heatmap.

Only numpy and the standard library are needed; matplotlib is imported inside write_png alone, so
the client stays light unless the ``semsearch-client[plot]`` extra is installed.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Literal

import numpy as np

from semsearch.types import ExplainResult, Segment

ATTENTION_CAVEAT = (
    "Attention shows where the model looks, not why the score is what it is; "
    "the contributions above are the explanation."
)
_EIGHTHS = " ▏▎▍▌▋▊▉"
_NEGATIVE_CHAR = "░"  # negative shares get a hollow bar so they stand out without colour
_LABEL_WIDTH = 22

__all__ = [
    "ATTENTION_CAVEAT",
    "render_attention",
    "render_ranking",
    "render_text",
    "write_html",
    "write_png",
]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def render_ranking(result: ExplainResult, width: int = 30) -> str:
    """Where a stored document ranks and why: the bar it had to clear, BM25 term by term, the fusion.

    Returns:
        Multi-line text (no trailing newline), e.g. "Ranked 37th (hybrid, top 10): needed 0.6100, had 0.5400".
    """
    r = result.ranking
    if r is None:
        return ""
    score_name = {"dense": "cosine", "lexical": "BM25", "hybrid": "fused score"}[r.mode]
    if r.excluded_by:
        head = f"Excluded by the filter ({r.mode}): {r.excluded_by}"
    elif r.top_k == 0:
        head = f"Score {result.score:.4f} ({score_name}, {r.mode}); give top_k for the rank"
    elif r.rank == 0:
        head = f"Not among the documents this filter keeps ({r.mode})."
    elif r.rank <= r.top_k:
        head = f"Ranked {_ordinal(r.rank)} ({r.mode}, top {r.top_k}): {score_name} {result.score:.4f}"
        if r.kth_score:
            head += f"; the {_ordinal(r.top_k)} hit had {r.kth_score:.4f}"
    else:
        head = (
            f"Ranked {_ordinal(r.rank)} ({r.mode}, top {r.top_k}): needed {r.kth_score:.4f}, "
            f"had {result.score:.4f} ({score_name})"
        )
    lines = [head]
    if r.passage is not None and r.mode != "lexical":
        lines.append(
            f"  dense: cosine {r.dense_score:.4f} (passage {r.passage.index}, chars {r.passage.start}-{r.passage.end})"
        )
    if r.mode == "hybrid":
        if r.fusion == "rrf":
            parts = [f"1/({r.rrf_k}+{r.dense_rank})" if r.dense_rank else "0 (not in the dense list)"]
            parts.append(f"1/({r.rrf_k}+{r.lexical_rank})" if r.lexical_rank else "0 (not in the lexical list)")
            lines.append(f"  fused (rrf) = {' + '.join(parts)} = {result.score:.4f}")
        else:
            lines.append(
                f"  fused = {r.dense_weight:.2f} x ({r.dense_score:.4f} - {r.dense_min:.4f}) / "
                f"({r.dense_max:.4f} - {r.dense_min:.4f}) + {1 - r.dense_weight:.2f} x {r.lexical_score:.4f} / "
                f"{r.lexical_max:.4f} = {result.score:.4f}"
            )
    if r.mode != "dense":
        matched = [t for t in r.lexical_terms if t.contribution > 0]
        if not matched:
            lines.append("  lexical: no query term matched")
        else:
            lines.append(f"  lexical: BM25 {r.lexical_score:.4f}, term by term:")
            scale = max(t.contribution for t in matched)
            for t in r.lexical_terms:
                bar = _bar(t.contribution, scale, width) if t.contribution > 0 else ""
                plural = "" if t.document_frequency == 1 else "s"
                where = f"tf {t.term_frequency}, in {t.document_frequency:,} document{plural}"
                lines.append(f"    {t.query_text[:_LABEL_WIDTH]:<{_LABEL_WIDTH}} {t.contribution:+.4f} {bar}  {where}")
    return "\n".join(lines)


def render_text(result: ExplainResult, query: str, doc: str, top_pairs: int = 8, width: int = 30) -> str:
    """Renders the score and each side's word contributions as bars, for a terminal.

    Args:
        result: the explanation.
        query: the query text that was explained.
        doc: the document text that was explained.
        top_pairs: how many (query word, doc word) pairs to list, largest |contribution| first.
        width: the length in characters of the longest bar.

    Returns:
        Multi-line text ending with a newline.
    """
    scale = max(
        (abs(s.contribution) for s in [*result.query_segments, *result.doc_segments]),
        default=0.0,
    )
    dense = result.score if result.ranking is None or result.ranking.mode == "dense" else result.ranking.dense_score
    if result.ranking is None or result.ranking.mode == "dense":
        lines = [f"Score {dense:.4f} (cosine similarity)"]
    else:
        lines = [f"Dense part: cosine {dense:.4f} of the best passage, word by word"]
    recomputed = sum(s.contribution for s in result.query_segments)
    if not math.isclose(result.index_score, recomputed, abs_tol=1e-4):
        lines.append(f"  The index reported {result.index_score:.4f}; the explanation recomputes {recomputed:.4f}.")
    for title, text, segments in (
        ("Query", query, result.query_segments),
        ("Document", doc, result.doc_segments),
    ):
        lines += ["", f"{title}: {_shorten(text, 70)}"]
        lines += [_segment_line(segment, scale, width) for segment in segments]

    pairs = _top_pairs(result, top_pairs)
    if pairs:
        lines += ["", f"Top {len(pairs)} word pairs (query ↔ document):"]
        for row, col in pairs:
            value = float(result.pair_contributions[row, col])
            left = _label(result.query_segments[row])
            right = _label(result.doc_segments[col])
            lines.append(f"  {value:+.4f}  {left} ↔ {right}")

    notes = _truncation_notes(result, query, doc) + list(result.notes)
    if notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in notes]
    lines += [
        "",
        (
            f"Legend: █ adds to the score, {_NEGATIVE_CHAR} takes away; each side's contributions "
            f"(and all pairs) add up to {explained_sum(result)}."
        ),
    ]
    return "\n".join(lines) + "\n"


def explained_sum(result: ExplainResult) -> str:
    """What the word and pair contributions add up to, named: the score in dense mode; in lexical and hybrid
    the dense part's cosine, which is what they decompose (BM25 has its own terms, the fusion its formula)."""
    total = sum(s.contribution for s in result.query_segments)
    r = result.ranking
    if r is None or r.mode == "dense":
        return f"the score {total:.4f}"
    return f"the dense part's cosine {total:.4f} (the {r.mode} score, {result.score:.4f}, is explained above)"


def render_attention(result: ExplainResult, side: Literal["query", "doc"], top: int = 3) -> str:
    """Lists, for each segment of one side, the segments it attends to most in the model's self-attention.

    Args:
        result: the explanation, asked for with attention.
        side: "query" or "doc".
        top: how many attended segments to list per segment (the segment itself is left out).

    Returns:
        Multi-line text ending with a newline, always with the caveat that attention is not the
        explanation of the score.

    Raises:
        ValueError: ``side`` is neither "query" nor "doc".
    """
    if side not in ("query", "doc"):
        raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
    matrix = result.query_self_attention if side == "query" else result.doc_self_attention
    segments = result.query_segments if side == "query" else result.doc_segments
    if matrix is None:
        return f"No self-attention for the {side}: ask Explain with attention included.\n{ATTENTION_CAVEAT}\n"
    head = "mean over heads" if result.attention_head == -1 else f"head {result.attention_head}"
    lines = [f"Self-attention of the {side}, layer {result.attention_layer}, {head}:"]
    for row, segment in enumerate(segments):
        order = [col for col in np.argsort(-matrix[row], kind="stable") if col != row][:top]
        attended = ", ".join(f"{_label(segments[col])} {matrix[row, col]:.2f}" for col in order)
        lines.append(f"  {_label(segment):<{_LABEL_WIDTH}} → {attended}")
    lines.append(ATTENTION_CAVEAT)
    return "\n".join(lines) + "\n"


def write_png(result: ExplainResult, path: str | Path) -> None:
    """Writes a heatmap of the pair contributions, query words down and document words across.

    Args:
        result: the explanation.
        path: where to write the PNG.

    Raises:
        ImportError: matplotlib is not installed (it comes with ``semsearch-client[plot]``).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("write_png needs matplotlib: pip install 'semsearch-client[plot]'") from err
    matplotlib.use("Agg")  # no display needed; safe in servers and CI
    from matplotlib import pyplot as plt

    pairs = np.asarray(result.pair_contributions, dtype=np.float64)
    rows, cols = pairs.shape
    limit = float(np.abs(pairs).max()) or 1.0  # centre the colour map on zero
    figure, axes = plt.subplots(figsize=(max(6.0, 2.0 + 0.45 * cols), max(3.5, 1.5 + 0.35 * rows)))
    try:
        image = axes.imshow(pairs, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        axes.set_xticks(
            range(cols),
            [_label(s) for s in result.doc_segments],
            rotation=60,
            ha="right",
        )
        axes.set_yticks(range(rows), [_label(s) for s in result.query_segments])
        axes.set_xlabel("document")
        axes.set_ylabel("query")
        axes.set_title(
            f"pair contributions: they add up to {explained_sum(result)}\n(blue adds, red takes away)",
            fontsize=9,
        )
        figure.colorbar(image, ax=axes, label="contribution")
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)


def write_html(result: ExplainResult, path: str | Path) -> None:
    """Writes a self-contained HTML page (no scripts, no network) with the pair heatmap as a table.

    Args:
        result: the explanation.
        path: where to write the HTML file.
    """
    pairs = np.asarray(result.pair_contributions, dtype=np.float64)
    limit = float(np.abs(pairs).max()) or 1.0
    header = "".join(f"<th class=col>{_escaped_label(s)}</th>" for s in result.doc_segments)
    body = []
    for row, segment in enumerate(result.query_segments):
        cells = "".join(_html_cell(float(v), limit) for v in pairs[row])
        body.append(f"<tr><th>{_escaped_label(segment)}</th>{cells}<td class=sum>{segment.contribution:+.4f}</td></tr>")
    totals = "".join(f"<td class=sum>{s.contribution:+.4f}</td>" for s in result.doc_segments)
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in result.notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>semsearch explain: score {result.score:.4f}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: right; }}
th.col {{ writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }}
td.sum {{ font-weight: bold; background: #f4f4f4; }}
</style></head><body>
<h1>Score {result.score:.4f}</h1>
<p>Each cell is the share of the score owed to one (query word, document word) pair; blue adds,
red takes away. Row totals are the query words' contributions, column totals the document words';
every total adds up to the score.</p>
<table>
<tr><th>query \\ document</th>{header}<th>total</th></tr>
{"".join(body)}
<tr><th>total</th>{totals}<td class=sum>{result.score:+.4f}</td></tr>
</table>
{f"<ul>{notes}</ul>" if notes else ""}
</body></html>
"""
    Path(path).write_text(page, encoding="utf-8")


def _segment_line(segment: Segment, scale: float, width: int) -> str:
    label = _label(segment)
    tag = " special" if segment.special else ""
    return f"  {label:<{_LABEL_WIDTH}} {segment.contribution:+.4f} {_bar(segment.contribution, scale, width)}{tag}"


def _bar(value: float, scale: float, width: int) -> str:
    """A bar of length proportional to |value|, in eighths of a character; hollow when negative."""
    if scale <= 0.0:
        return ""
    eighths = round(abs(value) / scale * width * 8)
    if value < 0:
        return _NEGATIVE_CHAR * max(1 if eighths else 0, round(eighths / 8))
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _top_pairs(result: ExplainResult, count: int) -> list[tuple[int, int]]:
    pairs = np.asarray(result.pair_contributions)
    if count <= 0 or pairs.size == 0:
        return []
    flat = np.argsort(-np.abs(pairs), axis=None, kind="stable")[:count]
    return [tuple(int(i) for i in np.unravel_index(index, pairs.shape)) for index in flat]


def _truncation_notes(result: ExplainResult, query: str, doc: str) -> list[str]:
    notes = []
    for name, text, truncated, segments in (
        ("query", query, result.query_truncated, result.query_segments),
        ("document", doc, result.doc_truncated, result.doc_segments),
    ):
        if truncated:
            seen = max((s.end for s in segments if not s.special), default=0)
            notes.append(
                f"The {name} was longer than the model's window: only its first {seen} of {len(text)} "
                "characters were read, as when it is searched."
            )
    return notes


def _label(segment: Segment) -> str:
    return _shorten(segment.text, _LABEL_WIDTH - 2)


def _escaped_label(segment: Segment) -> str:
    label = html.escape(_label(segment))
    return f"<i>{label}</i>" if segment.special else label


def _html_cell(value: float, limit: float) -> str:
    strength = min(1.0, abs(value) / limit)
    # Blue for positive, red for negative; paler towards zero.
    fade = round(255 * (1 - 0.75 * strength))
    red, green, blue = (fade, fade, 255) if value >= 0 else (255, fade, fade)
    return f'<td style="background: rgb({red},{green},{blue})" title="{value:+.6f}">{value:+.3f}</td>'


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
