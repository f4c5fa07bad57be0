"""The service end to end: real model, real FAISS, real gRPC channel."""

from __future__ import annotations

import time

import numpy as np
import pytest
from semsearch import (
    AlreadyExistsError,
    Document,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

# Behaviour: every test that uses the server runs on the local and on the Milvus store.
pytestmark = pytest.mark.both_stores(file=True)

DRINKS = {"c3", "c4", "c5"}
EATS = {"c1", "c2"}


def test_seed_demo_ranks_drinks_above_eats(client):
    hits = client.search("I drink water with wine", collection="demo", top_k=5)
    assert [h.id for h in hits][:3] and {h.id for h in hits[:3]} == DRINKS
    assert {h.id for h in hits[3:]} == EATS
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_food_finds_the_eat_contexts(client):
    hits = client.search("food", collection="demo", top_k=2)
    assert {h.id for h in hits} == EATS


def test_scores_are_cosines_of_the_embeddings(client, embedder):
    hits = client.search("I drink water with wine", collection="demo", top_k=5)
    query = embedder.encode(["I drink water with wine"])[0]
    docs = embedder.encode([h.text for h in hits])
    np.testing.assert_allclose([h.score for h in hits], docs @ query, atol=1e-5)


def test_top_k_zero_means_ten(client, collection):
    client.upsert([Document(f"d{i}", f"sentence number {i} about cats") for i in range(15)], collection=collection)
    assert len(client.search("cats", collection=collection, top_k=0)) == 10


def test_filter_keeps_exact_metadata_matches_on_every_key(client, collection):
    client.upsert(
        [
            Document("a", "red wine from France", {"color": "red", "country": "fr"}),
            Document("b", "red wine from Spain", {"color": "red", "country": "es"}),
            Document("c", "white wine from France", {"color": "white", "country": "fr"}),
        ],
        collection=collection,
    )
    assert {h.id for h in client.search("wine", collection=collection, filter={"color": "red"})} == {"a", "b"}
    assert [h.id for h in client.search("wine", collection=collection, filter={"color": "red", "country": "fr"})] == [
        "a"
    ]
    assert client.search("wine", collection=collection, filter={"color": "rose"}) == []
    assert client.search("wine", collection=collection, filter={"color": "Red"}) == []


def test_min_score_drops_weaker_hits(client):
    hits = client.search("I drink water with wine", collection="demo", top_k=5)
    threshold = (hits[2].score + hits[3].score) / 2
    kept = client.search("I drink water with wine", collection="demo", top_k=5, min_score=threshold)
    assert [h.id for h in kept] == [h.id for h in hits[:3]]


def test_upsert_replaces_text_metadata_and_vector(client, collection):
    client.upsert([Document("x", "I eat steak", {"v": "1"})], collection=collection)
    client.upsert([Document("x", "quantum chromodynamics lecture", {"v": "2"})], collection=collection)
    assert client.get(["x"], collection=collection) == [Document("x", "quantum chromodynamics lecture", {"v": "2"})]
    hits = client.search("physics", collection=collection)
    assert len(hits) == 1 and hits[0].metadata == {"v": "2"}
    info = {c.name: c for c in client.list_collections()}
    assert info[collection].document_count == 1


def test_delete_removes_from_search_and_get(client, collection):
    client.upsert([Document("a", "I drink water"), Document("b", "I eat salmon")], collection=collection)
    assert client.delete(["a", "missing"], collection=collection) == 1
    assert client.get(["a", "b"], collection=collection) == [Document("b", "I eat salmon")]
    assert [h.id for h in client.search("water", collection=collection)] == ["b"]


def test_get_returns_found_documents_in_request_order(client, collection):
    client.upsert([Document(i, f"text {i}") for i in "abc"], collection=collection)
    assert [d.id for d in client.get(["c", "zz", "a"], collection=collection)] == ["c", "a"]


def test_texts_ids_and_metadata_come_back_exactly_as_stored(client, collection):
    # Hits and documents are read back through SQLite's JSON functions: nothing may be re-encoded.
    tricky = [
        Document('quote"and\\backslash', 'He said "hi" \\ then left.\n\tIndented\r\nline', {"k": '"v"'}),
        Document("whitespace-controls", "tabs\tand\nnewlines\r\n", {"ctl": "\t\n\r"}),
        Document("ünïcödé-ключ-键", "Naïve café 😀 — 東京 مرحبا \u2028 sep", {"ключ": "значение", "emoji": "🎉"}),
        Document("numbers-look-alike", "123", {"n": "007", "b": "true", "z": "null"}),
    ]
    client.upsert(tricky, collection=collection)
    assert client.get([d.id for d in tricky], collection=collection) == tricky
    hits = client.search("café", collection=collection, top_k=4)
    assert {(h.id, h.text, tuple(sorted(h.metadata.items()))) for h in hits} == {
        (d.id, d.text, tuple(sorted(d.metadata.items()))) for d in tricky
    }


# Any valid UTF-8 text is accepted and comes back byte for byte; only the model's view is normalised.
# The STS Benchmark train sentence below carries U+0012 where an apostrophe was mangled at the source.
STS_U0012 = (
    "Treasury\x12s long-range plan is to provide retail buyers of all Treasury securities the ability to manage "
    "their holdings online in a single account."
)
REAL_TEXTS = {
    "every-c0": "c0 " + "".join(chr(c) for c in range(0x20)) + " del \x7f end",
    "nul": "before\x00after",
    "only-nul-and-word": "\x00word\x00",
    "lone-combining": "\u0301\u0308 lone combining marks",
    "rtl-marks": "\u202bمرحبا\u202c \u200fhello\u200e \u2066isolate\u2069",
    "emoji-zwj": "family \U0001f468\u200d\U0001f469\u200d\U0001f467 and flag \U0001f3f3\ufe0f\u200d\U0001f308",
    "four-byte": "\U00010348 \U0001d11e \U00020000 gothic music cjk-ext",
    "long-20k": ("word\x01 " * 2500)[:20000],
    "sts-u0012": STS_U0012,
}


def test_any_valid_utf8_text_round_trips_byte_for_byte(client, collection):
    docs = [Document(k, v, {"value": v[:100]}) for k, v in REAL_TEXTS.items()]
    client.upsert(docs, collection=collection)
    assert client.get(list(REAL_TEXTS), collection=collection) == docs
    hits = client.search("long-range plan", collection=collection, top_k=len(docs), min_score=-1.0)
    assert {h.id: h.text for h in hits} == REAL_TEXTS
    assert {h.id: h.metadata for h in hits} == {d.id: d.metadata for d in docs}


def test_the_sts_sentence_with_u0012_is_indexed_and_found(client, collection):
    client.upsert([Document("sts", STS_U0012), Document("other", "A man is playing a guitar.")], collection=collection)
    hits = client.search("Treasury lets retail buyers manage their securities online", collection=collection, top_k=2)
    assert hits[0].id == "sts"
    assert hits[0].text == STS_U0012


def test_embed_and_search_accept_control_characters(client, collection):
    vectors = client.embed(["fine", "bad\x1b[31m", "\x00nul"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    client.upsert([Document("n", "nul\x00 inside")], collection=collection)
    assert client.search("\x00nul\x07", collection=collection)[0].id == "n"


def test_batch_search_matches_single_searches(client):
    queries = ["I drink water with wine", "food", "fish"]
    batch = client.batch_search(queries, collection="demo", top_k=3)
    assert len(batch) == 3
    for query, hits in zip(queries, batch, strict=True):
        single = client.search(query, collection="demo", top_k=3)
        assert [h.id for h in hits] == [h.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-5)


def test_embed_returns_normalised_vectors_equal_to_the_model(client, embedder):
    vectors = client.embed(["I drink water", "I eat steak"])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, embedder.encode(["I drink water", "I eat steak"]), atol=1e-5)


def test_empty_collection_name_means_default(client):
    client.upsert([Document("default-doc", "a document in the default collection")])
    try:
        assert client.get(["default-doc"], collection="default")[0].id == "default-doc"
    finally:
        client.delete(["default-doc"])


def test_collections_create_list_delete(client):
    client.create_collection("lifecycle", index="hnsw")
    with pytest.raises(AlreadyExistsError):
        client.create_collection("lifecycle")
    names = {c.name: c for c in client.list_collections()}
    assert "lifecycle" in names and "default" in names and names["lifecycle"].index.kind == 2
    client.delete_collection("lifecycle")
    with pytest.raises(NotFoundError):
        client.search("x", collection="lifecycle")
    with pytest.raises(NotFoundError):
        client.delete_collection("lifecycle")
    with pytest.raises(FailedPreconditionError):
        client.delete_collection("default")


def test_unknown_collection_is_not_found(client):
    with pytest.raises(NotFoundError, match="nope"):
        client.search("x", collection="nope")


def test_info_reports_model_dimension_and_counts(client):
    info = client.info()
    assert info.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert info.dimension == 384 and info.pooling == "mean" and info.max_seq_length == 256
    counts = {c.name: c.document_count for c in info.collections}
    assert counts["demo"] == 5
    assert info.limits.max_top_k > 0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_flat_on_a_small_collection(client, kind):
    docs = [
        Document(f"d{i}", f"sentence {i}: " + t)
        for i, t in enumerate(
            [
                "cats purr",
                "dogs bark",
                "wine is red",
                "water is wet",
                "steak is meat",
                "salmon swims",
                "the sea is blue",
            ]
            * 4
        )
    ]
    client.create_collection(f"flat-{kind}")
    client.create_collection(f"approx-{kind}", index=kind)
    try:
        client.upsert(docs, collection=f"flat-{kind}")
        client.upsert(docs, collection=f"approx-{kind}")
        for query in ["animals", "drinks", "food"]:
            exact = client.search(query, collection=f"flat-{kind}", top_k=5)
            approx = client.search(query, collection=f"approx-{kind}", top_k=5)
            assert [h.id for h in approx] == [h.id for h in exact]
        client.delete(["d0"], collection=f"approx-{kind}")
        assert "d0" not in {h.id for h in client.search("cats purr", collection=f"approx-{kind}", top_k=28)}
    finally:
        client.delete_collection(f"flat-{kind}")
        client.delete_collection(f"approx-{kind}")


def test_errors_carry_the_field_name(client):
    with pytest.raises(InvalidArgumentError, match="query"):
        client.search("   ", collection="demo")
    with pytest.raises(InvalidArgumentError, match="top_k"):
        client.search("x", collection="demo", top_k=-1)


def test_a_write_whose_deadline_passes_while_embedding_changes_nothing(client, collection):
    from semsearch import DeadlineExceededError

    docs = [
        Document(f"slow{i}", f"a long enough sentence number {i} to take some embedding time " * 6) for i in range(300)
    ]
    with pytest.raises(DeadlineExceededError):
        client.upsert(docs, collection=collection, timeout=0.3)
    # A second write queues behind the first one's embedding (the test server's single torch engine runs
    # one model call at a time; it has no bulk lane), so once it is acknowledged the abandoned call has
    # passed its deadline check; a moment more covers its commit.
    client.upsert([Document("marker", "after the slow call")], collection=collection)
    time.sleep(1.0)
    assert client.get([d.id for d in docs], collection=collection) == []
    assert [d.id for d in client.get(["marker"], collection=collection)] == ["marker"]


def test_upsert_stream_stores_every_message_before_a_bad_one_and_nothing_after(client, collection):
    good = [[Document(f"m{m}-{i}", f"message {m} sentence {i} about rivers") for i in range(40)] for m in range(15)]
    bad = [Document("bad-0", "fine"), Document("bad-1", "")]
    later = [Document("later", "never stored")]
    message = r"stream message 15 \(after 600 documents were stored\).*documents\[1\]"
    with pytest.raises(InvalidArgumentError, match=message):
        client.upsert_stream([*good, bad, later], collection=collection)
    stored = client.get([d.id for batch in good for d in batch], collection=collection)
    assert len(stored) == 600
    assert client.get(["bad-0", "later"], collection=collection) == []
    assert client.upsert_stream(good[:3], collection=collection) == 120  # replaces, counts again
    hits = client.search("message 7 sentence 3 about rivers", collection=collection, top_k=1)
    assert hits[0].id == "m7-3"


def test_upsert_stream_applies_messages_in_order_across_collections(client, collection, embedder):
    # Consecutive messages for one collection share a transaction; the outcome must be the same as
    # applying each message in turn: the later version of an id wins, text and vector alike.
    from semsearch.v1 import search_service_pb2 as pb

    other = collection + "-b"
    client.create_collection(other)
    try:

        def message(name: str, *docs: tuple[str, str]) -> pb.UpsertRequest:
            return pb.UpsertRequest(collection=name, documents=[pb.Document(id=i, text=t) for i, t in docs])

        stream = [
            message(collection, ("x1", "a red bicycle"), ("x2", "a cup of tea")),
            message(collection, ("x1", "stock markets fell sharply")),
            message(other, ("y1", "a cup of tea")),
            message(collection, ("x2", "snow on the mountains"), ("x3", "a red bicycle")),
        ]
        assert client.stub.UpsertStream(iter(stream), timeout=60).upserted_count == 6
        assert client.get(["x1", "x2", "x3"], collection=collection) == [
            Document("x1", "stock markets fell sharply"),
            Document("x2", "snow on the mountains"),
            Document("x3", "a red bicycle"),
        ]
        assert client.get(["y1"], collection=other) == [Document("y1", "a cup of tea")]
        assert {c.name: c.document_count for c in client.list_collections()}[collection] == 3
        # Each stored vector is the latest text's: searching with that text finds it at cosine 1.
        for doc_id, text in [("x1", "stock markets fell sharply"), ("x2", "snow on the mountains")]:
            hits = client.search(text, collection=collection, top_k=5, min_score=-1.0)
            assert hits[0].id == doc_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert sorted(h.id for h in hits) == ["x1", "x2", "x3"]  # no stale copy of a replaced one
    finally:
        client.delete_collection(other)


def test_ivf_trains_once_enough_documents_are_written(client, collection, store_kind):
    # nlist 2 needs 2 * 39 = 78 vectors: exact search before that, IVF after, same answers with
    # nprobe covering every list; deletes and replacements keep the trained index in step.
    # On Milvus, training is Milvus's (per sealed segment; growing segments are searched exhaustively), so
    # index_trained is always true there; the answers must agree all the same.
    local = store_kind == "local"
    name = collection + "-ivf"
    client.create_collection(name, index="ivf", ivf_nlist=2, ivf_nprobe=2)
    try:
        docs = [Document(f"d{i}", f"sentence {i} about {topic}") for i, topic in enumerate(["rivers", "wine"] * 50)]

        def trained() -> bool:
            return {c.name: c for c in client.list_collections()}[name].index_trained

        client.upsert(docs[:70], collection=name)
        client.upsert(docs[:70], collection=collection)
        assert trained() is not local
        client.upsert(docs[70:], collection=name)
        client.upsert(docs[70:], collection=collection)
        assert trained()
        for query in ["a river", "red wine", "sentence 42"]:
            exact = client.search(query, collection=collection, top_k=10, min_score=-1.0)
            approx = client.search(query, collection=name, top_k=10, min_score=-1.0)
            assert [h.id for h in approx] == [h.id for h in exact]
        client.delete(["d1", "d3"], collection=name)
        client.upsert([Document("d5", "a completely different text about chess")], collection=name)
        hits = client.search("chess", collection=name, top_k=100, min_score=-1.0)
        assert hits[0].id == "d5" and len(hits) == 98
        assert not {"d1", "d3"} & {h.id for h in hits}
    finally:
        client.delete_collection(name)
