"""A real server on the default backends: a restart, or a start on another data directory with the same engine
cache, serves and explains without torch and builds nothing; Explain's score is Search's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from semsearch_server.testing import ServerProcess, unexpected_log_lines

QUERY = "I drink water with wine"


def torch_mapped(pid: int) -> bool:
    """Whether the process has torch's shared library mapped (import torch maps it; nothing unmaps it)."""
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_a_first_start_serves_on_torch_then_switches_and_a_restart_needs_no_torch(tmp_path):
    # Its own model cache: the first start is a real first start, whatever other tests ran before.
    env = {"SEMSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    first = ServerProcess(tmp_path / "data", "--seed-demo", "true", env=env).start(wait_engines=False)
    try:
        assert "first start: serving on torch while the fast engines are built" in first.output()
        with first.client() as client:
            # SERVING comes before the exports and the agreement checks (tens of seconds of them).
            assert client.info().backend == "torch"
            on_torch = client.search(QUERY, collection="demo", top_k=5)
            explained = client.explain(QUERY, doc_id=on_torch[0].id, collection="demo")
            assert explained.score == pytest.approx(on_torch[0].score, abs=1e-6)
            first.wait_first_start()
            log = first.output()
            # OpenVINO takes over as soon as it agrees, then takes single queries from torch compiled for
            # them; ONNX Runtime joins it for single queries after.
            assert re.search(r"first start: switched to openvino after .*\n(.*\n)*"
                             r".*first start: single queries on openvino after .*\n(.*\n)*"
                             r".*first start: switched to openvino \(batches\) \+ onnx", log), log  # fmt: skip
            assert re.search(r"engine cache: built openvino .*cache/openvino/", log), log
            assert "the torch model is released" in log
            # A first start prints nothing that is not about the user's situation (no third-party chatter).
            assert not unexpected_log_lines(log), unexpected_log_lines(log)
            assert "onnx" in client.info().backend
            # The demo was embedded by torch; the fast engines agree with it (cosine >= 0.9999).
            switched = client.search(QUERY, collection="demo", top_k=5)
            assert [h.id for h in switched] == [h.id for h in on_torch]
            assert [h.score for h in switched] == pytest.approx([h.score for h in on_torch], abs=1e-3)
        assert first.terminate() == 0
    finally:
        first.stop()
    # The model description, the exports and the agreement verdicts are all cached now, beside no data
    # directory: a second data directory (a fresh one, as a second service on the machine) builds nothing.
    server = ServerProcess(tmp_path / "data-2", "--seed-demo", "true", env=env).start(wait_engines=False)
    try:
        log = server.output()
        assert re.search(r"openvino agreement with torch: cached verdict \(agrees\)", log), log
        assert re.search(r"onnx agreement with torch: cached verdict \(agrees\)", log), log
        assert re.search(r"engine cache: reused openvino .*cache/openvino/", log), log
        assert re.search(r"engine cache: reused onnx-fused .*cache/onnx-fused/", log), log
        assert "engine cache: built" not in log and "first start" not in log
        assert "torch model loaded" not in log
        assert re.search(r"start-up: embedding backends in [0-9.]+s", log)
        assert not torch_mapped(server.pid)
        with server.client() as client:
            # The demo was seeded before SERVING, so by the fast engines: the first request is theirs too.
            assert "onnx" in client.info().backend
            hits = {h.id: h.score for h in client.search(QUERY, collection="demo", top_k=5)}
            # The default backend: the stored vectors come from OpenVINO, the query's from ONNX Runtime.
            result = client.explain(QUERY, doc_id="c5", collection="demo")
            assert result.score == pytest.approx(hits["c5"], abs=1e-6)
            assert result.index_score == pytest.approx(hits["c5"], abs=1e-6)
            assert result.pair_contributions.sum() == pytest.approx(hits["c5"], abs=1e-5)
            assert sum(s.contribution for s in result.query_segments) == pytest.approx(hits["c5"], abs=1e-5)
            assert sum(s.contribution for s in result.doc_segments) == pytest.approx(hits["c5"], abs=1e-5)
            # Free text is embedded now, by the engine that embeds lone texts (the stored vector came
            # from the batch engine in bf16: ~3e-4 apart here); the sums hold all the same.
            free = client.explain(QUERY, doc_text="I drink a white-wine mix")
            assert free.score == pytest.approx(free.index_score, abs=1e-6)
            assert free.score == pytest.approx(hits["c5"], abs=2e-3)
            assert free.pair_contributions.sum() == pytest.approx(free.score, abs=1e-5)
            assert not torch_mapped(server.pid)  # Explain runs on the ONNX Runtime engine
            # Attention runs on its own ONNX export, made (with torch) on the first request for it.
            with_attention = client.explain(QUERY, doc_id="c5", collection="demo", include_attention=True)
            assert with_attention.doc_self_attention.shape == (len(result.doc_segments),) * 2
            assert with_attention.score == pytest.approx(result.score, abs=1e-6)
        assert server.terminate() == 0
    finally:
        server.stop()
    # Once exported, attention needs no torch either.
    server = ServerProcess(tmp_path / "data-2", "--seed-demo", "true", env=env).start()
    try:
        with server.client() as client:
            again = client.explain(QUERY, doc_id="c5", collection="demo", include_attention=True)
            assert again.doc_self_attention == pytest.approx(with_attention.doc_self_attention, abs=1e-6)
            assert "attention model loaded" in server.output()
            assert not torch_mapped(server.pid)
    finally:
        server.stop()
