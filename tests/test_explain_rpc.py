"""Explain over gRPC: the numbers add up to what Search reports, and the CLI shows them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from semsearch import FailedPreconditionError, InvalidArgumentError

# Behaviour: every test that uses the server runs on the local and on the Milvus store.
pytestmark = pytest.mark.both_stores

QUERY = "I drink water with wine"


def test_explain_stored_document_adds_up_to_the_search_score(client):
    hits = {h.id: h.score for h in client.search(QUERY, collection="demo", top_k=5)}
    result = client.explain(QUERY, doc_id="c5", collection="demo")
    assert result.score == pytest.approx(hits["c5"], abs=1e-5)
    assert result.index_score == pytest.approx(hits["c5"], abs=1e-5)
    assert result.pair_contributions.shape == (len(result.query_segments), len(result.doc_segments))
    assert result.pair_contributions.sum() == pytest.approx(result.score, abs=1e-5)
    assert sum(s.contribution for s in result.query_segments) == pytest.approx(result.score, abs=1e-5)
    assert sum(s.contribution for s in result.doc_segments) == pytest.approx(result.score, abs=1e-5)
    np.testing.assert_allclose(result.cross_attention.sum(axis=1), 1.0, atol=1e-5)
    doc = "I drink a white-wine mix"
    for seg in result.doc_segments:
        if not seg.special:
            assert doc[seg.start : seg.end] == seg.text
    assert [s.text for s in result.query_segments if s.special] == ["[CLS]", "[SEP]"]
    assert result.notes == []


def test_explain_free_text_with_attention(client):
    sentence = "The animal was not swimming in the sea because it was running on the street."
    result = client.explain(
        "where is the animal", doc_text=sentence, include_attention=True, attention_layer=2, attention_head=5
    )
    n = len(result.doc_segments)
    assert result.doc_self_attention.shape == (n, n)
    np.testing.assert_allclose(result.doc_self_attention.sum(axis=1), 1.0, atol=1e-4)
    words = [s.text for s in result.doc_segments]
    row = result.doc_self_attention[words.index("it")]
    ranked = [words[i] for i in np.argsort(-row) if words[i] not in ("it", "[CLS]", "[SEP]")]
    assert set(ranked[:2]) == {"animal", "street"}
    assert (result.attention_layer, result.attention_head) == (2, 5)


def test_explain_token_granularity_and_truncation_note(client):
    long_doc = " ".join(["extraordinarily"] * 300)
    result = client.explain("words", doc_text=long_doc, granularity="token")
    assert result.doc_truncated and any("truncated" in note for note in result.notes)
    assert result.pair_contributions.sum() == pytest.approx(result.score, abs=1e-5)


def test_explain_rejects_bad_layer_with_the_allowed_range(client):
    with pytest.raises(InvalidArgumentError, match="attention_layer"):
        client.explain(QUERY, doc_id="c1", collection="demo", include_attention=True, attention_layer=99)


def test_explain_refuses_a_model_without_mean_pooling(tmp_path, cls_model_dir=None):
    import json
    import shutil

    from conftest import InProcessServer
    from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder, default_model_path
    from semsearch_server.wiring import _build_explainer

    model = tmp_path / "cls-model"
    shutil.copytree(default_model_path(), model)
    pooling = model / "1_Pooling" / "config.json"
    pooling.write_text(
        json.dumps(
            {**json.loads(pooling.read_text()), "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
        )
    )
    embedder = SentenceTransformerEmbedder(str(model))
    srv = InProcessServer(tmp_path / "data", embedder, _build_explainer(embedder))
    try:
        with pytest.raises(FailedPreconditionError, match="mean"):
            srv.client.explain("a", doc_text="b")
        assert len(srv.client.search("a")) == 0  # the rest of the service works with that model
    finally:
        srv.stop()


def test_cli_explain_prints_bars_pairs_and_writes_png_and_html(server, tmp_path):
    png, html = tmp_path / "pairs.png", tmp_path / "pairs.html"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "semsearch.cli",
            "explain",
            QUERY,
            "--doc-id",
            "c5",
            "--collection",
            "demo",
            "--attention",
            "--png",
            str(png),
            "--html",
            str(html),
            "--address",
            server.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "white" in out.stdout and "drink" in out.stdout
    assert "not why the score is what it is" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table" in html.read_text()
