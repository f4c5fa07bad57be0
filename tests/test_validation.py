"""Malformed requests: each gets the right status code and a message naming the field, and changes nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from semsearch.v1 import search_service_pb2 as pb

# Behaviour: every test that uses the server runs on the local and on the Milvus store.
pytestmark = pytest.mark.both_stores

LONG = "x" * 20_001  # one over the default max_text_chars


def doc(id="ok", text="a fine document", **metadata):
    return pb.Document(id=id, text=text, metadata=metadata)


def upsert(*docs, collection="validation"):
    return ("Upsert", pb.UpsertRequest(collection=collection, documents=list(docs)))


# (case id, rpc, request, expected code, a string the message must contain)
CASES = [
    ("upsert-empty", *upsert(), "INVALID_ARGUMENT", "documents"),
    ("upsert-empty-id", *upsert(doc(id="")), "INVALID_ARGUMENT", "documents[0].id"),
    ("upsert-blank-id", *upsert(doc(id="   ")), "INVALID_ARGUMENT", "documents[0].id"),
    ("upsert-empty-text", *upsert(doc(text="")), "INVALID_ARGUMENT", "documents[0].text"),
    ("upsert-blank-text", *upsert(doc(text=" \n\t ")), "INVALID_ARGUMENT", "documents[0].text"),
    ("upsert-oversized-text", *upsert(doc(text=LONG)), "INVALID_ARGUMENT", "20000"),
    ("upsert-duplicate-ids", *upsert(doc(id="a"), doc(id="a")), "INVALID_ARGUMENT", "duplicate"),
    (
        "upsert-one-bad-in-good-batch",
        *upsert(doc(id="g1"), doc(id="g2", text=""), doc(id="g3")),
        "INVALID_ARGUMENT",
        "documents[1].text",
    ),
    ("upsert-control-in-id", *upsert(doc(id="a\x01b")), "INVALID_ARGUMENT", "documents[0].id"),
    ("upsert-nul-in-id", *upsert(doc(id="a\x00b")), "INVALID_ARGUMENT", "documents[0].id"),
    ("upsert-control-in-metadata-key", *upsert(doc(**{"k\x07": "v"})), "INVALID_ARGUMENT", "key"),
    ("upsert-long-id", *upsert(doc(id="i" * 257)), "INVALID_ARGUMENT", "256"),
    ("upsert-huge-metadata-value", *upsert(doc(k="v" * 5000)), "INVALID_ARGUMENT", "metadata"),
    (
        "upsert-too-many-metadata",
        *upsert(pb.Document(id="m", text="t", metadata={f"k{i}": "v" for i in range(65)})),
        "INVALID_ARGUMENT",
        "64",
    ),
    (
        "upsert-empty-metadata-key",
        *upsert(pb.Document(id="m", text="t", metadata={"": "v"})),
        "INVALID_ARGUMENT",
        "metadata",
    ),
    ("upsert-too-many-docs", *upsert(*[doc(id=f"d{i}") for i in range(1001)]), "INVALID_ARGUMENT", "1000"),
    ("upsert-path-collection", *upsert(doc(), collection="../x"), "INVALID_ARGUMENT", "collection"),
    ("upsert-slash-collection", *upsert(doc(), collection="a/b"), "INVALID_ARGUMENT", "collection"),
    ("upsert-unknown-collection", *upsert(doc(), collection="no-such-collection"), "NOT_FOUND", "no-such-collection"),
    ("search-empty-query", "Search", pb.SearchRequest(collection="validation", query=""), "INVALID_ARGUMENT", "query"),
    (
        "search-blank-query",
        "Search",
        pb.SearchRequest(collection="validation", query="  "),
        "INVALID_ARGUMENT",
        "query",
    ),
    (
        "search-oversized-query",
        "Search",
        pb.SearchRequest(collection="validation", query=LONG),
        "INVALID_ARGUMENT",
        "query",
    ),
    (
        "search-negative-top-k",
        "Search",
        pb.SearchRequest(collection="validation", query="q", top_k=-1),
        "INVALID_ARGUMENT",
        "top_k",
    ),
    (
        "search-huge-top-k",
        "Search",
        pb.SearchRequest(collection="validation", query="q", top_k=1_000_001),
        "INVALID_ARGUMENT",
        "top_k",
    ),
    (
        "search-min-score-out-of-range",
        "Search",
        pb.SearchRequest(collection="validation", query="q", min_score=2.0),
        "INVALID_ARGUMENT",
        "min_score",
    ),
    (
        "search-nan-min-score",
        "Search",
        pb.SearchRequest(collection="validation", query="q", min_score=float("nan")),
        "INVALID_ARGUMENT",
        "min_score",
    ),
    ("search-bad-collection", "Search", pb.SearchRequest(collection="..", query="q"), "INVALID_ARGUMENT", "collection"),
    (
        "search-blank-query",
        "Search",
        pb.SearchRequest(collection="validation", query=" \t\n "),
        "INVALID_ARGUMENT",
        "query",
    ),
    ("batch-no-queries", "BatchSearch", pb.BatchSearchRequest(collection="validation"), "INVALID_ARGUMENT", "queries"),
    (
        "batch-one-blank-query",
        "BatchSearch",
        pb.BatchSearchRequest(collection="validation", queries=["ok", ""]),
        "INVALID_ARGUMENT",
        "queries[1]",
    ),
    ("delete-no-ids", "Delete", pb.DeleteRequest(collection="validation"), "INVALID_ARGUMENT", "ids"),
    (
        "delete-empty-id",
        "Delete",
        pb.DeleteRequest(collection="validation", ids=["keep1", ""]),
        "INVALID_ARGUMENT",
        "ids[1]",
    ),
    (
        "delete-duplicate-ids",
        "Delete",
        pb.DeleteRequest(collection="validation", ids=["keep1", "keep1"]),
        "INVALID_ARGUMENT",
        "duplicate",
    ),
    (
        "delete-too-many-ids",
        "Delete",
        pb.DeleteRequest(collection="validation", ids=[f"x{i}" for i in range(1001)]),
        "INVALID_ARGUMENT",
        "1000",
    ),
    ("get-no-ids", "Get", pb.GetRequest(collection="validation"), "INVALID_ARGUMENT", "ids"),
    ("embed-no-texts", "Embed", pb.EmbedRequest(), "INVALID_ARGUMENT", "texts"),
    (
        "create-existing",
        "CreateCollection",
        pb.CreateCollectionRequest(name="validation"),
        "ALREADY_EXISTS",
        "validation",
    ),
    ("create-bad-name", "CreateCollection", pb.CreateCollectionRequest(name="../etc"), "INVALID_ARGUMENT", "name"),
    ("create-empty-name", "CreateCollection", pb.CreateCollectionRequest(name=""), "INVALID_ARGUMENT", "name"),
    (
        "create-bad-hnsw-m",
        "CreateCollection",
        pb.CreateCollectionRequest(
            name="hnswbad", index=pb.IndexConfig(kind=pb.INDEX_KIND_HNSW, hnsw=pb.HnswParams(m=1000))
        ),
        "INVALID_ARGUMENT",
        "index.hnsw.m",
    ),
    (
        "delete-collection-unknown",
        "DeleteCollection",
        pb.DeleteCollectionRequest(name="never-made"),
        "NOT_FOUND",
        "never-made",
    ),
    (
        "explain-no-target",
        "Explain",
        pb.ExplainRequest(collection="validation", query="q"),
        "INVALID_ARGUMENT",
        "target",
    ),
    (
        "explain-unknown-doc",
        "Explain",
        pb.ExplainRequest(collection="validation", query="q", doc_id="ghost"),
        "NOT_FOUND",
        "ghost",
    ),
    (
        "explain-empty-query",
        "Explain",
        pb.ExplainRequest(collection="validation", query="", doc_id="keep1"),
        "INVALID_ARGUMENT",
        "query",
    ),
    (
        "explain-blank-query",
        "Explain",
        pb.ExplainRequest(collection="validation", query=" ", doc_id="keep1"),
        "INVALID_ARGUMENT",
        "query",
    ),
    (
        "delete-collection-no-name",
        "DeleteCollection",
        pb.DeleteCollectionRequest(name=""),
        "INVALID_ARGUMENT",
        "name",
    ),
    (
        "reindex-bad-name",
        "Reindex",
        pb.ReindexRequest(collection="no spaces allowed"),
        "INVALID_ARGUMENT",
        "collection",
    ),
    # Typed attributes and filters (API.md "Typed metadata and filters"): a batch with one bad document
    # writes none of them, a refused filter changes nothing.
    (
        "upsert-key-in-both-views",
        *upsert(pb.Document(id="m", text="t", metadata={"k": "v"}, attributes={"k": pb.Value(int_value=1)})),
        "INVALID_ARGUMENT",
        "both metadata and attributes",
    ),
    (
        "upsert-nan-attribute-after-a-good-document",
        *upsert(doc("ok"), pb.Document(id="m", text="t", attributes={"x": pb.Value(double_value=float("nan"))})),
        "INVALID_ARGUMENT",
        "documents[1].attributes",
    ),
    (
        "upsert-nested-list",
        *upsert(
            pb.Document(
                id="m",
                text="t",
                attributes={"x": pb.Value(list_value=pb.ValueList(values=[pb.Value(list_value=pb.ValueList())]))},
            )
        ),
        "INVALID_ARGUMENT",
        "scalars only",
    ),
    (
        "upsert-sub-microsecond-timestamp",
        *upsert(
            pb.Document(id="m", text="t", attributes={"t": pb.Value(timestamp_value=Timestamp(seconds=1, nanos=1))})
        ),
        "INVALID_ARGUMENT",
        "microsecond",
    ),
    (
        "search-bad-expression",
        "Search",
        pb.SearchRequest(collection="validation", query="q", where=pb.Filter(expression="k == ")),
        "INVALID_ARGUMENT",
        "where.expression: ",
    ),
    (
        "count-unspecified-operator",
        "Count",
        pb.CountRequest(collection="validation", where=pb.Filter(condition=pb.Condition(field="k"))),
        "INVALID_ARGUMENT",
        "where.condition: op is unspecified",
    ),
    (
        "count-in-without-a-list",
        "Count",
        pb.CountRequest(
            collection="validation",
            where=pb.Filter(condition=pb.Condition(field="k", op=pb.OPERATOR_IN, value=pb.Value(string_value="v"))),
        ),
        "INVALID_ARGUMENT",
        "IN needs a list value",
    ),
    (
        "scroll-limit-over-10000",
        "Scroll",
        pb.ScrollRequest(collection="validation", limit=10_001),
        "INVALID_ARGUMENT",
        "limit",
    ),
    (
        "scroll-foreign-cursor",
        "Scroll",
        pb.ScrollRequest(collection="validation", cursor="x!"),
        "INVALID_ARGUMENT",
        "cursor",
    ),
    (
        "delete-empty-where",
        "Delete",
        pb.DeleteRequest(collection="validation", where=pb.Filter()),
        "INVALID_ARGUMENT",
        "where: the filter is empty",
    ),
    (
        "delete-ids-and-where",
        "Delete",
        pb.DeleteRequest(collection="validation", ids=["keep1"], where=pb.Filter(expression='k == "v"')),
        "INVALID_ARGUMENT",
        "ids and where",
    ),
    (
        "update-attributes-nothing-to-change",
        "UpdateAttributes",
        pb.UpdateAttributesRequest(collection="validation", ids=["keep1"]),
        "INVALID_ARGUMENT",
        "set and unset",
    ),
    (
        "update-attributes-infinite-value",
        "UpdateAttributes",
        pb.UpdateAttributesRequest(
            collection="validation", ids=["keep1"], set={"x": pb.Value(double_value=float("inf"))}
        ),
        "INVALID_ARGUMENT",
        "set",
    ),
    (
        "update-attributes-set-and-unset-one-key",
        "UpdateAttributes",
        pb.UpdateAttributesRequest(
            collection="validation", ids=["keep1"], set={"k": pb.Value(int_value=1)}, unset=["k"]
        ),
        "INVALID_ARGUMENT",
        "also in set",
    ),
    (
        "update-attributes-empty-where",
        "UpdateAttributes",
        pb.UpdateAttributesRequest(collection="validation", where=pb.Filter(all=pb.FilterList()), unset=["k"]),
        "INVALID_ARGUMENT",
        "where: an empty filter",
    ),
    ("set-alias-empty", "SetAlias", pb.SetAliasRequest(alias="", collection="validation"), "INVALID_ARGUMENT", "alias"),
    (
        "set-alias-path",
        "SetAlias",
        pb.SetAliasRequest(alias="a/b", collection="validation"),
        "INVALID_ARGUMENT",
        "alias",
    ),
    (
        "set-alias-bad-collection",
        "SetAlias",
        pb.SetAliasRequest(alias="fine", collection="../up"),
        "INVALID_ARGUMENT",
        "collection",
    ),
    ("delete-alias-empty", "DeleteAlias", pb.DeleteAliasRequest(alias=""), "INVALID_ARGUMENT", "alias"),
    ("delete-alias-long", "DeleteAlias", pb.DeleteAliasRequest(alias="a" * 65), "INVALID_ARGUMENT", "alias"),
    (
        "create-snapshot-bad-collection",
        "CreateSnapshot",
        pb.CreateSnapshotRequest(collection="a/b"),
        "INVALID_ARGUMENT",
        "collection",
    ),
    (
        "list-snapshots-bad-collection",
        "ListSnapshots",
        pb.ListSnapshotsRequest(collection="../x"),
        "INVALID_ARGUMENT",
        "collection",
    ),
    ("delete-snapshot-empty", "DeleteSnapshot", pb.DeleteSnapshotRequest(name=""), "INVALID_ARGUMENT", "name"),
    ("delete-snapshot-path", "DeleteSnapshot", pb.DeleteSnapshotRequest(name="../x"), "INVALID_ARGUMENT", "name"),
    (
        "restore-snapshot-hidden-name",
        "RestoreSnapshot",
        pb.RestoreSnapshotRequest(name=".partial", collection="fresh"),
        "INVALID_ARGUMENT",
        "name",
    ),
    (
        "restore-snapshot-no-collection",
        "RestoreSnapshot",
        pb.RestoreSnapshotRequest(name="fine", collection=""),
        "INVALID_ARGUMENT",
        "collection",
    ),
]


@pytest.fixture(scope="module")
def stub_and_snapshot(server):
    client = server.client
    client.create_collection("validation")
    client.upsert(
        [
            pb.Document(id="keep1", text="I drink water", metadata={"k": "v"}),
            pb.Document(id="keep2", text="I eat steak"),
        ],
        collection="validation",
    )
    yield client.stub
    client.delete_collection("validation")


def _state(client):
    docs = client.get(["keep1", "keep2", "ok", "a", "g1", "g3", "m", "d0"], collection="validation")
    names = sorted(c.name for c in client.list_collections())
    return docs, names


# RPCs whose malformed requests are tested elsewhere, and why.
TESTED_ELSEWHERE = {"UpsertStream": "client-streaming; its bad messages are in test_upsert_stream.py"}


def test_every_rpc_that_takes_input_has_a_malformed_case():
    """A new RPC (or one that gained fields) needs its own cases here, or a reason in TESTED_ELSEWHERE."""
    service = pb.DESCRIPTOR.services_by_name["SearchService"]
    taking_input = {m.name for m in service.methods if m.input_type.fields}
    covered = {case[1] for case in CASES}
    assert covered <= {m.name for m in service.methods}, "a case names an RPC the service does not have"
    assert taking_input - covered == set(TESTED_ELSEWHERE)


@pytest.mark.parametrize(
    ("rpc", "request_message", "code", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_request_is_rejected_and_changes_nothing(
    server, stub_and_snapshot, rpc, request_message, code, needle
):
    before = _state(server.client)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub_and_snapshot, rpc)(request_message, timeout=60)
    assert info.value.code().name == code, info.value.details()
    assert needle in info.value.details()
    assert _state(server.client) == before


def test_message_over_the_size_limit_is_resource_exhausted(tmp_path, embedder, explainer):
    from conftest import InProcessServer
    from semsearch_server.config import Limits

    srv = InProcessServer(tmp_path, embedder, explainer, limits=Limits(max_message_bytes=64 * 1024))
    try:
        big = pb.UpsertRequest(documents=[pb.Document(id=f"d{i}", text="y" * 10_000) for i in range(10)])
        with pytest.raises(grpc.RpcError) as info:
            srv.client.stub.Upsert(big, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert srv.client.get(["d0"]) == []
    finally:
        srv.stop()
