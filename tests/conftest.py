"""Shared fixtures: one real model per session, real servers on free ports, real channels."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from semsearch_server.testing import ServerProcess  # noqa: F401 - re-exported for the tests

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(tmp_path_factory) -> Path:
    """Server processes share one cache of exported models, so the ONNX/OpenVINO export runs once."""
    cache = tmp_path_factory.mktemp("model-cache")
    os.environ["SEMSEARCH_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def embedder():
    from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder, default_model_path

    return SentenceTransformerEmbedder(default_model_path())


@pytest.fixture(scope="session")
def explainer(embedder):
    from semsearch_server.wiring import _build_explainer

    return _build_explainer(embedder)


def make_config(data_dir: Path, **overrides):
    from semsearch_server.config import ServerConfig

    config = ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir, grace_seconds=2.0)
    return replace(config, **overrides)


class InProcessServer:
    """An Application on a free port with the session's model, and a client connected to it."""

    def __init__(self, data_dir: Path, embedder, explainer, **overrides) -> None:
        from semsearch import SearchClient
        from semsearch_server.app import Application

        self.config = make_config(data_dir, **overrides)
        self.app = Application(self.config, embedder=embedder, explainer=explainer)
        self.port = self.app.start()
        self.app.load()
        self.address = f"127.0.0.1:{self.port}"
        self.client = SearchClient(self.address, timeout=60)

    def stop(self) -> None:
        self.client.close()
        self.app.stop(grace=1.0)


@pytest.fixture(scope="session")
def server(tmp_path_factory, embedder, explainer) -> Iterator[InProcessServer]:
    """One server for the session, with the seed demo loaded. Tests use their own collections."""
    srv = InProcessServer(tmp_path_factory.mktemp("data"), embedder, explainer, seed_demo=True)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    return server.client


@pytest.fixture
def collection(client) -> Iterator[str]:
    """A fresh, empty collection for one test."""
    name = "t-" + uuid.uuid4().hex[:12]
    client.create_collection(name)
    yield name
    client.delete_collection(name)
