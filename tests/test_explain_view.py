"""Rendering of a hand-made ExplainResult: text, attention text, PNG and HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from semsearch.explain_view import (
    ATTENTION_CAVEAT,
    render_attention,
    render_text,
    write_html,
    write_png,
)
from semsearch.types import ExplainResult, Segment

QUERY = "bake bread"
DOC = "a <script> loaf"


def make_result(with_attention: bool = True, truncated: bool = False) -> ExplainResult:
    query_segments = [
        Segment("[CLS]", 0, 0, 0.10, True),
        Segment("bake", 0, 4, 0.25, False),
        Segment("bread", 5, 10, 0.30, False),
        Segment("[SEP]", 10, 10, 0.05, True),
    ]
    doc_segments = [
        Segment("[CLS]", 0, 0, 0.12, True),
        Segment("a", 0, 1, -0.04, False),
        Segment("<script>", 2, 10, 0.02, False),
        Segment("loaf", 11, 15, 0.55, False),
        Segment("[SEP]", 15, 15, 0.05, True),
    ]
    pairs = np.array(
        [
            [0.03, -0.01, 0.00, 0.07, 0.01],
            [0.03, -0.01, 0.01, 0.21, 0.01],
            [0.05, -0.01, 0.01, 0.24, 0.01],
            [0.01, -0.01, 0.00, 0.03, 0.02],
        ]
    )
    # The hand-made numbers keep the real invariants: row/column sums are the segment contributions.
    assert np.allclose(pairs.sum(axis=1), [s.contribution for s in query_segments])
    assert np.allclose(pairs.sum(axis=0), [s.contribution for s in doc_segments])
    cross = np.full((4, 5), 0.2)
    query_attention = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.2, 0.1, 0.6, 0.1],
            [0.3, 0.5, 0.1, 0.1],
            [0.4, 0.2, 0.2, 0.2],
        ]
    )
    doc_attention = np.full((5, 5), 0.2)
    return ExplainResult(
        score=0.9,
        query_segments=query_segments,
        doc_segments=doc_segments,
        pair_contributions=pairs,
        cross_attention=cross,
        query_self_attention=query_attention if with_attention else None,
        doc_self_attention=doc_attention if with_attention else None,
        attention_layer=5,
        attention_head=-1,
        query_truncated=False,
        doc_truncated=truncated,
        index_score=0.9,
        notes=["served from collection 'recipes'"],
    )


def test_render_text_shows_score_words_bars_and_pairs() -> None:
    text = render_text(make_result(), QUERY, DOC, top_pairs=3, width=20)
    assert "0.9000" in text
    for word in ("bake", "bread", "<script>", "loaf", "[CLS]", "[SEP]"):
        assert word in text
    assert "█" in text and "░" in text  # positive and negative bars differ
    assert "special" in text
    loaf_line = next(line for line in text.splitlines() if line.strip().startswith("loaf"))
    assert "█" * 20 in loaf_line  # the largest contribution gets the full width
    negative_line = next(line for line in text.splitlines() if line.strip().startswith("a "))
    assert "-0.0400" in negative_line and "█" not in negative_line
    assert "Top 3 word pairs" in text and "bread ↔ loaf" in text
    total = sum(seg.contribution for seg in make_result().query_segments)
    assert f"add up to the score {total:.4f}." in text  # the sum of what is shown, named
    assert "served from collection 'recipes'" in text


def test_a_hybrid_legend_names_the_sum_its_numbers_add_up_to() -> None:
    from dataclasses import replace

    from semsearch.types import Ranking

    ranking = Ranking("hybrid", 1, 10, 0.05, 0.70, 3.1, [], None, "weighted", 0.6, 0.1, 0.8, 3.1)
    result = replace(make_result(), score=0.0644, ranking=ranking)
    text = render_text(result, QUERY, DOC)
    total = sum(seg.contribution for seg in result.query_segments)
    assert f"add up to the dense part's cosine {total:.4f} (the hybrid score, 0.0644, is explained above)" in text
    assert "add up to the score" not in text


def test_render_text_notes_truncation() -> None:
    text = render_text(make_result(truncated=True), QUERY, DOC + " and much more text")
    assert "document was longer than the model's window" in text
    assert "first 15 of" in text


def test_render_attention_lists_top_words_with_caveat() -> None:
    text = render_attention(make_result(), "query", top=1)
    assert "layer 5, mean over heads" in text
    bake_line = next(line for line in text.splitlines() if line.strip().startswith("bake"))
    assert "bread 0.60" in bake_line  # its own weight is left out
    assert ATTENTION_CAVEAT in text
    assert ATTENTION_CAVEAT in render_attention(make_result(with_attention=False), "doc")
    with pytest.raises(ValueError, match="side"):
        render_attention(make_result(), "both")  # type: ignore[arg-type]


def test_write_png_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "explain.png"
    write_png(make_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_html_escapes_text(tmp_path: Path) -> None:
    path = tmp_path / "explain.html"
    write_html(make_result(), path)
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "0.9000" in page and "loaf" in page and "bread" in page
    assert "http" not in page  # nothing fetched from the network
