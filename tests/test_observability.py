"""Prometheus metrics move by exactly the calls made; one access line per call, without texts or keys."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
import uuid

import pytest
from conftest import InProcessServer, ServerProcess
from prometheus_client.parser import text_string_to_metric_families
from semsearch import SearchClient
from semsearch.demo import DEMO_COLLECTION, DEMO_DOCUMENTS
from semsearch.errors import NotFoundError, UnauthenticatedError

KEY = "obs-key-5d1e9a"
SECRET_QUERY = "zebra quasar marmalade 9137"
SECRET_TEXT = "the heron waits by the frozen lake 4242"
ACCESS_FIELDS = {"rpc", "code", "duration_ms", "request_bytes", "response_bytes", "peer"}
SERVICE = "semsearch.v1.SearchService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples: dict, method: str, code: str) -> float:
    return value(samples, "semsearch_grpc_requests_total", grpc_service=SERVICE, grpc_method=method, grpc_code=code)


@pytest.fixture(scope="module")
def metered(tmp_path_factory, embedder, explainer):
    tmp = tmp_path_factory.mktemp("obs")
    keys = tmp / "keys"
    keys.write_text(f"{KEY}\n")
    srv = InProcessServer(tmp / "data", embedder, explainer, api_key_file=keys, metrics_port=free_port())
    srv.client.close()
    srv.client = SearchClient(srv.address, api_key=KEY, timeout=60)
    yield srv
    srv.stop()


@pytest.fixture
def fresh(metered):
    name = "obs-" + uuid.uuid4().hex[:10]
    metered.client.create_collection(name)
    return name


def test_request_counts_and_latency_move_by_the_calls_made(metered, fresh):
    port, c = metered.config.metrics_port, metered.client
    before = scrape(port)
    c.upsert([("a", "red apples"), ("b", "green pears"), ("c", "blue plums")], collection=fresh)
    c.upsert_stream([[("d", "one")], [("e", "two")]], collection=fresh)
    for _ in range(3):
        c.search("fruit", collection=fresh)
    with pytest.raises(NotFoundError):
        c.search("fruit", collection="no-such-collection")
    with pytest.raises(NotFoundError):
        c.upsert_stream([[("x", "nowhere")]], collection="no-such-collection")
    with SearchClient(metered.address, api_key="") as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.search("fruit", collection=fresh)
    after = scrape(port)

    def moved(method: str, code: str) -> float:
        return requests(after, method, code) - requests(before, method, code)

    assert moved("Search", "OK") == 3
    assert moved("Search", "NOT_FOUND") == 1
    assert moved("Search", "UNAUTHENTICATED") == 1  # refused by the key check, still counted
    assert moved("Upsert", "OK") == 1
    assert moved("UpsertStream", "OK") == 1
    assert moved("UpsertStream", "NOT_FOUND") == 1
    latency = "semsearch_grpc_request_duration_seconds_count"
    labels = {"grpc_service": SERVICE, "grpc_method": "Search"}
    assert value(after, latency, **labels) - value(before, latency, **labels) == 5
    assert value(after, "semsearch_grpc_request_duration_seconds_sum", **labels) > value(
        before, "semsearch_grpc_request_duration_seconds_sum", **labels
    )


def test_embedding_batch_size_is_observed(metered):
    port = metered.config.metrics_port
    before = scrape(port)
    metered.client.embed(["one", "two", "three", "four", "five"])
    after = scrape(port)
    assert (
        value(after, "semsearch_embedding_batch_size_count") - value(before, "semsearch_embedding_batch_size_count")
        == 1
    )
    assert value(after, "semsearch_embedding_batch_size_sum") - value(before, "semsearch_embedding_batch_size_sum") == 5
    # 5 texts fall in the le=8 bucket, not the le=4 one.
    assert value(after, "semsearch_embedding_batch_size_bucket", le="4.0") == value(
        before, "semsearch_embedding_batch_size_bucket", le="4.0"
    )
    assert value(after, "semsearch_embedding_duration_seconds_count") > value(
        before, "semsearch_embedding_duration_seconds_count"
    )


def test_documents_per_collection_gauge_equals_the_real_count(metered, fresh):
    metered.client.upsert([(f"d{i}", f"document number {i}") for i in range(7)], collection=fresh)
    metered.client.delete(["d0"], collection=fresh)
    samples = scrape(metered.config.metrics_port)
    assert value(samples, "semsearch_collection_documents", collection=fresh) == 6
    for info in metered.client.list_collections():
        assert value(samples, "semsearch_collection_documents", collection=info.name) == info.document_count
    assert value(samples, "semsearch_load_seconds") > 0


def test_one_access_line_per_call_without_texts_or_keys(metered, fresh, caplog):
    caplog.set_level(logging.INFO, logger="semsearch_server.access")
    c = metered.client
    c.upsert([("s", SECRET_TEXT)], collection=fresh)
    c.search(SECRET_QUERY, collection=fresh)
    c.search(SECRET_QUERY, collection=fresh)
    with pytest.raises(NotFoundError):
        c.get(["missing"], collection="no-such-collection")
    lines = [r for r in caplog.records if r.name == "semsearch_server.access"]
    assert [(r.fields["rpc"].rsplit("/", 1)[1], r.fields["code"]) for r in lines] == [
        ("Upsert", "OK"),
        ("Search", "OK"),
        ("Search", "OK"),
        ("Get", "NOT_FOUND"),
    ]
    for record in lines:
        assert ACCESS_FIELDS <= record.fields.keys()
        assert record.fields["duration_ms"] >= 0
        assert record.fields["request_bytes"] > 0
        assert record.fields["peer"].startswith(("ipv4:127.0.0.1", "ipv6:"))
    assert [r.fields["collection"] for r in lines] == [fresh, fresh, fresh, "no-such-collection"]
    assert lines[1].fields["response_bytes"] > 0
    logged = "\n".join(f"{r.getMessage()} {r.fields}" for r in caplog.records)
    for secret in (SECRET_QUERY, SECRET_TEXT, KEY):
        assert secret not in logged


@pytest.mark.slow
def test_real_process_json_logs_and_metrics(tmp_path):
    """The real entry point: JSON access lines, a metrics endpoint, no key or query anywhere in the output."""
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} read-only\n")
    port = free_port()
    proc = ServerProcess(
        tmp_path / "data",
        "--log-format",
        "json",
        "--metrics-port",
        str(port),
        "--seed-demo",
        "true",
        "--api-key-file",
        str(keys),
    )
    try:
        proc.start()
        with proc.client(api_key=KEY) as c:
            assert c.search(SECRET_QUERY, collection=DEMO_COLLECTION)
        samples = scrape(port)
        assert value(samples, "semsearch_collection_documents", collection=DEMO_COLLECTION) == len(DEMO_DOCUMENTS)
        assert requests(samples, "Search", "OK") == 1
        assert proc.terminate() == 0
    finally:
        proc.stop()
    output = proc.output()
    # Every line, libraries' warnings and progress bars included, is one JSON record.
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == []
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r["logger"] == "semsearch_server.access"]
    assert [r["rpc"] for r in access] == [f"/{SERVICE}/Search"]
    assert ACCESS_FIELDS | {"collection", "time", "level"} <= access[0].keys()
    assert access[0]["code"] == "OK" and access[0]["collection"] == DEMO_COLLECTION
    assert any(r["message"].startswith("configuration:") for r in records)
    assert str(keys) in output  # the path is shown ...
    for secret in (KEY, SECRET_QUERY):  # ... never the key, nor any query
        assert secret not in output
