"""The onnxruntime and OpenVINO embedders against torch, their export cache, and the backend factory.

Uses the real model. The ONNX export (~10 s) is made once per session into a shared tmp cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from semsearch_server.embedding import factory, onnx_backend
from semsearch_server.embedding.base import ModelFingerprint
from semsearch_server.embedding.routing import SizeRoutedEmbedder
from semsearch_server.embedding.sentence_transformer import (
    SentenceTransformerEmbedder,
    default_model_path,
)
from semsearch_server.files import sha256_file

MIN_COSINE = 0.9999

STS_LIKE = [
    "A plane is taking off.",
    "An air plane is taking off.",
    "A man is playing a large flute.",
    "A man is spreading shredded cheese on a pizza.",
    "Three men are playing chess.",
    "Two men are playing chess.",
    "A man is playing the cello.",
    "Some men are fighting.",
    "A woman is dancing.",
    "A cat is playing a piano?!",
    "The 2 kids were eating ice-cream (vanilla & chocolate).",
    "Naïve résumé, façade, jalapeño — and “smart quotes”.",
    "北京是中国的首都。",
    "x",
    "",
]
LONG_TEXTS = [
    "The history of the city goes back to Roman times, when a small fort guarded the river crossing. " * 4,
    "lorem ipsum dolor sit amet " * 80,  # ~400 tokens: truncated at the 256-token window
    " ".join(str(i) for i in range(600)),
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="session")
def reference() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(default_model_path())


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def onnx_embedder(reference, cache_dir):
    pytest.importorskip("onnxruntime")
    return onnx_backend.OnnxEmbedder(reference, cache_dir)


@pytest.fixture(scope="session")
def plain_onnx_dir(reference, cache_dir) -> Path:
    """The plain ONNX export: onnxruntime's fallback, and OpenVINO's when its torch frontend fails."""
    return onnx_backend.onnx_export_dir(reference, cache_dir)


@pytest.fixture(scope="session")
def openvino_embedder(reference, cache_dir):
    # The backend module first: it keeps OpenVINO's telemetry from loading, as it does in the server.
    from semsearch_server.embedding.openvino_backend import OpenVinoEmbedder

    pytest.importorskip("openvino")
    return OpenVinoEmbedder(reference, cache_dir)


@pytest.fixture(params=["onnx", "openvino"])
def runtime_embedder(request):
    return request.getfixturevalue(f"{request.param}_embedder")


def test_agrees_with_torch_in_input_order(runtime_embedder, reference):
    texts = STS_LIKE + LONG_TEXTS
    got = runtime_embedder.encode(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Row by row against torch: a reordering would show up as a low cosine.
    assert _cosines(got, reference.encode(texts)).min() >= MIN_COSINE
    # Order kept whatever the lengths: reversed input gives reversed rows, a text alone gives its row.
    np.testing.assert_allclose(runtime_embedder.encode(texts[::-1])[::-1], got, atol=2e-3)
    np.testing.assert_allclose(runtime_embedder.encode([texts[-2]])[0], got[-2], atol=2e-3)


def test_control_characters_and_rare_code_points_agree_with_torch(runtime_embedder, reference):
    # The service stores any valid UTF-8 text; every backend must embed it as torch does, not crash.
    texts = [
        "Treasury\x12s long-range plan",
        "\x00",
        "NUL\x00 bell\x07 escape\x1b[31m DEL\x7f",
        "\u0301 lone mark, \u200fRTL\u200e, \U0001f468\u200d\U0001f469 ZWJ, \U00020000",
    ]
    got = runtime_embedder.encode(texts)
    assert got.shape == (len(texts), 384) and np.isfinite(got).all()
    assert _cosines(got, reference.encode(texts)).min() >= MIN_COSINE


def test_empty_list(runtime_embedder):
    assert runtime_embedder.encode([]).shape == (0, 384)
    assert runtime_embedder.token_counts([]) == []


def test_fingerprint_and_token_counts_match_torch(runtime_embedder, reference):
    fingerprint = runtime_embedder.fingerprint
    assert fingerprint.backend == runtime_embedder.backend
    assert dataclasses.replace(fingerprint, backend="torch") == reference.fingerprint
    assert runtime_embedder.reference is reference
    texts = STS_LIKE + LONG_TEXTS
    assert runtime_embedder.token_counts(texts) == reference.token_counts(texts)


def test_counting_a_text_longer_than_the_window_does_not_warn(capfd):
    # A fresh model: transformers warns once per tokenizer, so a shared one may have used its warning up.
    fresh = SentenceTransformerEmbedder(default_model_path())
    capfd.readouterr()
    assert fresh.token_counts(["word " * 400, "short"]) == [402, 3]
    assert "indexing errors" not in capfd.readouterr().err


def test_openvino_precision_is_recorded(openvino_embedder):
    assert openvino_embedder.precision in ("bf16", "f32")


def test_onnxruntime_runs_the_fused_graph(onnx_embedder, reference):
    # The default model's attention, layer norms and GELU become single onnxruntime kernels.
    assert onnx_embedder.model_dir.parent.name == "onnx-fused"
    manifest = json.loads((onnx_embedder.model_dir / onnx_backend.MANIFEST_FILE).read_text())
    assert manifest["fused"]["Attention"] == 6
    assert manifest["weights_sha256"] == reference.fingerprint.weights_sha256


def test_a_failed_fusion_falls_back_to_the_plain_export(
    onnx_embedder, plain_onnx_dir, reference, tmp_path, monkeypatch, caplog
):
    cache = tmp_path / "cache"
    shutil.copytree(plain_onnx_dir, cache / "onnx" / plain_onnx_dir.name)

    def failing_fusion(*args, **kwargs):
        raise RuntimeError("no fusion today")

    monkeypatch.setattr(onnx_backend, "_export_fused", failing_fusion)
    with caplog.at_level(logging.WARNING, logger=onnx_backend.__name__):
        plain = onnx_backend.OnnxEmbedder(reference, cache)
    assert plain.model_dir == onnx_backend.artifact_dir(cache, "onnx", reference.fingerprint)
    assert "no fusion today" in caplog.text
    assert not (onnx_backend.artifact_dir(cache, "onnx-fused", reference.fingerprint)).exists()
    assert _cosines(plain.encode(STS_LIKE), reference.encode(STS_LIKE)).min() >= MIN_COSINE


def test_a_fused_graph_that_disagrees_is_not_cached(
    onnx_embedder, plain_onnx_dir, reference, tmp_path, monkeypatch, caplog
):
    cache = tmp_path / "cache"
    shutil.copytree(plain_onnx_dir, cache / "onnx" / plain_onnx_dir.name)
    differences = []

    def wrong_fusion(*args):  # as if a pattern had matched where it should not
        differences.append(args)
        return 0.5

    monkeypatch.setattr(onnx_backend, "_largest_difference", wrong_fusion)
    with caplog.at_level(logging.WARNING, logger=onnx_backend.__name__):
        plain = onnx_backend.OnnxEmbedder(reference, cache)
    assert len(differences) == 1
    assert plain.model_dir.parent.name == "onnx"
    assert "differs from the traced one" in caplog.text
    assert not (onnx_backend.artifact_dir(cache, "onnx-fused", reference.fingerprint)).exists()


def test_the_fused_graph_matches_the_traced_one(onnx_embedder, plain_onnx_dir, reference, tmp_path):
    # The check itself, on the real graphs: a plain export against the fused one is within tolerance,
    # and it is not blind: the same graph against a model with other weights is far off.
    plain = plain_onnx_dir / onnx_backend.ONNX_FILE
    names = onnx_backend.transformer_input_names(reference.model[0].auto_model)
    vocab = int(reference.model[0].auto_model.config.vocab_size)
    fused = onnx_embedder.model_dir / onnx_backend.ONNX_FILE
    assert onnx_backend._largest_difference(plain, fused, names, vocab) <= 1e-3

    import onnx
    from onnx import numpy_helper

    altered = onnx.load(str(plain))
    weights = next(t for t in altered.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.05, weights.name))
    onnx.save(altered, str(tmp_path / "altered.onnx"))
    assert onnx_backend._largest_difference(tmp_path / "altered.onnx", fused, names, vocab) > 1e-2


def test_second_build_reuses_the_cache(onnx_embedder, reference, cache_dir, monkeypatch):
    model_file = onnx_embedder.model_dir / onnx_backend.ONNX_FILE
    before = model_file.stat()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again despite a valid cache")

    monkeypatch.setattr(onnx_backend, "_export_onnx", no_export)
    monkeypatch.setattr(onnx_backend, "_export_fused", no_export)
    again = onnx_backend.OnnxEmbedder(reference, cache_dir)
    assert again.model_dir == onnx_embedder.model_dir
    after = (again.model_dir / onnx_backend.ONNX_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_corrupt_onnx_cache_is_rebuilt(onnx_embedder, reference, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(onnx_embedder.model_dir.parent.parent, cache)
    copied = onnx_backend.artifact_dir(cache, "onnx-fused", reference.fingerprint) / onnx_backend.ONNX_FILE
    with open(copied, "r+b") as fh:  # flip bytes in the middle of the weights
        fh.seek(copied.stat().st_size // 2)
        fh.write(b"\x00garbage\x00" * 16)

    good = onnx_embedder.model_dir / onnx_backend.ONNX_FILE
    exports = []

    def fake_export(ref, tmp, name):  # stands in for the real export, already tested by the fixture
        exports.append(tmp / name)
        shutil.copyfile(good, tmp / name)
        return {}

    monkeypatch.setattr(onnx_backend, "_export_fused", fake_export)
    rebuilt = onnx_backend.OnnxEmbedder(reference, cache)
    assert len(exports) == 1
    assert sha256_file(rebuilt.model_dir / onnx_backend.ONNX_FILE) == sha256_file(good)
    assert _cosines(rebuilt.encode(STS_LIKE), reference.encode(STS_LIKE)).min() >= MIN_COSINE


def test_openvino_keeps_one_batch_in_flight_per_stream(openvino_embedder, reference, monkeypatch):
    texts = STS_LIKE + LONG_TEXTS
    expected = reference.encode(texts)
    # Few texts are cut into one batch per stream; each row still lands in its own place.
    for count in (1, 2, 3, 5, len(texts)):
        assert _cosines(openvino_embedder.encode(texts[:count]), expected[:count]).min() >= MIN_COSINE
    # A failure half-way leaves no request running: the next call is served normally.
    real_pad = type(openvino_embedder)._pad
    calls = []

    def pad_failing_on_the_second_batch(self, rows, encodings):
        calls.append(rows)
        if len(calls) == 2:
            raise MemoryError("simulated")
        return real_pad(self, rows, encodings)

    monkeypatch.setattr(type(openvino_embedder), "_pad", pad_failing_on_the_second_batch)
    with pytest.raises(MemoryError):
        openvino_embedder.encode(texts)
    monkeypatch.undo()
    assert _cosines(openvino_embedder.encode(texts), expected).min() >= MIN_COSINE


class _TimedRequest:
    """Stands in for an OpenVINO infer request that takes `seconds` per batch and reports like one.

    Its output marks each row: the mean-pooled vector of a row is the unit vector at the row's first
    token id modulo the dimension, so a vector that lands in another text's row is caught.
    """

    def __init__(self, seconds: float, dimension: int) -> None:
        self.seconds, self.dimension = seconds, dimension
        self.starts: list[int] = []  # batch sizes, in the order this request was given them
        self._done = threading.Event()
        self._output = None
        self._report = None

    def set_callback(self, report, userdata) -> None:
        self._report = lambda: report(userdata)

    def start_async(self, inputs, share_inputs=True) -> None:
        ids = inputs["input_ids"]
        hidden = np.zeros((*ids.shape, self.dimension), dtype=np.float32)
        hidden[np.arange(len(ids)), :, ids[:, 1] % self.dimension] = 1.0
        self._output, self._done = hidden, threading.Event()
        self.starts.append(len(ids))

        def finish() -> None:
            self._done.set()
            self._report()

        threading.Timer(self.seconds, finish).start()

    def wait(self) -> None:
        self._done.wait()

    def get_output_tensor(self, index: int):
        return type("Tensor", (), {"data": self._output})()


def test_openvino_gives_each_batch_to_the_first_free_stream_longest_first(openvino_embedder, monkeypatch):
    # Stream 0 takes 10x as long per batch as stream 1: handing batches out in turn would give them
    # half each; first-free gives the fast stream most of them. Each vector must still be its text's.
    slow, fast = _TimedRequest(0.2, 384), _TimedRequest(0.02, 384)
    finished = queue.SimpleQueue()
    for slot, request in enumerate((slow, fast)):
        request.set_callback(finished.put, slot)
    monkeypatch.setattr(openvino_embedder, "_requests", [slow, fast])
    monkeypatch.setattr(openvino_embedder, "_finished", finished)
    # 300 texts of 1-7 words, each opening with a whole-word token whose id no other text's shares
    # modulo the dimension.
    words, marks = [], set()
    for word, token_id in sorted(openvino_embedder._tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if word.isascii() and word.isalpha() and len(word) > 3 and token_id % 384 not in marks:
            words.append(word)
            marks.add(token_id % 384)
        if len(words) == 300:
            break
    texts = [" ".join([word] * (1 + i % 7)) for i, word in enumerate(words)]
    vectors = openvino_embedder.encode(texts)
    first_ids = [e.ids[1] % 384 for e in openvino_embedder._tokenizer.encode_batch(texts)]
    assert len(set(first_ids)) == len(texts)
    assert list(vectors.argmax(axis=1)) == first_ids
    assert len(fast.starts) >= 2 * len(slow.starts)
    # Longest first: the batches a stream was given never get longer (padded width), so the last
    # ones, which decide when the call ends, are the shortest.
    lengths = openvino_embedder.token_counts(texts)
    batches = openvino_embedder._batches(lengths)
    widths = [max(lengths[i] for i in rows) for rows in batches]
    assert len(batches) > 2 and widths == sorted(widths, reverse=True)


def test_corrupt_openvino_cache_is_rebuilt(openvino_embedder, reference, tmp_path):
    from semsearch_server.embedding.openvino_backend import OpenVinoEmbedder

    cache = tmp_path / "cache"
    shutil.copytree(openvino_embedder.model_dir.parent.parent, cache)
    weights = onnx_backend.artifact_dir(cache, "openvino", reference.fingerprint) / "model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    rebuilt = OpenVinoEmbedder(reference, cache)
    assert weights.stat().st_size == (openvino_embedder.model_dir / "model.bin").stat().st_size
    assert _cosines(rebuilt.encode(STS_LIKE), reference.encode(STS_LIKE)).min() >= MIN_COSINE


def test_openvino_runs_the_torch_conversion_with_fused_attention(openvino_embedder, reference):
    from semsearch_server.embedding import openvino_backend

    manifest = json.loads((openvino_embedder.model_dir / onnx_backend.MANIFEST_FILE).read_text())
    assert manifest["recipe"] == openvino_backend.FROM_TORCH
    ir = (openvino_embedder.model_dir / "model.xml").read_text()
    assert ir.count('type="ScaledDotProductAttention"') == 6  # one per layer of the default model
    # One batch padded far beyond most of its rows: the mask must hold at every width.
    texts = ["x", "A plane is taking off.", *LONG_TEXTS[:1], "", "Three men are playing chess."]
    encodings = openvino_embedder._tokenizer.encode_batch(texts)
    got = np.zeros((len(texts), 384), dtype=np.float32)
    openvino_embedder._embed_batches(encodings, [list(range(len(texts)))], got)
    assert _cosines(got, reference.encode(texts)).min() >= MIN_COSINE


def test_an_openvino_cache_from_the_onnx_route_of_older_versions_is_rebuilt(openvino_embedder, reference, tmp_path):
    from semsearch_server.embedding.openvino_backend import FROM_TORCH, OpenVinoEmbedder

    cache = tmp_path / "cache"
    shutil.copytree(openvino_embedder.model_dir.parent.parent, cache)
    manifest_file = onnx_backend.artifact_dir(cache, "openvino", reference.fingerprint) / onnx_backend.MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text())
    del manifest["recipe"]  # as written before the recipe was recorded
    manifest_file.write_text(json.dumps(manifest))
    rebuilt = OpenVinoEmbedder(reference, cache)
    assert json.loads(manifest_file.read_text())["recipe"] == FROM_TORCH
    assert _cosines(rebuilt.encode(STS_LIKE), reference.encode(STS_LIKE)).min() >= MIN_COSINE


def test_openvino_converts_the_onnx_export_when_the_torch_frontend_fails(
    openvino_embedder, plain_onnx_dir, reference, tmp_path, monkeypatch, caplog
):
    from semsearch_server.embedding import openvino_backend

    cache = tmp_path / "cache"
    shutil.copytree(plain_onnx_dir, cache / "onnx" / plain_onnx_dir.name)

    def failing_frontend(reference):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(openvino_backend, "_from_torch", failing_frontend)
    with caplog.at_level(logging.WARNING, logger=openvino_backend.__name__):
        converted = openvino_backend.OpenVinoEmbedder(reference, cache)
    assert "unsupported operator" in caplog.text
    manifest = json.loads((converted.model_dir / onnx_backend.MANIFEST_FILE).read_text())
    assert manifest["recipe"] == openvino_backend.FROM_ONNX
    assert _cosines(converted.encode(STS_LIKE), reference.encode(STS_LIKE)).min() >= MIN_COSINE
    # The IR made that way is a sound cache: the next start keeps it rather than converting again.
    monkeypatch.undo()
    again = openvino_backend.OpenVinoEmbedder(reference, cache)
    manifest = json.loads((again.model_dir / onnx_backend.MANIFEST_FILE).read_text())
    assert manifest["recipe"] == openvino_backend.FROM_ONNX


def test_the_runtimes_send_no_telemetry(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    # A fresh interpreter, as the server is. Left alone, importing openvino and converting a model fork
    # processes that post usage events (8 forks here) and count runs in ~/intel, and an onnxruntime
    # session queues events under ~/.cache/Microsoft: neither may fork nor write under $HOME.
    script = """
import os, sys
forks = []
os.register_at_fork(before=lambda: forks.append(1))
import semsearch_server.embedding.openvino_backend
import onnx, onnxruntime, openvino, torch
from onnx import TensorProto, helper
openvino.convert_model(torch.nn.Linear(2, 2), example_input=torch.zeros(1, 2))
x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy")
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(), providers=["CPUExecutionProvider"])
print(len(forks), type(sys.modules["openvino.tools.ovc.telemetry_utils"].tm.Telemetry()).__module__)
"""
    home = tmp_path / "home"
    home.mkdir()
    # Without the CI markers and the variable that would switch the telemetry off by themselves.
    skip = ("CI", "TF_BUILD", "JENKINS_URL", "ORT_DISABLE_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    out = subprocess.run(
        [sys.executable, "-c", script], env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    forks, telemetry_class_module = out.stdout.split()
    assert forks == "0"
    assert telemetry_class_module == "openvino.tools.ovc.telemetry_stub"
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def test_auto_picks_an_agreeing_fast_backend(cache_dir, onnx_embedder):
    # A real model load here; the tests below pass the session's reference to save time.
    embedder = factory.build_embedder(default_model_path(), "auto", cache_dir=cache_dir)
    assert embedder.fingerprint.backend in ("openvino (batches) + onnx (<= 4 texts)", "openvino", "onnx")
    reference = factory.torch_reference(embedder)
    assert isinstance(reference, SentenceTransformerEmbedder)
    assert embedder.fingerprint.is_compatible(reference.fingerprint)


def test_auto_falls_back_with_a_logged_reason(reference, cache_dir, onnx_embedder, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger=factory.__name__):
        embedder = factory.build_embedder(default_model_path(), "auto", cache_dir=cache_dir, reference=reference)
    assert embedder.fingerprint.backend == "onnx"
    assert any("openvino" in r.getMessage() and "failed to load" in r.getMessage() for r in caplog.records)


def test_auto_falls_back_to_torch_on_disagreement(reference, cache_dir, onnx_embedder, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(factory, "MIN_COSINE", 1.5)  # nothing but torch itself can pass
    with caplog.at_level(logging.WARNING, logger=factory.__name__):
        embedder = factory.build_embedder(default_model_path(), "auto", cache_dir=cache_dir, reference=reference)
    assert embedder is reference
    assert any("onnx" in r.getMessage() and "disagrees with torch" in r.getMessage() for r in caplog.records)


def test_explicit_backend_does_not_fall_back(reference, cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(factory.BackendUnavailable, match="onnx failed to load"):
        factory.build_embedder(default_model_path(), "onnx", cache_dir=cache_dir, reference=reference)


def test_unknown_backend_is_rejected(cache_dir):
    with pytest.raises(ValueError, match="unknown embedding backend"):
        factory.build_embedder(default_model_path(), "tensorrt", cache_dir=cache_dir)


def test_auto_routes_single_queries_to_onnx_and_batches_to_openvino(reference, cache_dir, onnx_embedder):
    embedder = factory.build_embedder(
        default_model_path(), "auto", cache_dir=cache_dir, reference=reference, small_max_texts_while_busy=48
    )
    assert isinstance(embedder, SizeRoutedEmbedder)
    assert embedder.inner.fingerprint.backend == "openvino" and embedder.small.fingerprint.backend == "onnx"
    assert factory.torch_reference(embedder) is reference
    assert embedder.small_max_texts_while_busy == 48
    for texts in (STS_LIKE[:1], STS_LIKE[:4], STS_LIKE):
        assert _cosines(embedder.encode(list(texts)), reference.encode(list(texts))).min() >= MIN_COSINE


def test_size_routing_sends_each_request_to_one_engine():
    class Recorder:
        def __init__(self, name):
            self.fingerprint = ModelFingerprint(name, "sha", 2, "mean", True, 8, name)
            self.calls = []

        def encode(self, texts):
            self.calls.append(len(texts))
            return np.zeros((len(texts), 2), dtype=np.float32)

    bulk, small = Recorder("bulk"), Recorder("small")
    routed = SizeRoutedEmbedder(bulk, small, small_max_texts=2)
    for n in (1, 2, 3, 40):
        assert routed.encode(["t"] * n).shape == (n, 2)
    assert small.calls == [1, 2] and bulk.calls == [3, 40]
    assert routed.fingerprint.backend == "bulk (batches) + small (<= 2 texts)"
    assert routed.dimension == 2 and routed.max_seq_length == 8


def test_size_routing_sends_requests_around_a_busy_batch_engine():
    class Gated:
        def __init__(self, name):
            self.fingerprint = ModelFingerprint(name, "sha", 2, "mean", True, 8, name)
            self.calls = []
            self.open = threading.Event()
            self.open.set()
            self.entered = threading.Event()

        def encode(self, texts):
            self.calls.append(len(texts))
            self.entered.set()
            assert self.open.wait(10)
            return np.zeros((len(texts), 2), dtype=np.float32)

    bulk, small = Gated("bulk"), Gated("small")
    routed = SizeRoutedEmbedder(bulk, small, small_max_texts=2, small_max_texts_while_busy=8)
    assert routed.serves_small_calls_while_busy
    routed.encode(["t"] * 5)  # idle: the batch engine takes it
    bulk.open.clear()
    bulk.entered.clear()
    running = threading.Thread(target=routed.encode, args=(["t"] * 40,))
    running.start()
    assert bulk.entered.wait(5)
    for n in (1, 5, 8):
        routed.encode(["t"] * n)  # would hang if it went to the blocked batch engine
    waiting = threading.Thread(target=routed.encode, args=(["t"] * 9,))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()  # too large for the latency engine: waits for the batch one
    bulk.open.set()
    running.join(5)
    waiting.join(5)
    routed.encode(["t"] * 5)  # idle again
    assert small.calls == [1, 5, 8]
    assert sorted(bulk.calls) == [5, 5, 9, 40]


def test_model_reference_describes_the_model_like_torch_without_loading_it(reference, tmp_path):
    from semsearch_server.embedding.reference import ModelReference

    first = ModelReference(default_model_path(), tmp_path)  # nothing cached: loads torch to describe it
    assert first.torch_loaded
    second = ModelReference(default_model_path(), tmp_path)
    assert not second.torch_loaded

    def untouched(spec: str) -> str:
        # The model's tokenizer keeps the padding and truncation of its last call in its state; the
        # runtimes set both themselves, so only the rest must match.
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(spec)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer.to_str()

    for described in (first, second):
        assert described.fingerprint == reference.fingerprint
        assert untouched(described.tokenizer_spec) == untouched(reference.tokenizer_spec)
        assert described.module_kinds == ["Transformer", "Pooling", "Normalize"]
    # Another model's weights (a different sha256) are never described by this file.
    (info,) = (tmp_path / "model-info").iterdir()
    assert info.name == f"{reference.fingerprint.weights_sha256}.json"
    info.write_text("{not json")
    assert ModelReference(default_model_path(), tmp_path).torch_loaded  # unreadable: described again


def test_a_restart_reuses_the_agreement_verdicts_without_torch(reference, cache_dir, onnx_embedder, monkeypatch):
    factory.build_embedder(default_model_path(), "onnx", cache_dir=cache_dir)  # as a first start
    verdict = cache_dir / "agreement" / reference.fingerprint.weights_sha256 / "onnx.json"
    assert json.loads(verdict.read_text())["problem"] is None

    def not_again(*_):
        raise AssertionError("the agreement check ran again")

    monkeypatch.setattr(factory, "agreement_problem", not_again)
    embedder = factory.build_embedder(default_model_path(), "onnx", cache_dir=cache_dir)
    assert embedder.fingerprint.backend == "onnx"
    assert not embedder.reference.torch_loaded  # neither the check nor the fingerprint needed torch

    # Anything the verdict depends on changes its key: a stricter check runs again.
    checked = []
    monkeypatch.setattr(factory, "agreement_problem", lambda embedder, expected: checked.append(expected.shape))
    monkeypatch.setattr(factory, "MIN_COSINE", 0.99995)
    factory.build_embedder(default_model_path(), "onnx", cache_dir=cache_dir, reference=reference)
    assert checked == [(len(factory.CHECK_SENTENCES), 384)]
    # So does another artifact: a verdict about the same backend on other files is not reused.
    key = factory._verdict_key("onnx", embedder)
    assert key["artifact"]["files"] and key["weights_sha256"] == reference.fingerprint.weights_sha256


def test_a_cached_disagreement_is_reported_like_a_fresh_one(reference, cache_dir, onnx_embedder, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(factory, "MIN_COSINE", 1.5)
    for _ in range(2):  # the second time from the cached verdict
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=factory.__name__):
            embedder = factory.build_embedder(default_model_path(), "auto", cache_dir=cache_dir, reference=reference)
        assert embedder is reference
        assert any("disagrees with torch" in r.getMessage() for r in caplog.records)


# The engine cache is machine-wide: shared by every server and data directory, so builds race.
FAKE_MODEL = ModelFingerprint("fake", "f" * 64, 2, "mean", True, 8, "torch")


def _slow_build(builds: list, inside: threading.Event, content: bytes = b"engine"):
    def build(tmp: Path) -> dict:
        builds.append(tmp)
        inside.set()
        (tmp / "engine.bin").write_bytes(content)
        threading.Event().wait(0.5)  # long enough for a second builder to arrive meanwhile
        return {"recipe": "test"}

    return build


def test_two_builds_of_one_cache_entry_at_once_build_it_once(tmp_path, caplog):
    builds: list = []
    inside = threading.Event()
    results: dict = {}

    def first() -> None:
        results["first"] = onnx_backend.cached_artifact(
            tmp_path, "fake", FAKE_MODEL, ("engine.bin",), _slow_build(builds, inside)
        )

    with caplog.at_level(logging.INFO, logger=onnx_backend.__name__):
        thread = threading.Thread(target=first)
        thread.start()
        assert inside.wait(30)
        second = onnx_backend.cached_artifact(
            tmp_path, "fake", FAKE_MODEL, ("engine.bin",), _slow_build(builds, threading.Event(), b"other")
        )
        thread.join(30)
    assert len(builds) == 1, "the second builder built again instead of waiting for the first"
    assert second == results["first"] == onnx_backend.artifact_dir(tmp_path, "fake", FAKE_MODEL)
    assert (second / "engine.bin").read_bytes() == b"engine"
    assert "waiting for another process's build" in caplog.text
    assert "built by another process meanwhile" in caplog.text
    # Nothing but the entry and its lock is left in the kind's folder (no temporary build directory).
    assert sorted(p.name for p in second.parent.iterdir()) == sorted([second.name, f".{second.name}.lock"])


@pytest.mark.parametrize("damage", ["no manifest", "truncated file", "other weights"])
def test_a_partial_or_foreign_cache_entry_is_rebuilt_never_served(tmp_path, damage, caplog):
    entry = onnx_backend.cached_artifact(
        tmp_path, "fake", FAKE_MODEL, ("engine.bin",), _slow_build([], threading.Event(), b"good engine")
    )
    manifest = entry / onnx_backend.MANIFEST_FILE
    if damage == "no manifest":  # as a copy interrupted before its last file
        manifest.unlink()
    elif damage == "truncated file":
        (entry / "engine.bin").write_bytes(b"good")
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "weights_sha256": "0" * 64}))
    builds: list = []
    with caplog.at_level(logging.WARNING, logger=onnx_backend.__name__):
        again = onnx_backend.cached_artifact(
            tmp_path, "fake", FAKE_MODEL, ("engine.bin",), _slow_build(builds, threading.Event(), b"rebuilt")
        )
    assert len(builds) == 1 and again == entry
    assert (again / "engine.bin").read_bytes() == b"rebuilt"
    assert "is unusable" in caplog.text


def test_the_cache_entry_is_named_by_the_weights_and_the_library_versions(monkeypatch):
    name = onnx_backend.artifact_key(FAKE_MODEL)
    assert name.startswith(FAKE_MODEL.weights_sha256 + "-")
    real = onnx_backend.metadata.version
    monkeypatch.setattr(
        onnx_backend.metadata, "version", lambda package: "0.0-other" if package == "openvino" else real(package)
    )
    assert onnx_backend.artifact_key(FAKE_MODEL) != name


# A first start's builds and batches yield the CPU to serving: on Linux a thread's priority is its own.
needs_thread_priorities = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux thread priorities")


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _thread_niceness() -> dict[int, int]:
    """Each thread of this process and its nice value (/proc/self/task/<tid>/stat, field 19)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    return out


@needs_thread_priorities
def test_work_on_a_nicer_thread_runs_nicer_and_leaves_the_caller_as_it_was():
    caller = _own_niceness()
    assert onnx_backend.on_nicer_thread(4, _own_niceness) == caller + 4
    assert _own_niceness() == caller
    assert onnx_backend.on_nicer_thread(0, threading.get_native_id) == threading.get_native_id()

    def failing() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        onnx_backend.on_nicer_thread(4, failing)


@needs_thread_priorities
def test_builds_within_builds_yield_to_serving_run_nicer_and_the_rest_does_not(tmp_path):
    seen: list[int] = []

    def build(tmp: Path) -> dict:
        seen.append(_own_niceness())
        (tmp / "engine.bin").write_bytes(b"engine")
        return {"recipe": "test"}

    caller = _own_niceness()
    with onnx_backend.builds_yield_to_serving(7):
        onnx_backend.cached_artifact(tmp_path / "a", "fake", FAKE_MODEL, ("engine.bin",), build)
    onnx_backend.cached_artifact(tmp_path / "b", "fake", FAKE_MODEL, ("engine.bin",), build)
    assert seen == [caller + 7, caller]


@needs_thread_priorities
def test_openvino_recompiled_nicer_infers_on_nicer_threads_and_agrees(openvino_embedder, reference):
    texts = ["A man is playing a guitar.", "Two dogs run through a field of tall grass."]
    expected = reference.encode(texts)
    before = _thread_niceness()
    copy = openvino_embedder.recompiled(3)
    vectors = copy.encode(texts)
    new = {tid: nice for tid, nice in _thread_niceness().items() if tid not in before}
    caller = _own_niceness()
    assert new and set(new.values()) == {caller + 3}, f"threads the copy made: {new}"
    assert _cosines(vectors, expected).min() >= MIN_COSINE
    assert copy.precision == openvino_embedder.precision and copy.streams == openvino_embedder.streams
