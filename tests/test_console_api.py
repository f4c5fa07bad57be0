"""The console's JSON endpoints (POST /api/v1/<Rpc>) against a real server: the same answers as the gRPC API
in the protobuf JSON mapping, the same API keys (no key 401, a read key sees only its collections), and the
page and its assets served from the package, with nothing loaded from elsewhere."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from conftest import InProcessServer
from google.protobuf import json_format
from semsearch.v1 import search_service_pb2 as pb
from semsearch_server.domain import CollectionSettings

QUERY = "I drink water with wine"
ADMIN_KEY = "console-admin-5f1c"
READ_KEY = "console-read-9d2e"  # read on demo and docs-* only


@pytest.fixture(scope="module")
def console(tmp_path_factory, embedder, explainer):
    srv = InProcessServer(tmp_path_factory.mktemp("console"), embedder, explainer, seed_demo=True, console_port=0)
    yield srv, f"http://127.0.0.1:{srv.app.console.port}"
    srv.stop()


@pytest.fixture(scope="module")
def keyed_console(tmp_path_factory, embedder, explainer):
    data = tmp_path_factory.mktemp("console-keys")
    keys = data / "keys"
    keys.write_text(f"{ADMIN_KEY} admin\n{READ_KEY} read demo docs-*\n")
    srv = InProcessServer(data, embedder, explainer, seed_demo=True, console_port=0, api_key_file=keys)
    yield srv, f"http://127.0.0.1:{srv.app.console.port}"
    srv.stop()


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self):
        return json.loads(self.text)


def fetch(url: str, data: bytes | None = None, headers: dict | None = None) -> Response:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode())


def call(url: str, rpc: str, body: dict, key: str | None = None, path_suffix: str = "") -> Response:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    return fetch(f"{url}/api/v1/{rpc}{path_suffix}", json.dumps(body).encode(), headers)


def test_search_is_the_grpc_search_in_protobuf_json(console):
    srv, url = console
    response = call(url, "Search", {"collection": "demo", "query": QUERY, "topK": 5, "mode": "SEARCH_MODE_HYBRID"})
    assert response.status_code == 200, response.text
    expected = srv.client.stub.Search(
        pb.SearchRequest(collection="demo", query=QUERY, top_k=5, mode=pb.SEARCH_MODE_HYBRID), timeout=60
    )
    got = json_format.ParseDict(response.json(), pb.SearchResponse())
    assert [h.id for h in got.hits] == [h.id for h in expected.hits]
    assert [h.score for h in got.hits] == pytest.approx([h.score for h in expected.hits], abs=1e-6)
    assert {h.id for h in got.hits[:3]} == {"c3", "c4", "c5"}  # the drinks first
    hit = response.json()["hits"][0]
    assert {"denseScore", "lexicalScore", "passage", "text"} <= hit.keys()


def test_explain_matrix_matches_the_rpc(console):
    srv, url = console
    body = {"collection": "demo", "query": QUERY, "docId": "c3", "topK": 3}
    data = call(url, "Explain", body).json()
    expected = srv.client.stub.Explain(pb.ExplainRequest(collection="demo", query=QUERY, doc_id="c3", top_k=3))
    assert (data["rows"], data["cols"]) == (expected.rows, expected.cols)
    assert len(data["pairContributions"]) == data["rows"] * data["cols"]
    assert [s["text"] for s in data["querySegments"]] == [s.text for s in expected.query_segments]
    assert data["rank"] == expected.rank and data["kthScore"] == pytest.approx(expected.kth_score, abs=1e-6)


def test_bad_filter_is_400_with_the_servers_message(console):
    _, url = console
    response = call(url, "Search", {"collection": "demo", "query": QUERY, "where": {"expression": "year >= "}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("where.expression:")


def test_malformed_body_and_unknown_or_write_rpc_are_refused(console):
    _, url = console
    assert fetch(f"{url}/api/v1/Search", b"{not json").status_code == 400
    assert call(url, "Search", {"topK": "many"}).status_code == 400
    # The console only looks: the write RPCs are not served, and neither is an unknown name.
    for rpc in ("Upsert", "DeleteCollection", "NoSuchRpc"):
        assert call(url, rpc, {}).status_code == 404
    assert call(url, "Get", {"collection": "no-such"}).status_code == 404


def test_scroll_count_and_embed(console):
    _, url = console
    count = call(url, "Count", {"collection": "demo"}).json()
    assert int(count["count"]) == 5
    page = call(url, "Scroll", {"collection": "demo", "limit": 2}).json()
    assert [d["id"] for d in page["documents"]] == ["c1", "c2"] and page["nextCursor"]
    embedded = call(url, "Embed", {"texts": [QUERY, "I eat salmon"]}).json()
    assert len(embedded["embeddings"]) == 2 and embedded["dimension"] == len(embedded["embeddings"][0]["values"])


def test_page_and_assets_are_served_from_the_package(console):
    _, url = console
    page = fetch(f"{url}/?q=I%20drink%20water%20with%20wine&explain=c3")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("console.js", "console.css"):
        assert fetch(f"{url}/static/{asset}").status_code == 200
    # Offline: the page loads only this server's paths, and nothing names another host (the SVG namespace
    # is a name, not an address that is fetched).
    assert [u for u in re.findall(r'(?:src|href)="([^"]*)"', page.text) if u != "#"] == [
        "/static/console.css",
        "/static/console.js",
    ]
    for asset in ("console.js", "console.css"):
        text = fetch(f"{url}/static/{asset}").text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)|@import|url\(|//cdn", text), asset


def test_no_key_is_401_and_an_unknown_key_too(keyed_console):
    _, url = keyed_console
    for key in (None, "not-a-key"):
        response = call(url, "ListCollections", {}, key)
        assert response.status_code == 401
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_read_key_sees_and_searches_only_its_collections(keyed_console):
    srv, url = keyed_console
    assert call(url, "ListCollections", {}, ADMIN_KEY).status_code == 200
    srv.app.service.create_collection("secret-notes", CollectionSettings())
    admin_names = {c["name"] for c in call(url, "ListCollections", {}, ADMIN_KEY).json()["collections"]}
    read_names = {c["name"] for c in call(url, "ListCollections", {}, READ_KEY).json()["collections"]}
    assert "demo" in read_names and read_names < admin_names
    assert "secret-notes" in admin_names and "secret-notes" not in read_names
    info = call(url, "GetInfo", {}, READ_KEY).json()
    assert {c["name"] for c in info["collections"]} == read_names
    assert call(url, "Search", {"collection": "demo", "query": QUERY}, READ_KEY).status_code == 200
    refused = call(url, "Search", {"collection": "secret-notes", "query": QUERY}, READ_KEY)
    assert refused.status_code == 403 and refused.json()["error"]["status"] == "PERMISSION_DENIED"
    # The key travels in the header only: one in the URL is not read.
    assert call(url, "ListCollections", {}, path_suffix=f"?key={READ_KEY}").status_code == 401


def test_cli_map_writes_the_same_picture_from_a_terminal(console, tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np
    from semsearch.cli import main
    from semsearch.map_view import project

    srv, _ = console
    png = tmp_path / "map.png"
    assert main(["map", QUERY, "--address", srv.address, "--collection", "demo", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hits = srv.client.search(QUERY, collection="demo", top_k=5)
    projection = project(srv.client.embed([QUERY, *(h.text for h in hits)]))
    where = {h.id: projection.coords[i + 1] for i, h in enumerate(hits)}
    query = projection.coords[0]
    assert max(np.linalg.norm(where[d] - query) for d in ("c3", "c4", "c5")) < min(
        np.linalg.norm(where[d] - query) for d in ("c1", "c2")
    )
    assert (query <= 0).all() and sum(projection.explained) <= 1 + 1e-9


def test_console_port_is_off_unless_set_by_flag_env_or_toml(tmp_path):
    from semsearch_server.config import ConfigError, load_config

    assert load_config([], {}).console_port is None
    assert load_config(["--console-port", "8080"], {}).console_port == 8080
    assert load_config([], {"SEMSEARCH_CONSOLE_PORT": "9090"}).console_port == 9090
    toml = tmp_path / "server.toml"
    toml.write_text("console_port = 7070\n")
    assert load_config(["--config", str(toml)], {}).console_port == 7070
    with pytest.raises(ConfigError, match="console_port"):
        load_config(["--console-port", "70000"], {})
