"""The LlamaIndex adapter against a real server. LlamaIndex ships no store suite: every FilterOperator and
condition is checked against LlamaIndex's own plain-Python filter evaluation, then ingestion and queries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

pytest.importorskip("llama_index.core", reason="the LlamaIndex adapter needs the `llama-index` extra")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.ingestion import IngestionPipeline  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn  # noqa: E402
from semsearch import field  # noqa: E402
from semsearch.integrations.llama_index import (  # noqa: E402
    SemsearchEmbedding,
    SemsearchVectorStore,
    ServerEmbedded,
    UnsupportedFilterError,
)

# Keys of one kind each (LlamaIndex's evaluation raises on mixed kinds); some documents lack some keys.
CORPUS = {
    "n1": ("wine from the red grapes of Bordeaux", {"year": 2019, "score": 0.9, "lang": "en", "tags": ["wine", "red"]}),
    "n2": ("a crisp white wine for the summer", {"year": 2021, "score": 0.4, "lang": "fr", "tags": ["wine"]}),
    "n3": ("grilled salmon with lemon", {"year": 2023, "lang": "en", "tags": ["fish"], "note": ""}),
    "n4": ("fresh water from the mountains", {"score": 0.1, "lang": "de", "tags": []}),
    "n5": ("a steak cooked rare", {"year": 2021, "score": 0.7, "note": "Chef's choice"}),
}
CASES = [
    (FilterOperator.EQ, "lang", "en"),
    (FilterOperator.EQ, "year", 2021),
    (FilterOperator.NE, "lang", "en"),
    (FilterOperator.NE, "year", 2021),
    (FilterOperator.GT, "year", 2019),
    (FilterOperator.GTE, "score", 0.4),
    (FilterOperator.LT, "score", 0.7),
    (FilterOperator.LTE, "year", 2021),
    (FilterOperator.GT, "lang", "de"),
    (FilterOperator.IN, "lang", ["en", "de"]),
    (FilterOperator.IN, "year", [2019, 2023]),
    (FilterOperator.NIN, "lang", ["en"]),
    (FilterOperator.NIN, "year", [2021]),
    (FilterOperator.ANY, "tags", ["red", "fish"]),
    (FilterOperator.ALL, "tags", ["wine", "red"]),
    (FilterOperator.CONTAINS, "tags", "wine"),
    (FilterOperator.TEXT_MATCH, "note", "Chef"),
    (FilterOperator.IS_EMPTY, "note", None),
    (FilterOperator.IS_EMPTY, "tags", None),
    (FilterOperator.IS_EMPTY, "year", None),
]


def reference(filters: MetadataFilters) -> set[str]:
    """LlamaIndex's own evaluation (that of its SimpleVectorStore), in plain Python."""
    keep = build_metadata_filter_fn(lambda node_id: CORPUS[node_id][1], filters)
    return {node_id for node_id in CORPUS if keep(node_id)}


@pytest.fixture(scope="module")
def seeded(server):
    name = "li-" + uuid.uuid4().hex[:10]
    store = SemsearchVectorStore(client=server.client, collection=name)
    store.add([TextNode(id_=i, text=text, metadata=meta) for i, (text, meta) in CORPUS.items()])
    yield store
    server.client.delete_collection(name)


def found(store: SemsearchVectorStore, filters: MetadataFilters) -> set[str]:
    by_query = store.query(VectorStoreQuery(query_str="food and drink", similarity_top_k=10, filters=filters)).ids
    by_listing = {n.node_id for n in store.get_nodes(filters=filters)}
    assert set(by_query) == by_listing
    return by_listing


@pytest.mark.parametrize("operator, key, value", CASES, ids=[f"{o.name}-{k}" for o, k, _ in CASES])
def test_every_operator_agrees_with_llama_index(seeded, operator, key, value):
    filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=operator)])
    expected = reference(filters)
    assert found(seeded, filters) == expected


@pytest.mark.parametrize("condition", list(FilterCondition))
def test_every_condition_agrees_with_llama_index(seeded, condition):
    parts = [
        MetadataFilter(key="lang", value="en"),
        MetadataFilter(key="year", value=2020, operator=FilterOperator.GT),
    ]
    filters = MetadataFilters(filters=parts, condition=condition)
    assert found(seeded, filters) == reference(filters)


def test_nested_filters(seeded):
    inner = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="fr"), MetadataFilter(key="score", value=0.5, operator=">")],
        condition=FilterCondition.OR,
    )
    outer = MetadataFilters(filters=[inner, MetadataFilter(key="year", value=2021)])
    assert found(seeded, outer) == {"n2", "n5"}


def test_what_the_service_cannot_do_is_refused(seeded):
    insensitive = MetadataFilter(key="note", value="chef", operator=FilterOperator.TEXT_MATCH_INSENSITIVE)
    with pytest.raises(UnsupportedFilterError, match="case-sensitively"):
        seeded.get_nodes(filters=MetadataFilters(filters=[insensitive]))
    with pytest.raises(UnsupportedFilterError, match="svm"):
        seeded.query(VectorStoreQuery(query_str="x", mode=VectorStoreQueryMode.SVM))
    with pytest.raises(ValueError, match="query_str"):
        seeded.query(VectorStoreQuery(query_embedding=[0.0] * 384))


def test_bool_and_datetime_through_where(server, collection):
    store = SemsearchVectorStore(client=server.client, collection=collection)
    at = datetime(2024, 5, 1, tzinfo=UTC)
    store.add([TextNode(id_="a", text="draft", metadata={"draft": True, "at": at}), TextNode(id_="b", text="final")])
    with pytest.raises(ValueError):  # LlamaIndex's own filter type refuses a bool
        MetadataFilter(key="draft", value=True)
    index = VectorStoreIndex.from_vector_store(store, embed_model=SemsearchEmbedding(client=server.client))
    retriever = index.as_retriever(similarity_top_k=5, vector_store_kwargs={"where": field("draft") == True})  # noqa: E712
    assert [n.node.node_id for n in retriever.retrieve("anything")] == ["a"]
    later = index.as_retriever(vector_store_kwargs={"where": field("at") > datetime(2024, 1, 1, tzinfo=UTC)})
    (hit,) = later.retrieve("anything")
    assert hit.node.metadata == {"draft": True, "at": at}


# -- ingestion and queries ---------------------------------------------------------------------------------------
class NoClientEmbedding(SemsearchEmbedding):
    """Fails the test if LlamaIndex embeds anything on the client."""

    def _get_text_embeddings(self, texts):
        raise AssertionError(f"embedded {len(texts)} texts on the client")

    def _get_query_embedding(self, query):
        raise AssertionError("embedded the query on the client")


TEXTS = [f"Sentence number {i} is about {topic}." for i, topic in enumerate(["wine", "salmon", "water", "steak"])]


def test_pipeline_without_an_embedding_step_drops_every_node(server, collection):
    """LlamaIndex's IngestionPipeline hands a vector store only embedded nodes: why ServerEmbedded exists."""
    store = SemsearchVectorStore(client=server.client, collection=collection)
    IngestionPipeline(transformations=[SentenceSplitter()], vector_store=store).run(documents=[Document(text=TEXTS[0])])
    assert server.client.count(collection=collection) == 0


def test_pipeline_ingests_n_nodes_as_n_documents_embedded_once_on_the_server(server, collection, caplog):
    store = SemsearchVectorStore(client=server.client, collection=collection)
    documents = [Document(text=t, doc_id=f"doc{i}", metadata={"i": i}) for i, t in enumerate(TEXTS)]
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(), ServerEmbedded()], vector_store=store)
    nodes = pipeline.run(documents=documents)
    assert len(nodes) == len(TEXTS) == server.client.count(collection=collection)
    stored = store.get_nodes(node_ids=[n.node_id for n in nodes])
    assert [(n.node_id, n.text, n.metadata, n.ref_doc_id) for n in stored] == [
        (n.node_id, n.text, n.metadata, n.ref_doc_id) for n in nodes
    ]
    store.delete("doc1")  # by source document
    assert server.client.count(collection=collection) == len(TEXTS) - 1


def test_index_insert_and_query_engine_never_embed_on_the_client(server, collection):
    from llama_index.core.llms import MockLLM

    store = SemsearchVectorStore(client=server.client, collection=collection)
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in TEXTS],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=NoClientEmbedding(client=server.client),
        transformations=[SentenceSplitter(), ServerEmbedded()],
    )
    index.insert(Document(text="A fifth sentence about bread."))
    assert server.client.count(collection=collection) == len(TEXTS) + 1
    for mode, query in [("default", "red wine"), ("hybrid", "salmon"), ("text_search", "water"), ("mmr", "steak")]:
        retriever = index.as_retriever(similarity_top_k=2, vector_store_query_mode=mode)
        best = retriever.retrieve(query)[0]
        assert query.split()[-1] in best.node.text and best.score is not None
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=1)
    response = engine.query("which sentence is about bread?")
    assert "bread" in response.source_nodes[0].node.text


@pytest.mark.parametrize("mode, server_mode", [("default", "dense"), ("sparse", "lexical"), ("hybrid", "hybrid")])
def test_query_modes_return_the_servers_ranking(server, seeded, mode, server_mode):
    result = seeded.query(VectorStoreQuery(query_str="red wine", similarity_top_k=3, mode=mode))
    expected = server.client.search("red wine", collection=seeded.collection, top_k=3, mode=server_mode)
    assert list(zip(result.ids, result.similarities, strict=True)) == [(h.id, h.score) for h in expected]
    assert [n.text for n in result.nodes] == [h.text for h in expected]


@pytest.mark.asyncio
async def test_async_paths(server, collection):
    store = SemsearchVectorStore(client=server.client, collection=collection)
    await store.async_add([TextNode(id_="x", text="an asynchronous glass of wine", embedding=[0.1] * 384)])
    result = await store.aquery(VectorStoreQuery(query_str="wine", similarity_top_k=1, mode="hybrid"))
    assert result.ids == ["x"]
    assert [n.node_id for n in await store.aget_nodes(node_ids=["x"])] == ["x"]
    embedding = SemsearchEmbedding(client=server.client)
    assert len(await embedding.aget_query_embedding("wine")) == len(embedding.get_query_embedding("wine"))
    await store.adelete_nodes(node_ids=["x"])
    assert await store.aget_nodes(node_ids=["x"]) == []


def test_get_and_delete_nodes_by_ids_and_filters(server, collection):
    store = SemsearchVectorStore(client=server.client, collection=collection)
    store.add([TextNode(id_=i, text=text, metadata=meta) for i, (text, meta) in CORPUS.items()])
    english = MetadataFilters(filters=[MetadataFilter(key="lang", value="en")])
    assert [n.node_id for n in store.get_nodes(node_ids=["n3", "n2", "n1"], filters=english)] == ["n3", "n1"]
    store.delete_nodes(node_ids=["n1", "n2"], filters=english)  # only the listed ones the filters match
    assert sorted(n.node_id for n in store.get_nodes()) == ["n2", "n3", "n4", "n5"]
    store.delete_nodes(filters=english)
    assert sorted(n.node_id for n in store.get_nodes()) == ["n2", "n4", "n5"]
    with pytest.raises(ValueError, match="clear"):
        store.delete_nodes()
    store.clear()
    assert store.get_nodes() == []
