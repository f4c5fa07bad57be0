"""The Haystack adapter against a real server: Haystack's own DocumentStore suites (sync and async), then the
retrievers, the conversions and what the service refuses."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest

pytest.importorskip("haystack", reason="the Haystack adapter needs the `haystack` extra")

from haystack import Document, Pipeline  # noqa: E402
from haystack.document_stores.errors import DuplicateDocumentError  # noqa: E402
from haystack.document_stores.types import DuplicatePolicy  # noqa: E402
from haystack.errors import FilterError  # noqa: E402
from haystack.testing.document_store import CountDocumentsByFilterTest, DocumentStoreBaseExtendedTests  # noqa: E402
from haystack.testing.document_store_async import (  # noqa: E402
    CountDocumentsAsyncTest,
    CountDocumentsByFilterAsyncTest,
    DeleteAllAsyncTest,
    DeleteByFilterAsyncTest,
    DeleteDocumentsAsyncTest,
    FilterDocumentsAsyncTest,
    UpdateByFilterAsyncTest,
    WriteDocumentsAsyncTest,
)
from semsearch.integrations.haystack import (  # noqa: E402
    SemsearchDenseRetriever,
    SemsearchDocumentStore,
    SemsearchHybridRetriever,
    SemsearchLexicalRetriever,
)


@pytest.fixture(scope="class")
def class_collection(server):
    """One collection per test class; each test starts from it emptied."""
    name = "hs-" + uuid.uuid4().hex[:10]
    yield name
    try:
        server.client.delete_collection(name)
    except Exception:  # a test may not have created it
        pass


def _emptied_store(server, collection: str) -> SemsearchDocumentStore:
    store = SemsearchDocumentStore(address=server.address, collection=collection, timeout=60)
    store.delete_all_documents()
    return store


def _without_vectors(documents: list[Document]) -> list[tuple]:
    return sorted((d.id, d.content, d.meta) for d in documents)


class TestHaystackDocumentStore(
    DocumentStoreBaseExtendedTests,
    CountDocumentsByFilterTest,
    CountDocumentsAsyncTest,
    CountDocumentsByFilterAsyncTest,
    DeleteAllAsyncTest,
    DeleteByFilterAsyncTest,
    DeleteDocumentsAsyncTest,
    FilterDocumentsAsyncTest,
    UpdateByFilterAsyncTest,
    WriteDocumentsAsyncTest,
):
    @pytest.fixture
    def document_store(self, server, class_collection) -> SemsearchDocumentStore:
        return _emptied_store(server, class_collection)

    @staticmethod
    def assert_documents_are_equal(received: list[Document], expected: list[Document]) -> None:
        """Haystack asks stores to override this where documents come back different by design: the server
        embeds the text itself and never stores (so never echoes) a Document's own embedding, and documents
        come back in id order, not in write order. Ids, contents and metadata must be equal."""
        assert _without_vectors(received) == _without_vectors(expected)

    def test_write_documents(self, document_store):
        """Haystack leaves the default policy to the store: NONE is FAIL, as in the in-memory store."""
        doc = Document(content="test doc")
        assert document_store.write_documents([doc]) == 1
        with pytest.raises(DuplicateDocumentError):
            document_store.write_documents([doc])
        self.assert_documents_are_equal(document_store.filter_documents(), [doc])

    @pytest.mark.asyncio
    async def test_write_documents_async(self, document_store):
        doc = Document(content="test doc")
        assert await document_store.write_documents_async([doc]) == 1
        with pytest.raises(DuplicateDocumentError):
            await document_store.write_documents_async([doc])
        self.assert_documents_are_equal(await document_store.filter_documents_async(), [doc])


# -- beyond the suites -------------------------------------------------------------------------------------------
TYPED = Document(
    id="typed",
    content="a typed document",
    meta={
        "s": "text",
        "i": 7,
        "f": 2.5,
        "b": False,
        "at": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        "tags": ["x", "y"],
        "nums": [1, 2],
    },
    embedding=[0.5] * 768,
)
CORPUS = [
    Document(id="w1", content="I drink red wine with dinner", meta={"kind": "drink", "year": 2020}),
    Document(id="w2", content="Salmon is grilled on the barbecue", meta={"kind": "eat", "year": 2021}),
    Document(id="w3", content="Water keeps you hydrated", meta={"kind": "drink", "year": 2022}),
]


class TestSemsearchSpecifics:
    @pytest.fixture
    def document_store(self, server, class_collection) -> SemsearchDocumentStore:
        return _emptied_store(server, class_collection)

    def test_ids_text_and_typed_meta_round_trip_and_embeddings_are_ignored_once(self, document_store, caplog):
        with caplog.at_level(logging.WARNING, logger="semsearch.integrations.haystack.document_store"):
            document_store.write_documents([TYPED])
            document_store.write_documents([Document(content="second", embedding=[0.1] * 768)])
        (back,) = document_store.filter_documents({"field": "meta.i", "operator": "==", "value": 7})
        assert (back.id, back.content, back.meta) == (TYPED.id, TYPED.content, TYPED.meta)
        assert {type(v) for v in back.meta.values()} == {str, int, float, bool, datetime, list}
        assert back.embedding is None
        assert sum("ignores the Documents' own embeddings" in r.getMessage() for r in caplog.records) == 1

    def test_bool_and_datetime_filters(self, document_store):
        document_store.write_documents([TYPED, Document(id="other", content="other", meta={"b": True})])

        def ids(filters):
            return [d.id for d in document_store.filter_documents(filters)]

        assert ids({"field": "meta.b", "operator": "==", "value": False}) == ["typed"]
        assert ids({"field": "meta.at", "operator": ">", "value": datetime(2024, 1, 1, tzinfo=UTC)}) == ["typed"]
        assert ids({"field": "meta.at", "operator": "<", "value": "2024-01-01T00:00:00+00:00"}) == []
        assert ids({"field": "meta.tags", "operator": "in", "value": ["y", "z"]}) == ["typed"]
        assert ids({"field": "meta.i", "operator": "in", "value": [None]}) == ["other"]

    @pytest.mark.parametrize("field", ["id", "content", "embedding"])
    def test_filters_the_service_cannot_apply_are_refused(self, document_store, field):
        with pytest.raises(FilterError, match="metadata only"):
            document_store.filter_documents({"field": field, "operator": "==", "value": "x"})

    def test_documents_the_service_cannot_store_are_refused(self, document_store):
        with pytest.raises(ValueError, match="no content"):
            document_store.write_documents([Document(id="blob-only")])
        with pytest.raises(ValueError, match="dict"):
            document_store.write_documents([Document(content="x", meta={"nested": {"a": 1}})])
        assert document_store.count_documents() == 0

    def test_every_policy_within_one_batch(self, document_store):
        first, again = Document(id="d", content="one"), Document(id="d", content="two")
        with pytest.raises(DuplicateDocumentError):
            document_store.write_documents([first, again], policy=DuplicatePolicy.FAIL)
        assert document_store.write_documents([first, again], policy=DuplicatePolicy.SKIP) == 1
        assert document_store.filter_documents()[0].content == "one"
        assert document_store.write_documents([first, again], policy=DuplicatePolicy.OVERWRITE) == 1
        assert document_store.filter_documents()[0].content == "two"

    @pytest.mark.parametrize(
        "retriever, query, best",
        [
            (SemsearchDenseRetriever, "a glass of merlot", "w1"),
            (SemsearchLexicalRetriever, "barbecue salmon", "w2"),
            (SemsearchHybridRetriever, "hydrated water", "w3"),
        ],
    )
    def test_retrievers_in_each_mode(self, document_store, retriever, query, best):
        document_store.write_documents(CORPUS)
        found = retriever(document_store, top_k=2).run(query=query)["documents"]
        assert found[0].id == best and found[0].score is not None and len(found) <= 2
        expected = document_store.client.search(
            query, collection=document_store.collection, top_k=2, mode=retriever.mode
        )
        assert [(d.id, d.score) for d in found] == [(h.id, h.score) for h in expected]
        drinks = retriever(document_store, filters={"field": "meta.kind", "operator": "==", "value": "drink"})
        assert {d.id for d in drinks.run(query=query)["documents"]} <= {"w1", "w3"}

    @pytest.mark.asyncio
    async def test_retriever_async_and_in_a_pipeline(self, document_store):
        await document_store.write_documents_async(CORPUS)
        retriever = SemsearchHybridRetriever(document_store, top_k=1)
        assert (await retriever.run_async(query="red wine"))["documents"][0].id == "w1"
        pipeline = Pipeline()
        pipeline.add_component("retriever", retriever)
        assert pipeline.run({"retriever": {"query": "grilled fish"}})["retriever"]["documents"][0].id == "w2"

    def test_to_dict_from_dict(self, document_store):
        data = SemsearchLexicalRetriever(document_store, top_k=3).to_dict()
        restored = SemsearchLexicalRetriever.from_dict(data)
        assert restored.top_k == 3 and restored.document_store.collection == document_store.collection
        assert restored.document_store.address == document_store.address
        assert data["init_parameters"]["document_store"]["init_parameters"]["api_key"]["type"] == "env_var"
