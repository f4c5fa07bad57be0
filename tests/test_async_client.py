"""AsyncSearchClient against SearchClient: the same calls on one real server give the same results and errors."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime

import pytest
from semsearch import AsyncSearchClient, SearchClient, field
from semsearch.client import SearchApi
from semsearch.errors import InvalidArgumentError, NotFoundError, SemsearchError, UnauthenticatedError
from test_auth_tls import READ_KEY, WRITE_KEY, auth_server, pki, tls_server  # noqa: F401 - fixtures

DOCS = [
    ("a1", "the cat sat on the mat", {"year": 2019, "lang": "en", "tags": ["pets", "home"]}),
    ("a2", "a kitten sleeps on a rug", {"year": 2021, "lang": "en", "score": 0.5, "draft": True}),
    ("a3", "stock markets fell sharply today", {"year": 2023, "lang": "en", "at": datetime(2024, 5, 1, tzinfo=UTC)}),
    ("a4", "der Hund bellt laut", {"year": 2022, "lang": "de"}),
]


def run(coro):
    return asyncio.run(coro)


async def _twin(client: SearchClient, method: str, *args, **kwargs):
    async with AsyncSearchClient(**client.settings) as aclient:
        return await getattr(aclient, method)(*args, **kwargs)


def both(client: SearchClient, method: str, *args, **kwargs):
    """(sync result, async result) of one call."""
    return getattr(client, method)(*args, **kwargs), run(_twin(client, method, *args, **kwargs))


@pytest.fixture(scope="module")
def seeded(server):
    name = "async-parity"
    server.client.create_collection(name)
    server.client.upsert(DOCS, collection=name)
    yield name
    server.client.delete_collection(name)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_search_in_each_mode_is_the_same(client, seeded, mode):
    sync_hits, async_hits = both(client, "search", "a cat on a mat", collection=seeded, top_k=3, mode=mode)
    assert sync_hits and [h.id for h in sync_hits] == [h.id for h in async_hits]
    assert sync_hits == async_hits  # scores, texts, typed metadata, passages


def test_filtered_search_batch_search_and_embed_are_the_same(client, seeded):
    where = (field("year") >= 2020) & (field("lang") == "en")
    sync_hits, async_hits = both(client, "search", "animals", collection=seeded, where=where)
    assert {h.id for h in sync_hits} == {"a2", "a3"} and sync_hits == async_hits
    sync_batch, async_batch = both(client, "batch_search", ["cat", "stocks"], collection=seeded, top_k=2)
    assert sync_batch == async_batch
    sync_vecs, async_vecs = both(client, "embed", ["one", "two"])
    assert sync_vecs.shape == async_vecs.shape and (sync_vecs == async_vecs).all()


def test_get_count_scroll_are_the_same(client, seeded):
    sync_docs, async_docs = both(client, "get", ["a3", "missing", "a1"], collection=seeded)
    assert [d.id for d in sync_docs] == ["a3", "a1"] and sync_docs == async_docs
    assert sync_docs[0].metadata["at"] == datetime(2024, 5, 1, tzinfo=UTC)
    assert both(client, "count", collection=seeded, where="year >= 2021") == (3, 3)
    sync_page, async_page = both(client, "scroll", collection=seeded, limit=3)
    assert sync_page == async_page and len(sync_page.documents) == 3 and sync_page.next_cursor
    rest = both(client, "scroll", collection=seeded, cursor=sync_page.next_cursor)
    assert rest[0] == rest[1] and [d.id for d in rest[0].documents] == ["a4"]


def test_explain_is_the_same(client, seeded):
    sync_result, async_result = both(client, "explain", "cat", doc_id="a1", collection=seeded, top_k=2, mode="hybrid")
    assert sync_result.score == async_result.score
    assert sync_result.ranking == async_result.ranking
    assert sync_result.doc_segments == async_result.doc_segments
    assert (sync_result.pair_contributions == async_result.pair_contributions).all()


def test_writes_through_the_async_client_are_what_sync_writes_would_be(client, collection):
    async def writes():
        async with AsyncSearchClient(**client.settings) as aclient:
            upserted = await aclient.upsert(DOCS, collection=collection)
            updated = await aclient.update_attributes(["a1"], set={"year": 2030}, unset=["tags"], collection=collection)
            by_id = await aclient.delete(["a4", "nope"], collection=collection)
            by_filter = await aclient.delete(collection=collection, where=field("lang") == "de")
            streamed = await aclient.upsert_stream([[DOCS[3]], [("a5", "five")]], collection=collection)
            return upserted, updated, by_id, by_filter, streamed

    assert run(writes()) == (4, 1, 1, 0, 2)
    assert client.get(["a1"], collection=collection)[0].metadata == {"year": 2030, "lang": "en"}
    assert client.count(collection=collection) == 5


@pytest.mark.parametrize(
    "method, args, kwargs, error",
    [
        ("search", ("",), {}, InvalidArgumentError),
        ("search", ("x",), {"collection": "no-such-collection"}, NotFoundError),
        ("count", (), {"where": "year >="}, InvalidArgumentError),
        ("explain", ("x",), {"doc_id": "no-such-doc"}, NotFoundError),
        ("upsert", ([("", "no id")],), {}, InvalidArgumentError),
    ],
)
def test_errors_map_to_the_same_exception_classes(client, method, args, kwargs, error):
    with pytest.raises(error) as sync_error:
        getattr(client, method)(*args, **kwargs)
    with pytest.raises(error) as async_error:
        run(_twin(client, method, *args, **kwargs))
    assert type(sync_error.value) is type(async_error.value)
    assert sync_error.value.code == async_error.value.code and sync_error.value.details == async_error.value.details


def test_local_argument_errors_are_the_same(client):
    for call in (lambda c: c.search("x", mode="fuzzy"), lambda c: c.explain("x")):
        with pytest.raises(ValueError) as sync_error:
            call(client)
        with pytest.raises(ValueError) as async_error:

            async def go(call=call):
                async with AsyncSearchClient(**client.settings) as aclient:
                    await call(aclient)

            run(go())
        assert str(sync_error.value) == str(async_error.value)


# -- constructor parity ------------------------------------------------------------------------------
def test_both_clients_take_the_same_constructor_and_methods():
    assert inspect.signature(SearchClient.__init__) == inspect.signature(AsyncSearchClient.__init__)
    public = {name for name in vars(SearchApi) if not name.startswith("_")}
    for name in public:
        assert getattr(SearchClient, name) is getattr(AsyncSearchClient, name), name  # one definition


def test_settings_rebuild_an_equal_twin():
    client = SearchClient("127.0.0.1:1", timeout=3.5, api_key="k", options=[("grpc.primary_user_agent", "x")])
    try:

        async def twin_settings():
            async with AsyncSearchClient(**client.settings) as aclient:
                return aclient.settings, aclient._metadata

        settings, metadata = run(twin_settings())
        assert settings == client.settings and metadata == client._metadata
    finally:
        client.close()


def test_api_keys_are_accepted_and_refused_the_same_way(auth_server):  # noqa: F811
    for key, ok in [(WRITE_KEY, True), (READ_KEY, True), ("wrong", False), ("", False)]:
        with SearchClient(auth_server.address, api_key=key, timeout=30) as c:
            if ok:
                sync_hits, async_hits = both(c, "search", "cat", top_k=1)
                assert sync_hits == async_hits and sync_hits[0].id == "a"
            else:
                with pytest.raises(UnauthenticatedError):
                    c.search("cat")
                with pytest.raises(UnauthenticatedError):
                    run(_twin(c, "search", "cat"))


def test_tls_options_are_accepted_the_same_way(tls_server, pki):  # noqa: F811
    with SearchClient(f"localhost:{tls_server.port}", tls_ca=str(pki["ca"]), timeout=30) as c:
        assert both(c, "health") == ("SERVING", "SERVING")
    with SearchClient(tls_server.address, tls_ca=str(pki["other_ca"]), timeout=5) as c:
        with pytest.raises(SemsearchError) as sync_error:
            c.list_collections()
        with pytest.raises(SemsearchError) as async_error:
            run(_twin(c, "list_collections"))
        assert sync_error.value.code == async_error.value.code
