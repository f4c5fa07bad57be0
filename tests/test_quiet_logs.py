"""What a server prints when it cannot start: one line saying what to do, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from semsearch_server.testing import ServerProcess, unexpected_log_lines


def _start(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "semsearch_server", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _problems(stderr: str) -> list[str]:
    """Lines that are not the server's own log lines (a traceback, gRPC's core logging)."""
    return [line for line in stderr.splitlines() if line and " semsearch_server" not in line]


def test_a_taken_port_is_one_line_that_says_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _start("--port", str(port), "--data-dir", str(tmp_path), "--backend", "torch")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"cannot listen on 0.0.0.0:{port}: the port is in use" in errors[0]
    assert "--port" in errors[0]
    assert "Traceback" not in done.stderr and not _problems(done.stderr), done.stderr


def test_a_bad_option_is_one_line(tmp_path):
    done = _start("--port", "not-a-port", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "port" in done.stderr, done.stderr


def test_a_milvus_lite_run_prints_nothing_but_its_own_progress(tmp_path):
    pytest.importorskip("pymilvus")
    server = ServerProcess(
        tmp_path / "data", "--backend", "torch", "--store", "milvus", "--milvus-uri", str(tmp_path / "lite.db")
    ).start()
    try:
        with server.client() as client:
            client.create_collection("quiet")
            assert client.upsert([("a", "the night train to Vienna")], collection="quiet") == 1
            assert client.search("railway", collection="quiet", top_k=1)[0].id == "a"
            assert client.count(collection="quiet") == 1
        assert server.terminate() == 0
        assert not unexpected_log_lines(server.output()), unexpected_log_lines(server.output())
    finally:
        server.stop()
