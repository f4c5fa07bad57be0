"""Search modes, passages and the ranking Explain, through a real server and channel."""

from __future__ import annotations

import uuid

import pytest
from conftest import InProcessServer
from semsearch import Document
from semsearch.v1 import search_service_pb2 as pb

# Behaviour: every test that uses the server runs on the local and on the Milvus store.
pytestmark = pytest.mark.both_stores

DRINKS = {"c3", "c4", "c5"}
MODES = [("dense", None), ("lexical", None), ("hybrid", "weighted"), ("hybrid", "rrf")]

# Sentences of a long document; the last one is the needle, beyond the model's 256-token window.
FILLER = [
    "The committee reviewed the quarterly budget and approved the new spending plan for the library.",
    "Several members asked for more detail about maintenance costs of the old municipal buildings.",
    "A long discussion followed about parking fees, bus routes and the timing of the summer festival.",
    "The treasurer presented figures on energy use in schools, which had risen over three winters.",
    "Residents spoke about noise from the construction site near the river and asked for quieter hours.",
]
NEEDLE = "Finally, the mayor announced that the lighthouse keeper had adopted a one-eyed orange cat."


def long_document() -> str:
    return " ".join(FILLER * 4 + [NEEDLE])


@pytest.fixture
def fresh(client):
    """Creates collections with options; deletes them afterwards."""
    made = []

    def make(**options) -> str:
        name = "r-" + uuid.uuid4().hex[:10]
        client.create_collection(name, **options)
        made.append(name)
        return name

    yield make
    for name in made:
        client.delete_collection(name)


@pytest.mark.parametrize(("mode", "fusion"), MODES)
def test_the_demo_query_ranks_the_three_drinks_first_in_every_mode(client, mode, fusion):
    hits = client.search("I drink water with wine", collection="demo", top_k=5, mode=mode, fusion=fusion)
    assert {h.id for h in hits[:3]} == DRINKS, [(h.id, h.score) for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_scores_carry_both_signals_where_the_mode_computes_them(client):
    dense = client.search("I drink water with wine", collection="demo", top_k=5, mode="dense")
    lexical = client.search("I drink water with wine", collection="demo", top_k=5, mode="lexical")
    hybrid = client.search("I drink water with wine", collection="demo", top_k=5, mode="hybrid")
    assert all(h.score == h.dense_score and h.lexical_score == 0 for h in dense)
    assert all(h.score == h.lexical_score > 0 and h.dense_score == 0 for h in lexical)
    # BM25 needs a query term: "I eat salmon" shares only "I" (not a stopword, as in Lucene's list).
    drinks = [h.score for h in lexical if h.id in DRINKS]
    assert len(drinks) == 3 and all(h.score < min(drinks) for h in lexical if h.id not in DRINKS)
    by_id = {h.id: h for h in dense}
    for h in hybrid:
        assert h.dense_score == pytest.approx(by_id[h.id].dense_score, abs=1e-6)
    # The default mode of a collection created without one is DENSE: today's clients keep their cosines.
    default = client.search("I drink water with wine", collection="demo", top_k=5)
    assert [(h.id, h.score) for h in default] == [(h.id, h.score) for h in dense]


@pytest.mark.parametrize(("mode", "fusion"), MODES)
def test_filter_top_k_and_min_score_work_in_every_mode(client, fresh, mode, fusion):
    name = fresh()
    docs = [
        Document(f"w{i}", f"red wine number {i} from the valley", {"colour": "red" if i % 2 else "white"})
        for i in range(8)
    ]
    client.upsert(docs, collection=name)
    hits = client.search(
        "red wine valley", collection=name, top_k=3, filter={"colour": "red"}, mode=mode, fusion=fusion
    )
    assert len(hits) == 3 and all(h.metadata["colour"] == "red" for h in hits)
    everything = client.search("red wine valley", collection=name, top_k=8, mode=mode, fusion=fusion)
    bar = everything[3].score
    above = client.search("red wine valley", collection=name, top_k=8, min_score=bar, mode=mode, fusion=fusion)
    assert [h.id for h in above] == [h.id for h in everything if h.score >= bar]
    batch = client.batch_search(["red wine valley", "white wine"], collection=name, top_k=2, mode=mode, fusion=fusion)
    assert [h.id for h in batch[0]] == [h.id for h in everything[:2]]
    assert len(batch[1]) == 2


def _wine_cellar(client, fresh) -> str:
    """Documents of two colours whose BM25 statistics differ between the colours (so a filter that
    changed the statistics would change the scores)."""
    name = fresh()
    docs = [Document(f"r{i}", f"red wine number {i} from the valley", {"colour": "red"}) for i in range(4)]
    docs += [Document(f"w{i}", f"white wine {i}, " + "crisp " * i + "and dry", {"colour": "white"}) for i in range(6)]
    docs += [Document("tea", "a cup of green tea by the river", {"colour": "green"})]
    client.upsert(docs, collection=name)
    return name


@pytest.mark.parametrize(("mode", "fusion"), MODES)
def test_a_filter_restricts_which_documents_match_never_their_scores(client, fresh, mode, fusion):
    """A filter keeps documents out; a kept document's dense and BM25 scores are its scores in the whole
    collection (BM25 statistics are the collection's, not the filtered subset's)."""
    name = _wine_cellar(client, fresh)
    query = "crisp white wine from the valley"
    everything = client.search(query, collection=name, top_k=11, mode=mode, fusion=fusion, min_score=-1)
    whole = {h.id: h for h in everything}
    for colour in ("red", "white"):
        hits = client.search(
            query, collection=name, top_k=3, mode=mode, fusion=fusion, filter={"colour": colour}, min_score=-1
        )
        assert hits and all(h.metadata["colour"] == colour for h in hits)
        for h in hits:
            assert h.dense_score == pytest.approx(whole[h.id].dense_score, abs=1e-5), (colour, h.id)
            assert h.lexical_score == pytest.approx(whole[h.id].lexical_score, abs=1e-5), (colour, h.id)
        if mode != "hybrid":  # fusion normalises over the candidates, which the filter narrows
            kept = [h.id for h in everything if h.metadata["colour"] == colour]
            assert [h.id for h in hits] == kept[:3], (colour, [(h.id, h.score) for h in everything])


@pytest.mark.parametrize(("mode", "fusion"), MODES)
def test_explain_with_a_filter_agrees_with_the_filtered_search(client, fresh, mode, fusion):
    name = _wine_cellar(client, fresh)
    query = "crisp white wine from the valley"
    hits = client.search(query, collection=name, top_k=4, mode=mode, fusion=fusion, filter={"colour": "white"})
    assert len(hits) == 4
    for position, hit in enumerate(hits, start=1):
        result = client.explain(
            query, doc_id=hit.id, collection=name, mode=mode, fusion=fusion, top_k=2, filter={"colour": "white"}
        )
        r = result.ranking
        assert result.score == pytest.approx(hit.score, abs=1e-5), hit.id
        assert r.lexical_score == pytest.approx(hit.lexical_score, abs=1e-5), hit.id
        assert r.rank == position, (hit.id, r.rank, position)
        assert r.kth_score == pytest.approx(hits[1].score, abs=1e-5)


def test_a_lexical_hit_names_the_passage_with_the_query_terms(client, fresh):
    name = fresh()
    text = long_document()
    client.upsert([Document("long", text), Document("short", "an orange cat")], collection=name)
    hits = client.search("lighthouse keeper orange cat", collection=name, top_k=2, mode="lexical")
    # (which ranks first depends on the store's BM25 length normalisation: see the README's Milvus section)
    by_id = {h.id: h for h in hits}
    assert set(by_id) == {"long", "short"}
    long_hit, short_hit = by_id["long"], by_id["short"]
    assert long_hit.passage.index > 0 and NEEDLE in text[long_hit.passage.start : long_hit.passage.end]
    assert long_hit.passage_text == text[long_hit.passage.start : long_hit.passage.end]
    assert (short_hit.passage.index, short_hit.passage.start, short_hit.passage.end) == (0, 0, len("an orange cat"))


def test_a_collections_default_mode_applies_when_a_search_names_none(client, fresh):
    name = fresh(default_mode="lexical")
    client.upsert([Document("a", "the night train to Vienna"), Document("b", "a ferry to Helsinki")], collection=name)
    hits = client.search("train", collection=name)
    assert [h.id for h in hits] == ["a"] and hits[0].score == hits[0].lexical_score > 0
    info = {c.name: c for c in client.list_collections()}[name]
    assert info.default_mode == pb.SEARCH_MODE_LEXICAL


def test_a_long_document_is_found_by_a_sentence_past_the_models_window(client, fresh):
    text = long_document()
    with_passages, truncated = fresh(), fresh(passages=False)
    others = [Document(f"o{i}", sentence) for i, sentence in enumerate(FILLER)]
    for name in (with_passages, truncated):
        client.upsert([Document("long", text), *others], collection=name)
    query = "a one-eyed orange cat adopted by the lighthouse keeper"
    hit = client.search(query, collection=with_passages, top_k=1, mode="dense")[0]
    assert hit.id == "long" and hit.dense_score > 0.5
    assert hit.passage.index > 0 and NEEDLE in text[hit.passage.start : hit.passage.end]
    assert hit.passage_text == text[hit.passage.start : hit.passage.end]
    cut = {h.id: h for h in client.search(query, collection=truncated, top_k=6, mode="dense")}
    assert cut["long"].dense_score < hit.dense_score - 0.2, "without passages the needle is cut off"
    assert cut["long"].passage.index == 0 and (cut["long"].passage.start, cut["long"].passage.end) == (0, len(text))
    # Get returns the whole document as stored, whatever the passages.
    assert client.get(["long"], collection=with_passages)[0].text == text
    info = {c.name: c for c in client.list_collections()}
    assert info[with_passages].passages.mode == pb.PASSAGE_MODE_ON and info[with_passages].passages.window_tokens > 0
    assert info[truncated].passages.mode == pb.PASSAGE_MODE_OFF


def test_a_document_that_gets_shorter_keeps_no_stale_passages(client, fresh):
    name = fresh()
    client.upsert([Document("d", long_document())], collection=name)
    client.upsert([Document("d", "a short note about tea")], collection=name)
    hit = client.search("a one-eyed orange cat adopted by the lighthouse keeper", collection=name, top_k=5)[0]
    assert hit.id == "d" and (hit.passage.index, hit.passage.start, hit.passage.end) == (
        0,
        0,
        len("a short note about tea"),
    )


def test_explain_lexical_terms_add_up_to_the_lexical_score(client):
    r = client.explain("I drink water with wine", doc_id="c3", collection="demo", mode="lexical").ranking
    assert r.mode == "lexical"
    assert sum(t.contribution for t in r.lexical_terms) == pytest.approx(r.lexical_score, abs=1e-5)
    assert {t.term for t in r.lexical_terms if t.contribution > 0} >= {"drink", "wine"}
    hits = client.search("I drink water with wine", collection="demo", top_k=5, mode="lexical")
    assert r.lexical_score == pytest.approx({h.id: h.score for h in hits}["c3"], abs=1e-5)


@pytest.mark.parametrize(("mode", "fusion"), MODES)
def test_explain_score_equals_search_score_and_rank_equals_position(client, mode, fusion):
    hits = client.search(
        "I drink water with wine",
        collection="demo",
        top_k=5,
        mode=mode,
        fusion=fusion,
        min_score=-1 if mode == "dense" else 0,
    )
    for position, hit in enumerate(hits, start=1):
        result = client.explain(
            "I drink water with wine", doc_id=hit.id, collection="demo", mode=mode, fusion=fusion, top_k=2
        )
        r = result.ranking
        assert result.score == pytest.approx(hit.score, abs=1e-5), hit.id
        assert r.rank == position, (hit.id, r.rank, position)
        assert r.kth_score == pytest.approx(hits[1].score, abs=1e-5)


def test_a_hybrid_score_adds_up_from_the_explained_fusion_inputs(client):
    for doc_id in ("c3", "c1"):
        r = client.explain(
            "I drink water with wine", doc_id=doc_id, collection="demo", mode="hybrid", fusion="weighted"
        )
        k = r.ranking
        recomputed = (
            k.dense_weight * (k.dense_score - k.dense_min) / (k.dense_max - k.dense_min)
            + (1 - k.dense_weight) * k.lexical_score / k.lexical_max
        )
        assert r.score == pytest.approx(recomputed, abs=1e-5)
        assert sum(t.contribution for t in k.lexical_terms) == pytest.approx(k.lexical_score, abs=1e-5)
    rrf = client.explain("I drink water with wine", doc_id="c3", collection="demo", mode="hybrid", fusion="rrf").ranking
    expected = 1 / (rrf.rrf_k + rrf.dense_rank) + 1 / (rrf.rrf_k + rrf.lexical_rank)
    assert rrf.dense_rank >= 1 and rrf.lexical_rank >= 1
    assert client.explain(
        "I drink water with wine", doc_id="c3", collection="demo", mode="hybrid", fusion="rrf"
    ).score == pytest.approx(expected, abs=1e-6)


def test_why_not_a_document_outside_the_top_k(client, fresh):
    name = fresh()
    docs = [Document(f"w{i}", f"a glass of red wine number {i}") for i in range(6)] + [
        Document("tea", "a cup of green tea")
    ]
    client.upsert(docs, collection=name)
    result = client.explain("red wine", doc_id="tea", collection=name, mode="lexical", top_k=3)
    r = result.ranking
    assert r.rank == 7 and r.lexical_score == 0 and r.kth_score > 0
    assert all(t.contribution == 0 for t in r.lexical_terms)
    from semsearch.explain_view import render_ranking

    text = render_ranking(result)
    assert "Ranked 7th" in text and "needed" in text and "no query term matched" in text
    dense = client.explain("red wine", doc_id="tea", collection=name, mode="dense", top_k=3).ranking
    assert dense.rank == 7 and dense.kth_score > dense.dense_score
    # Filtered out: not among the documents the filter keeps.
    filtered = client.explain("red wine", doc_id="tea", collection=name, top_k=3, filter={"k": "v"}).ranking
    assert filtered.rank == 0


def test_the_dense_breakdown_explains_the_best_passage_with_offsets_into_the_whole_text(client, fresh):
    name = fresh()
    text = long_document()
    client.upsert([Document("long", text)], collection=name)
    result = client.explain("a one-eyed orange cat adopted by the lighthouse keeper", doc_id="long", collection=name)
    p = result.ranking.passage
    assert p.index > 0 and NEEDLE in text[p.start : p.end]
    for segment in result.doc_segments:
        if not segment.special:
            assert text[segment.start : segment.end] == segment.text
            assert p.start <= segment.start and segment.end <= p.end
    assert result.score == pytest.approx(result.ranking.dense_score, abs=1e-4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, n: c.stub.Search(pb.SearchRequest(collection=n, query="x", mode=7)), "mode: unknown value 7"),
        (
            lambda c, n: c.stub.Search(
                pb.SearchRequest(collection=n, query="x", mode=3, hybrid=pb.HybridParams(dense_weight=1.5))
            ),
            "hybrid.dense_weight",
        ),
        (
            lambda c, n: c.stub.Search(
                pb.SearchRequest(collection=n, query="x", mode=3, hybrid=pb.HybridParams(fusion=9))
            ),
            "hybrid.fusion: unknown value 9",
        ),
        (
            lambda c, n: c.stub.CreateCollection(
                pb.CreateCollectionRequest(name=n + "x", passages=pb.PassageConfig(window_tokens=5000))
            ),
            "passages.window_tokens",
        ),
        (
            lambda c, n: c.stub.CreateCollection(
                pb.CreateCollectionRequest(name=n + "y", passages=pb.PassageConfig(window_tokens=64, overlap_tokens=64))
            ),
            "passages.overlap_tokens",
        ),
        (lambda c, n: c.stub.Search(pb.SearchRequest(collection=n, query="x", mode=1, min_score=1.5)), "min_score"),
        (
            lambda c, n: c.stub.Explain(pb.ExplainRequest(collection=n, query="x", doc_text="y", mode=2)),
            "mode: LEXICAL and HYBRID explain a stored document",
        ),
    ],
)
def test_bad_ranking_options_are_refused_with_the_field_named(client, fresh, call, message):
    import grpc

    name = fresh()
    with pytest.raises(grpc.RpcError) as info:
        call(client, name)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert name + "x" not in {c.name for c in client.list_collections()}


def test_lexical_min_score_above_one_is_a_bm25_bar_not_an_error(client):
    hits = client.search("I drink water with wine", collection="demo", mode="lexical", min_score=1.5)
    assert all(h.score >= 1.5 for h in hits)


def test_both_indexes_survive_a_restart_and_a_damaged_lexical_snapshot(tmp_path, embedder, explainer):
    data = tmp_path / "data"
    srv = InProcessServer(data, embedder, explainer)
    srv.client.upsert([Document("a", "the night train to Vienna"), Document("b", "a ferry to Helsinki")])
    srv.client.delete(["b"])
    srv.client.upsert([Document("c", "a tram through Vienna at night")])
    srv.stop()
    lexical = data / "collections" / "default" / "lexical.bin"
    lexical.write_bytes(lexical.read_bytes()[:10])  # damaged: rebuilt from the stored texts
    srv = InProcessServer(data, embedder, explainer)
    try:
        assert {h.id for h in srv.client.search("Vienna", mode="lexical")} == {"a", "c"}
        assert srv.client.search("Helsinki", mode="lexical") == []
        assert srv.client.search("train to Vienna", mode="dense", top_k=1)[0].id == "a"
    finally:
        srv.stop()
