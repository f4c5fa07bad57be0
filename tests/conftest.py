"""Shared fixtures: one real model per session, real servers on free ports, real channels."""

from __future__ import annotations

import os
import re
import signal
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

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


class ServerProcess:
    """A real `python -m semsearch_server` process: for restarts, SIGKILL and SIGTERM."""

    def __init__(self, data_dir: Path, *extra: str, env: dict | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = data_dir.parent / f"server-{uuid.uuid4().hex[:6]}.log"

    def start(self, wait_serving: bool = True, timeout: float = 180) -> ServerProcess:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semsearch_server", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(self.data_dir), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while not self.port:
            match = re.search(r"listening on [^ ]+:(\d+)", self.log_path.read_text())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        if wait_serving:
            self.wait_serving(deadline - time.monotonic())
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs):
        from semsearch import SearchClient

        return SearchClient(self.address, timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_serving(self, timeout: float = 180) -> None:
        from semsearch import SearchClient, SemsearchError

        deadline = time.monotonic() + timeout
        with SearchClient(self.address, timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    if c.health() == "SERVING":
                        return
                except SemsearchError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not SERVING after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.port = 0

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.port = 0
        return code

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
