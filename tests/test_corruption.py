"""Damaged files and a different model: the server starts, names what is broken, and serves the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import InProcessServer, ServerProcess
from semsearch import Document, FailedPreconditionError

GOOD = [Document(f"g{i}", t) for i, t in enumerate(["I drink water", "I eat steak", "trains run on rails"])]
BAD = [Document(f"b{i}", t) for i, t in enumerate(["red wine", "white wine", "salmon swims", "rain falls"])]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, embedder, explainer) -> Path:
    """A data dir with collections 'good' and 'bad', cleanly shut down."""
    data = tmp_path_factory.mktemp("pristine") / "data"
    srv = InProcessServer(data, embedder, explainer)
    srv.client.create_collection("good")
    srv.client.create_collection("bad")
    srv.client.upsert(GOOD, collection="good")
    srv.client.upsert(BAD, collection="bad")
    srv.stop()
    return data


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\xde\xad\xbe\xef" * 256 + data[middle + 1024 :])
    elif how == "empty":
        path.write_bytes(b"")


def _collections(client) -> dict:
    return {c.name: c for c in client.list_collections()}


@pytest.mark.parametrize(
    ("filename", "how"),
    [
        ("manifest.json", "truncate"),
        ("manifest.json", "garbage"),
        ("documents.sqlite3", "truncate"),
        ("documents.sqlite3", "garbage"),
        ("documents.sqlite3", "empty"),
    ],
)
def test_damaged_essential_file_fails_that_collection_only(tmp_path, pristine, embedder, explainer, filename, how):
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    _damage(data / "collections" / "bad" / filename, how)
    srv = InProcessServer(data, embedder, explainer)
    try:
        assert srv.client.health() == "SERVING"
        info = _collections(srv.client)
        assert info["bad"].state == 2  # COLLECTION_STATE_FAILED
        assert filename in info["bad"].status_message
        with pytest.raises(FailedPreconditionError, match=filename):
            srv.client.search("wine", collection="bad")
        assert srv.client.search("I drink water", collection="good", top_k=1)[0].id == "g0"
        assert info["good"].state == 1 and info["good"].document_count == 3
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("filename", "how"),
    [("index.faiss", "truncate"), ("index.faiss", "garbage"), ("index.json", "garbage"), ("index.json", "empty")],
)
def test_damaged_snapshot_is_rebuilt_from_the_database(tmp_path, pristine, embedder, explainer, filename, how, caplog):
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    _damage(data / "collections" / "bad" / filename, how)
    caplog.set_level("WARNING")
    srv = InProcessServer(data, embedder, explainer)
    try:
        info = _collections(srv.client)
        assert info["bad"].state == 1 and info["bad"].document_count == len(BAD)
        assert srv.client.search("salmon swims", collection="bad", top_k=1)[0].id == "b2"
        assert any("snapshot unusable" in r.getMessage() and "bad" in r.getMessage() for r in caplog.records)
    finally:
        srv.stop()


def test_a_real_server_process_survives_a_corrupt_collection(tmp_path, pristine):
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    _damage(data / "collections" / "bad" / "documents.sqlite3", "garbage")
    server = ServerProcess(data)
    try:
        server.start()
        with server.client() as client:
            assert client.search("trains", collection="good", top_k=1)[0].id == "g2"
            assert "documents.sqlite3" in _collections(client)["bad"].status_message
        assert "collection 'bad' cannot be opened" in server.output()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cls_pooling_model(tmp_path_factory) -> Path:
    """A genuinely different model: the same weights with CLS pooling instead of mean pooling."""
    from semsearch_server.embedding.sentence_transformer import default_model_path

    target = tmp_path_factory.mktemp("models") / "minilm-cls"
    shutil.copytree(default_model_path(), target)
    config = target / "1_Pooling" / "config.json"
    settings = json.loads(config.read_text())
    settings.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    config.write_text(json.dumps(settings))
    return target


def test_collection_from_another_model_is_refused_then_reindexed(
    tmp_path, pristine, embedder, explainer, cls_pooling_model
):
    from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder

    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    other = SentenceTransformerEmbedder(str(cls_pooling_model))
    srv = InProcessServer(data, other, None)
    try:
        with pytest.raises(FailedPreconditionError) as info:
            srv.client.search("wine", collection="bad")
        message = info.value.details
        assert "mean pooling" in message and "cls pooling" in message and "semsearch reindex" in message
        assert srv.client.reindex("bad") == len(BAD)
        hits = srv.client.search("salmon swims", collection="bad", top_k=1)
        assert hits[0].id == "b2"
        assert hits[0].score == pytest.approx(
            float(other.encode(["salmon swims"])[0] @ other.encode([BAD[2].text])[0]), abs=1e-5
        )
    finally:
        srv.stop()
    # And the reindexed collection now belongs to the new model: the old model is refused on it.
    srv = InProcessServer(data, embedder, explainer)
    try:
        with pytest.raises(FailedPreconditionError, match="reindex"):
            srv.client.search("wine", collection="bad")
    finally:
        srv.stop()
