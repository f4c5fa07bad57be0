"""Shared fixtures: one real model per session, real servers on free ports, real channels."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
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


@pytest.fixture(scope="session", autouse=True)
def milvus_lite_in_process_servers_stopped() -> Iterator[None]:
    """Milvus Lite's in-process servers (pymilvus starts one per .db file) are stopped at the end of the
    session, while logging still works: its own atexit hook logs each stop after pytest has closed the
    streams, which printed a "--- Logging error ---" traceback per server at the end of every run."""
    yield
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_all()


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


# The behaviour suite's stores: a module marked `both_stores` runs each test that uses the `server` fixture
# once per store. "milvus" is the Milvus store on a `milvus-lite server` (the network path a Milvus standalone
# or cluster is reached by); "milvus-file" is a Milvus Lite `.db` file, for modules marked
# `both_stores(file=True)`.
STORES = ("local", "milvus")
MILVUS_START_TIMEOUT = 60.0


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "both_stores(file=False): run the module's server tests on the local and the Milvus store"
    )


def pytest_collection_modifyitems(session, config, items) -> None:
    """Runs the files with slow tests first (in their own order), the quick ones after.

    make test spreads whole files over its workers (pytest-xdist, --dist loadfile): a slow file handed out
    last leaves one worker busy while the other has nothing left, so the slow ones go out first.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its order


def pytest_generate_tests(metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("both_stores")
    if marker is None or "server" not in metafunc.fixturenames:
        return
    stores = STORES + (("milvus-file",) if marker.kwargs.get("file") else ())
    metafunc.parametrize("server", stores, indirect=True, scope="session")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def milvus_lite_exe() -> str | None:
    exe = Path(sys.executable).with_name("milvus-lite")
    return str(exe) if exe.exists() else shutil.which("milvus-lite")


class MilvusLiteServer:
    """A `milvus-lite server` process on a free port (or a given one: a restart keeps its address)."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = MILVUS_START_TIMEOUT) -> MilvusLiteServer:
        from semsearch_server.errors import Unavailable
        from semsearch_server.index.milvus_provider import MilvusStoreProvider

        exe = milvus_lite_exe()
        if exe is None:
            pytest.skip("milvus-lite is not installed (pip install './server[milvus]')")
        log_path = self.data_dir / "server.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            command = [exe, "server", "--data-dir", str(self.data_dir / "db"), "--host", "127.0.0.1"]
            self.proc = subprocess.Popen([*command, "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.skip(f"milvus-lite server exited with {self.proc.returncode}: {log_path.read_text()[-500:]}")
            try:
                provider = MilvusStoreProvider(self.uri, timeout=2.0)
                provider.names()
                provider.close()
                return self
            except Unavailable:
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.skip(f"milvus-lite server did not answer within {timeout:.0f}s")
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """The URI of a Milvus Lite gRPC server shared by the session; tests use their own prefixes or names."""
    pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra: pip install './server[milvus]'")
    milvus = MilvusLiteServer(tmp_path_factory.mktemp("milvus")).start()
    yield milvus.uri
    milvus.stop()


def store_options(kind: str, request, tmp: Path) -> dict:
    """The server options that put its collections on the store named `kind` (a fresh Milvus prefix)."""
    prefix = f"s{uuid.uuid4().hex[:8]}_"
    if kind == "milvus":
        return {"store": "milvus", "milvus_uri": request.getfixturevalue("milvus_server"), "milvus_prefix": prefix}
    if kind == "milvus-file":
        pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra")
        return {"store": "milvus", "milvus_uri": str(tmp / "lite.db"), "milvus_prefix": prefix}
    return {}


@pytest.fixture(scope="session")
def servers(request, tmp_path_factory, embedder, explainer) -> Iterator:
    """One seeded server per store for the whole session, started the first time a test asks for it."""
    started: dict[str, InProcessServer] = {}

    def get(kind: str) -> InProcessServer:
        if kind not in started:
            data = tmp_path_factory.mktemp(f"data-{kind}")
            options = store_options(kind, request, data)
            started[kind] = InProcessServer(data, embedder, explainer, seed_demo=True, **options)
        return started[kind]

    yield get
    for srv in started.values():
        srv.stop()


@pytest.fixture(scope="session")
def server(request, servers) -> InProcessServer:
    """The session's server on the local store, or (in a `both_stores` module) on each store in turn.

    Tests use their own collections."""
    return servers(getattr(request, "param", "local"))


@pytest.fixture
def store_kind(server) -> str:
    """Which store the test's server runs on: "local", "milvus" or "milvus-file"."""
    return (
        "local"
        if server.config.store == "local"
        else ("milvus-file" if server.config.milvus_uri.endswith(".db") else "milvus")
    )


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
