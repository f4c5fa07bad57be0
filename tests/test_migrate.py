"""`semsearch-server migrate`: a local collection copied into Milvus, vectors as stored, nothing embedded."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra: pip install './server[milvus]'")

from conftest import InProcessServer  # noqa: E402
from semsearch import Document  # noqa: E402
from semsearch_server.domain import CollectionSettings  # noqa: E402
from semsearch_server.index.local_manifest import read_manifest  # noqa: E402
from semsearch_server.index.local_provider import LocalStoreProvider  # noqa: E402
from semsearch_server.index.milvus_provider import MilvusStoreProvider  # noqa: E402
from semsearch_server.migrate import main as migrate  # noqa: E402
from store_contract import FINGERPRINT  # noqa: E402

TOPICS = ["red wine", "green tea", "night trains", "mountain rivers", "chess openings", "sourdough bread"]
QUERIES = ["a glass of wine", "travelling by train at night", "baking bread", "a river in the Alps", "tea", "chess"]


def _corpus() -> list[Document]:
    docs = [
        Document(f"d{i}", f"note {i} about {TOPICS[i % len(TOPICS)]}, written on day {i}", {"t": str(i % 3)})
        for i in range(60)
    ]
    # long documents: several passages each, so that passages and their vectors are copied too
    long = " ".join(
        f"Sentence {j} of a long report about {TOPICS[j % len(TOPICS)]} and nothing else." for j in range(60)
    )
    docs += [Document(f"long{k}", long + f" Ending {k}.", {"t": "long"}) for k in range(3)]
    return docs


def test_migrate_copies_a_local_collection_that_a_milvus_replica_serves_alike(
    tmp_path, milvus_server, embedder, explainer
):
    data = tmp_path / "local"
    local = InProcessServer(data, embedder, explainer)
    try:
        local.client.create_collection("notes", default_mode="hybrid")
        local.client.upsert(_corpus(), collection="notes")
        local.client.delete(["d59"], collection="notes")
        expected = {q: local.client.search(q, collection="notes", top_k=10, mode="dense") for q in QUERIES}
        expected_info = {c.name: c for c in local.client.list_collections()}["notes"]
    finally:
        local.stop()

    prefix = f"mig{uuid.uuid4().hex[:6]}_"
    args = ["--data-dir", str(data), "--milvus-uri", milvus_server, "--milvus-prefix", prefix]
    with pytest.MonkeyPatch.context() as patch:
        from semsearch_server.embedding.batching import MicroBatchingEmbedder
        from semsearch_server.embedding.onnx_backend import OnnxEmbedder
        from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder

        def refuse(*args, **kwargs):
            raise AssertionError("the migration embedded something")

        for cls in (SentenceTransformerEmbedder, OnnxEmbedder, MicroBatchingEmbedder):
            patch.setattr(cls, "encode", refuse)
        assert migrate(["--collection", "notes", *args]) == 0
        # Run again (as after an interruption): everything is there already, nothing is written.
        assert migrate(args) == 0

    # The stored vectors arrived bit for bit, passages and all.
    source = LocalStoreProvider(data)
    fingerprint = read_manifest(source.root / "notes")
    local_store = source.open("notes", embedder.fingerprint)
    target = MilvusStoreProvider(milvus_server, prefix=prefix)
    remote_store = target.open("notes", embedder.fingerprint)
    try:
        assert remote_store.fingerprint.to_dict() == fingerprint["model"]
        assert remote_store.settings == local_store.settings
        ids = [f"d{i}" for i in range(60)] + ["long0", "long1", "long2"]
        assert remote_store.get(ids) == local_store.get(ids)
        ours, theirs = local_store.get_passages(ids), remote_store.get_passages(ids)
        assert set(ours) == set(theirs) and len(ours) == 62
        assert len(ours["long0"][0]) > 1
        for doc_id, (passages, vectors) in ours.items():
            assert theirs[doc_id][0] == passages
            assert np.array_equal(theirs[doc_id][1], vectors)
    finally:
        local_store.close(snapshot=False)
        target.close()

    replica = InProcessServer(tmp_path / "replica", embedder, explainer, store="milvus", milvus_uri=milvus_server,
                              milvus_prefix=prefix)  # fmt: skip
    try:
        info = {c.name: c for c in replica.client.list_collections()}["notes"]
        assert (info.document_count, info.default_mode, info.passages) == (
            expected_info.document_count,
            expected_info.default_mode,
            expected_info.passages,
        )
        for query, hits in expected.items():
            got = replica.client.search(query, collection="notes", top_k=10, mode="dense")
            assert [h.id for h in got] == [h.id for h in hits], query
            assert [h.score for h in got] == pytest.approx([h.score for h in hits], abs=1e-5)
            assert [(h.passage.start, h.passage.end) for h in got] == [(h.passage.start, h.passage.end) for h in hits]
    finally:
        replica.stop()


def test_migrate_refuses_a_target_of_another_model_and_writes_nothing(tmp_path, milvus_server, embedder, explainer):
    data = tmp_path / "local"
    local = InProcessServer(data, embedder, explainer)
    try:
        local.client.create_collection("notes")
        local.client.upsert(_corpus()[:5], collection="notes")
    finally:
        local.stop()
    prefix = f"mig{uuid.uuid4().hex[:6]}_"
    target = MilvusStoreProvider(milvus_server, prefix=prefix)
    target.create("notes", CollectionSettings(), FINGERPRINT)  # another model's collection of the same name
    command = [sys.executable, "-m", "semsearch_server", "migrate", "--collection", "notes"]
    command += ["--data-dir", str(data), "--milvus-uri", milvus_server, "--milvus-prefix", prefix]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "already holds it with vectors of model" in result.stderr and "delete the target collection" in result.stderr
    assert target.open("notes", FINGERPRINT).count() == 0
    missing = subprocess.run([*command[:3], "migrate", "--data-dir", str(data)], capture_output=True, text=True)
    assert missing.returncode == 2 and "milvus_uri" in missing.stderr
    target.close()
