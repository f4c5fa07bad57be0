"""The LangChain adapter against a real server: langchain-tests' standard suites, then what is semsearch's own
(modes, filters, MMR, retrievers, refusing a foreign embedding model)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

pytest.importorskip("langchain_core", reason="the LangChain adapter needs the `langchain` extra")
pytest.importorskip("langchain_tests", reason="the standard suites need the `integrations-test` extra")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, VectorStoreIntegrationTests  # noqa: E402
from semsearch import AsyncSearchClient, field  # noqa: E402
from semsearch.integrations.langchain import RetrievalMode, SemsearchEmbeddings, SemsearchVectorStore  # noqa: E402


@pytest.fixture(scope="class")
def class_collection(server):
    name = "lc-" + uuid.uuid4().hex[:10]
    server.client.create_collection(name)
    yield name
    server.client.delete_collection(name)


# langchain-tests' coroutine tests carry no asyncio mark (LangChain runs pytest-asyncio in auto mode); this
# project keeps the strict mode, so the suites' classes are marked, which leaves the standard tests as they are
# (the suites check that none is overridden); the mark is meaningless, and so silent, on their sync tests.
ASYNC_SUITE = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is not"),
]


def _emptied(client, collection: str) -> SemsearchVectorStore:
    store = SemsearchVectorStore(client=client, collection=collection)
    store.delete()  # every document
    return store


class TestLangChainVectorStore(VectorStoreIntegrationTests):
    pytestmark = ASYNC_SUITE

    @pytest.fixture
    def vectorstore(self, client, class_collection):
        # The suite's get_embeddings() (a fake model) is not used: the server embeds texts and queries.
        store = _emptied(client, class_collection)
        yield store
        store.delete()


class TestLangChainEmbeddings(EmbeddingsIntegrationTests):
    pytestmark = ASYNC_SUITE

    @property
    def embeddings_class(self) -> type[SemsearchEmbeddings]:
        return SemsearchEmbeddings

    @pytest.fixture
    def model(self, client) -> SemsearchEmbeddings:
        return SemsearchEmbeddings(client=client)


# -- beyond the suites -------------------------------------------------------------------------------------------
TEXTS = [
    "I drink red wine with dinner",
    "I drink a glass of red wine",
    "Salmon is grilled on the barbecue",
    "Water keeps you hydrated",
]
METAS = [
    {"kind": "drink", "year": 2020, "organic": True, "at": datetime(2024, 1, 2, tzinfo=UTC)},
    {"kind": "drink", "year": 2021, "organic": False, "tags": ["red", "wine"]},
    {"kind": "eat", "year": 2022, "score": 0.25},
    {"kind": "drink", "year": 2023},
]
IDS = ["w1", "w2", "s1", "h1"]


class TestSemsearchSpecifics:
    @pytest.fixture
    def store(self, client, class_collection) -> SemsearchVectorStore:
        store = _emptied(client, class_collection)
        store.add_texts(TEXTS, METAS, ids=IDS)
        return store

    def test_from_texts_round_trips_ids_text_and_typed_metadata(self, client, class_collection):
        store = SemsearchVectorStore.from_texts(
            TEXTS, metadatas=METAS, ids=IDS, client=client, collection=class_collection
        )
        got = store.get_by_ids(["h1", "missing", "w1"])
        assert [(d.id, d.page_content, d.metadata) for d in got] == [
            ("h1", TEXTS[3], METAS[3]),
            ("w1", TEXTS[0], METAS[0]),
        ]
        assert type(got[1].metadata["organic"]) is bool and got[1].metadata["at"] == METAS[0]["at"]

    def test_a_foreign_embedding_model_is_refused_with_the_reason(self, client):
        with pytest.raises(ValueError, match="not be comparable"):
            SemsearchVectorStore(client=client, collection="x", embedding=DeterministicFakeEmbedding(size=6))
        with pytest.raises(ValueError, match="not be comparable"):
            SemsearchVectorStore.from_texts(["a"], DeterministicFakeEmbedding(size=6), client=client, collection="x")
        assert isinstance(
            SemsearchVectorStore(client=client, embedding=SemsearchEmbeddings(client)).embeddings, SemsearchEmbeddings
        )

    @pytest.mark.parametrize("mode", list(RetrievalMode))
    def test_each_mode_returns_the_servers_ranking(self, client, store, mode):
        query = "red wine"
        found = store.similarity_search_with_score(query, k=3, mode=mode)
        expected = client.search(query, collection=store.collection, top_k=3, mode=mode.value)
        assert [(d.id, s) for d, s in found] == [(h.id, h.score) for h in expected]
        assert found[0][0].id in {"w1", "w2"}

    def test_filters_in_each_form(self, store):
        as_text = store.similarity_search("wine", k=4, filter='kind == "drink" and year >= 2021')
        as_tree = store.similarity_search("wine", k=4, filter=(field("kind") == "drink") & (field("year") >= 2021))
        as_mapping = store.similarity_search("wine", k=4, filter={"kind": "eat"})
        assert {d.id for d in as_text} == {d.id for d in as_tree} == {"w2", "h1"}
        assert [d.id for d in as_mapping] == ["s1"]
        assert [d.id for d in store.similarity_search("wine", k=4, filter=field("organic") == True)] == ["w1"]  # noqa: E712

    def test_mmr_prefers_diverse_documents(self, store):
        plain = [d.id for d in store.similarity_search("red wine", k=2)]
        diverse = [d.id for d in store.max_marginal_relevance_search("red wine", k=2, fetch_k=4, lambda_mult=0.3)]
        assert set(plain) == {"w1", "w2"}
        assert diverse[0] in {"w1", "w2"} and diverse[1] not in {"w1", "w2"}

    def test_retriever_with_mode_and_filter(self, store):
        retriever = store.as_retriever(mode="lexical", filter={"kind": "drink"}, search_kwargs={"k": 2})
        docs = retriever.invoke("water hydrated")
        assert docs[0].id == "h1" and all(d.metadata["kind"] == "drink" for d in docs)
        mmr = store.as_retriever(search_type="mmr", mode=RetrievalMode.HYBRID, search_kwargs={"k": 2, "fetch_k": 4})
        assert len(mmr.invoke("red wine")) == 2

    def test_vector_search_is_refused_with_the_reason(self, store):
        with pytest.raises(NotImplementedError, match="query text"):
            store.similarity_search_by_vector([0.0] * 384)

    @pytest.mark.asyncio
    async def test_async_methods_go_through_an_async_client_made_in_the_loop(self, client, store):
        assert await store.asimilarity_search("salmon", k=1, mode="hybrid") == store.similarity_search(
            "salmon", k=1, mode="hybrid"
        )
        assert isinstance(store._async.get(), AsyncSearchClient)
        mmr = await store.amax_marginal_relevance_search("red wine", k=2, fetch_k=4, lambda_mult=0.3)
        assert [d.id for d in mmr] == [
            d.id for d in store.max_marginal_relevance_search("red wine", k=2, fetch_k=4, lambda_mult=0.3)
        ]
        assert [d.id for d in await store.aget_by_ids(["s1"])] == ["s1"]
        docs = await store.as_retriever(mode="dense").ainvoke("salmon")
        assert docs[0].id == "s1"

    @pytest.mark.asyncio
    async def test_an_explicit_async_client_is_used(self, client, class_collection):
        async with AsyncSearchClient(**client.settings) as aclient:
            store = SemsearchVectorStore(client=client, collection=class_collection, async_client=aclient)
            await store.adelete()
            assert await store.aadd_documents([Document(page_content="only one", metadata={"n": 1})], ids=["o"]) == [
                "o"
            ]
            assert store._async.get() is aclient
            assert [d.id for d in await store.asimilarity_search("one")] == ["o"]
