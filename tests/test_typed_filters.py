"""Typed attributes and filters end to end: real model, every store, a real gRPC channel.

Every filtered answer is checked against the plain-Python reference semantics (filtering.evaluate) and
brute-force cosine over the documents it matches, not against numbers copied from a run.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest
from conftest import FIXTURES, InProcessServer
from semsearch import (
    Document,
    InvalidArgumentError,
    NotFoundError,
    SearchClient,
    exists,
    field,
)
from semsearch.v1 import search_service_pb2 as pb
from semsearch_server.filtering import matches, parse

# Every test that uses the server runs on the local store, a Milvus Lite server and a Milvus Lite file; the
# data directory from before attributes is the local store's own format, so that test runs on it alone.
pytestmark = pytest.mark.both_stores

WINES = [
    Document("w1", "A red wine from Bordeaux, dry and full-bodied.", {"color": "red", "year": 2019, "price": 24.5}),
    Document("w2", "A crisp white wine from the Mosel.", {"color": "white", "year": 2021, "tags": ["ml", "dry"]}),
    Document("w3", "Sparkling wine for a summer evening.", {"color": "white", "year": 2023.0, "organic": True}),
    Document("w4", "Water with lemon, no wine at all.", {"draft": True, "tags": []}),
    Document(
        "w5",
        "Rosé from Provence, pale and fresh.",
        {"color": "rosé", "year": 2020, "bottled": datetime(2021, 3, 1, 12, 30, tzinfo=UTC)},
    ),
    Document("w6", "A steak with fries and a glass of red.", {"color": "red", "year": "2020", "tags": ["food"]}),
]


@pytest.fixture
def wines(client, collection) -> str:
    client.upsert(WINES, collection=collection)
    return collection


def refused(call, *args) -> str:
    """The details of a raw stub call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details()


def reference(where: str) -> set[str]:
    """The documents the reference semantics keeps (the server's parser, the plain-Python evaluator)."""
    tree = parse(where)
    return {d.id for d in WINES if matches(tree, _server_values(d.metadata))}


def _server_values(metadata: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in metadata.items()}


def test_attributes_come_back_with_their_kinds(client, wines):
    got = {d.id: d.metadata for d in client.get([d.id for d in WINES], collection=wines)}
    for doc in WINES:
        assert got[doc.id] == doc.metadata
        for key, value in doc.metadata.items():
            assert type(got[doc.id][key]) is type(value), (doc.id, key)
    hit = next(h for h in client.search("rosé from provence", collection=wines, top_k=6) if h.id == "w5")
    assert hit.metadata == WINES[4].metadata


def test_old_clients_read_the_string_view_only(client, wines):
    response = client.stub.Get(pb.GetRequest(collection=wines, ids=["w1", "w4"]))
    assert dict(response.documents[0].metadata) == {"color": "red"}
    assert set(response.documents[0].attributes) == {"color", "year", "price"}
    assert dict(response.documents[1].metadata) == {}


def test_a_key_in_both_views_is_refused_and_nothing_is_stored(client, collection):
    bad = pb.Document(id="x", text="a text", metadata={"year": "2020"}, attributes={"year": pb.Value(int_value=2020)})
    good = pb.Document(id="y", text="another text")
    details = refused(client.stub.Upsert, pb.UpsertRequest(collection=collection, documents=[good, bad]))
    assert "documents[1]: key 'year' is in both metadata and attributes" in details
    assert client.count(collection=collection) == 0


FILTERS = [
    "year >= 2020",
    'color == "white"',
    'color in ["red", "rosé"]',
    "not exists(color)",
    'tags == "ml"',
    'tags != "ml"',
    'color contains "whi"',
    "year == 2023",
    'year == "2020"',
    "organic == true",
    'bottled < timestamp("2022-01-01T00:00:00Z")',
    '(color == "red" or organic == true) and not exists(draft)',
    "price > 20 or year < 2020",
]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_filtered_search_keeps_exactly_what_the_reference_keeps(client, wines, mode):
    # One collection for every filter (a Milvus collection costs a second or so to set up).
    for where in FILTERS:
        expected = reference(where)
        hits = client.search("wine", collection=wines, top_k=10, where=where, mode=mode, min_score=-1)
        got = {h.id for h in hits}
        if mode == "lexical":  # BM25 keeps only documents with a query term
            assert got <= expected and got == {i for i in expected if "wine" in _text(i).lower()}, where
        else:
            assert got == expected, where
        assert client.count(collection=wines, where=where) == len(expected), where


def _text(doc_id: str) -> str:
    return next(d.text for d in WINES if d.id == doc_id)


def test_filtered_dense_search_is_brute_force_over_the_matching_documents(client, wines, embedder):
    where = 'color in ["red", "white"] and not exists(organic)'
    keep = [d for d in WINES if d.id in reference(where)]
    query = embedder.encode(["a glass of red wine"])[0]
    scores = embedder.encode([d.text for d in keep]) @ query
    expected = [keep[i].id for i in np.argsort(-scores)][:2]
    hits = client.search("a glass of red wine", collection=wines, top_k=2, where=where, min_score=-1)
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:2], atol=1e-5)


def test_a_filter_built_in_python_and_its_text_form_agree(client, wines):
    tree = (field("year") >= 2020) & ~exists("draft") & field("color").is_in(["white", "rosé"])
    text = 'year >= 2020 and not exists(draft) and color in ["white", "rosé"]'
    assert {h.id for h in client.search("wine", collection=wines, where=tree)} == reference(text)
    assert client.count(collection=wines, where=tree) == client.count(collection=wines, where=text) == 3


def test_the_old_filter_map_and_where_are_anded(client, wines):
    hits = client.search("wine", collection=wines, filter={"color": "white"}, where="year > 2022")
    assert [h.id for h in hits] == ["w3"]


def test_batch_search_and_explain_take_the_filter(client, wines):
    results = client.batch_search(["red wine", "white wine"], collection=wines, where='color == "red"')
    assert all({h.id for h in r} <= {"w1", "w6"} for r in results)
    kept = client.explain("red wine", doc_id="w1", collection=wines, top_k=5, where='color == "red"')
    assert kept.ranking.rank in (1, 2) and kept.ranking.excluded_by == ""


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("year >= 2020", "where.expression at column 1: year >= 2020, document has year = 2019"),
        ("not exists(color)", 'not exists(color), document has color = "red"'),
        ('color == "red" and exists(draft)', "where.expression at column 20: exists(draft), document has no draft"),
    ],
)
def test_explain_says_which_condition_hides_a_document(client, wines, where, message):
    result = client.explain("red wine", doc_id="w1", collection=wines, top_k=5, where=where)
    assert result.ranking.rank == 0
    assert message in result.ranking.excluded_by


def test_count_scroll_pages_every_document_once_in_id_order(client, collection):
    ids = [f"d{i:03d}" for i in range(57)] + ["Z", "a", "é", "日本"]
    client.upsert([Document(i, f"text of {i}", {"n": k}) for k, i in enumerate(ids)], collection=collection)
    seen, cursor, pages = [], "", 0
    while True:
        page = client.scroll(collection=collection, limit=10, cursor=cursor)
        seen += [d.id for d in page.documents]
        pages += 1
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == sorted(ids, key=lambda i: i.encode()) and pages == 7
    odd = client.scroll(collection=collection, where="n >= 50", limit=100)
    assert [d.id for d in odd.documents] == sorted((i for k, i in enumerate(ids) if k >= 50), key=str.encode)
    assert odd.next_cursor == ""
    assert client.count(collection=collection) == len(ids) and client.count(collection=collection, where="n < 5") == 5


def test_a_cursor_of_another_collection_or_garbage_is_refused(client, wines):
    other = f"{wines}_other"
    client.create_collection(other)
    try:
        client.upsert([Document(f"d{i}", "t") for i in range(3)], collection=other)
        cursor = client.scroll(collection=other, limit=1).next_cursor
        with pytest.raises(InvalidArgumentError, match="cursor: it belongs to a scroll of collection"):
            client.scroll(collection=wines, cursor=cursor)
    finally:
        client.delete_collection(other)
    with pytest.raises(InvalidArgumentError, match="cursor: not a cursor"):
        client.scroll(collection=wines, cursor="not-a-cursor!")
    with pytest.raises(InvalidArgumentError, match="limit: 10001 is out of range"):
        client.scroll(collection=wines, limit=10_001)


def test_delete_by_filter_removes_exactly_the_matching_documents(client, wines):
    assert client.delete(collection=wines, where='color == "white" or exists(draft)') == 3
    assert {d.id for d in client.scroll(collection=wines).documents} == {"w1", "w5", "w6"}
    assert {h.id for h in client.search("wine", collection=wines, top_k=10, min_score=-1)} == {"w1", "w5", "w6"}


def test_delete_needs_ids_or_a_non_empty_filter_not_both(client, wines):
    with pytest.raises(InvalidArgumentError, match="ids and where"):
        client.delete(["w1"], collection=wines, where="year > 1")
    for empty in (pb.Filter(), pb.Filter(all=pb.FilterList())):
        assert refused(client.stub.Delete, pb.DeleteRequest(collection=wines, where=empty)).startswith("where: ")
    assert client.count(collection=wines) == len(WINES)


def test_update_attributes_by_id_and_by_filter(client, wines, embedder):
    before = client.search("red wine", collection=wines, top_k=6, min_score=-1)
    assert client.update_attributes(["w1", "w6"], set={"stock": 3, "color": "dark red"}, collection=wines) == 2
    assert client.get(["w1"], collection=wines)[0].metadata == {
        "color": "dark red",
        "year": 2019,
        "price": 24.5,
        "stock": 3,
    }
    assert client.update_attributes(where="stock == 3", unset=["price"], set={"sale": True}, collection=wines) == 2
    assert client.get(["w1"], collection=wines)[0].metadata == {
        "color": "dark red",
        "year": 2019,
        "stock": 3,
        "sale": True,
    }
    # Text and vectors are untouched: the same scores for the same documents.
    after = client.search("red wine", collection=wines, top_k=6, min_score=-1)
    assert [(h.id, round(h.score, 5)) for h in after] == [(h.id, round(h.score, 5)) for h in before]
    assert {h.id for h in client.search("red wine", collection=wines, where="sale == true")} == {"w1", "w6"}


def test_update_attributes_with_an_unknown_id_changes_nothing(client, wines):
    with pytest.raises(NotFoundError, match="'nope'"):
        client.update_attributes(["w1", "nope"], set={"stock": 1}, collection=wines)
    assert "stock" not in client.get(["w1"], collection=wines)[0].metadata
    with pytest.raises(InvalidArgumentError, match="unset\\[0\\]: key 'stock' is also in set"):
        client.update_attributes(["w1"], set={"stock": 1}, unset=["stock"], collection=wines)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ('lang in "en"', "IN needs a list value"),
        ("year >= ", "where.expression: "),
        ("year >>= 3", 'unexpected ">=" at column 7'),
        ("organic < true", "<"),
        ('`` == "x"', "where.expression"),
    ],
)
def test_bad_filters_name_their_place(client, wines, where, message):
    with pytest.raises(InvalidArgumentError) as info:
        client.search("wine", collection=wines, where=where)
    assert message in info.value.details


def test_bad_filter_trees_name_the_node(client, wines):
    cond = pb.Condition(field="year", op=pb.OPERATOR_IN, value=pb.Value(int_value=3))
    tree = pb.Filter(all=pb.FilterList(filters=[pb.Filter(expression="year > 1"), pb.Filter(condition=cond)]))
    details = refused(client.stub.Search, pb.SearchRequest(collection=wines, query="wine", where=tree))
    assert details.startswith("where.all[1].condition: IN needs a list value")
    unspecified = pb.Filter(condition=pb.Condition(field="year", value=pb.Value(int_value=3)))
    details = refused(client.stub.Search, pb.SearchRequest(collection=wines, query="wine", where=unspecified))
    assert details.startswith("where.condition: op is unspecified")


def test_an_injected_quote_matches_only_itself(client, collection):
    evil = '" or 1==1 or "'
    client.upsert(
        [Document("a", "some text", {"k": evil}), Document("b", "more text", {"k": "x"})], collection=collection
    )
    assert {h.id for h in client.search("text", collection=collection, where=field("k") == evil)} == {"a"}
    assert client.count(collection=collection, where=f"k == {json.dumps(evil)}") == 1


def test_a_data_directory_from_before_attributes_reads_back_the_same(tmp_path, embedder, explainer):
    source = FIXTURES / "datadir-before-attributes"
    shutil.copytree(source / "collections", tmp_path / "data" / "collections")
    recorded = json.loads((source / "read-back.json").read_text())
    before = pb.GetResponse.FromString(bytes.fromhex(recorded["get"]))
    server = InProcessServer(tmp_path / "data", embedder, explainer)
    try:
        with SearchClient(server.address) as client:
            now = client.stub.Get(pb.GetRequest(collection="wines", ids=[d.id for d in before.documents]))
            for old, new in zip(before.documents, now.documents, strict=True):
                assert (new.id, new.text, dict(new.metadata)) == (old.id, old.text, dict(old.metadata))
                assert {k: v.string_value for k, v in new.attributes.items()} == dict(old.metadata)
            hits = client.search("wine", collection="wines", top_k=5, filter={"color": "white"})
            assert sorted(h.id for h in hits) == recorded["search_filter_color_white"]
            assert client.count(collection="wines", where='country == "fr"') == 2
    finally:
        server.stop()


def test_update_attributes_past_the_key_limit_changes_no_document(client, wines):
    before = {d.id: d.metadata for d in client.get(["w1", "w2"], collection=wines)}
    many = {f"k{i}": i for i in range(62)}  # w1 and w2 hold 3 keys each: 65 after the update, past 64
    with pytest.raises(InvalidArgumentError, match="document 'w[12]' would have 65 attributes; at most 64"):
        client.update_attributes(["w2", "w1"], set=many, collection=wines)
    assert {d.id: d.metadata for d in client.get(["w1", "w2"], collection=wines)} == before
