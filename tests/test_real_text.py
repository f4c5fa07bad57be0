"""Any real text is accepted and comes back byte for byte: controls, NUL, marks, emoji, long texts."""

from __future__ import annotations

import pytest
from semsearch import Document

# From the STS Benchmark's train split (MSRpar, 2012): a mangled apostrophe left U+0012 in the text.
STS_TREASURY = (
    "Treasury\x12s long-range plan is to provide retail buyers of all Treasury securities the ability to "
    "manage their holdings online in a single account."
)
C0 = "".join(chr(c) for c in range(0x20)) + "\x7f"
TEXTS = {
    "every-c0": f"controls {C0} between words",
    "nul": "before\x00after the NUL",
    "form-feed": "page one ends here\x0cpage two starts here",
    "combining": "\u0301\u0308 lone combining marks, then cafe\u0301 and nai\u0308ve",
    "rtl": "\u200fשלום\u200e mixed \u202bRTL embedding\u202c and \u061c arabic mark",
    "zwj-emoji": "a family 👨\u200d👩\u200d👧\u200d👦 and a flag 🏳️\u200d🌈 in a sentence",
    "four-byte": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters, 𠜎 CJK extension B, 🎉 party",
    "only-controls-and-a-word": "\x01\x02word\x03",
    "sts-treasury": STS_TREASURY,
}


@pytest.fixture
def stored(client, collection):
    docs = [Document(k, v, {"meta": v[:40]}) for k, v in TEXTS.items()]
    docs.append(Document("long", ("twenty thousand characters of text " * 600)[:20_000]))
    assert client.upsert(docs, collection=collection) == len(docs)
    return collection, {d.id: d for d in docs}


def test_every_class_of_character_round_trips_byte_for_byte(client, stored):
    collection, docs = stored
    got = {d.id: d for d in client.get(list(docs), collection=collection)}
    assert set(got) == set(docs)
    for doc_id, doc in docs.items():
        assert got[doc_id].text.encode("utf-8") == doc.text.encode("utf-8"), doc_id
        assert dict(got[doc_id].metadata) == dict(doc.metadata), doc_id


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_search_hits_carry_the_text_as_sent(client, stored, mode):
    collection, docs = stored
    for doc_id in ("nul", "form-feed", "every-c0", "zwj-emoji"):
        text = docs[doc_id].text
        hits = client.search(text, collection=collection, top_k=3, mode=mode)
        assert hits[0].id == doc_id, (mode, doc_id, [h.id for h in hits])
        assert hits[0].text == text
        assert text[hits[0].passage.start : hits[0].passage.end] == hits[0].passage_text


def test_the_sts_sentence_with_u0012_is_indexed_and_found(client, stored):
    collection, _ = stored
    for mode in ("dense", "lexical", "hybrid"):
        hits = client.search(
            "Treasury plan for retail buyers to manage holdings online", collection=collection, mode=mode
        )
        assert hits[0].id == "sts-treasury" and hits[0].text == STS_TREASURY, mode


def test_explain_offsets_slice_the_original_text_exactly(client, stored):
    collection, docs = stored
    for doc_id in ("every-c0", "nul", "combining", "rtl", "zwj-emoji", "four-byte", "sts-treasury"):
        text = docs[doc_id].text
        result = client.explain("words and marks", doc_id=doc_id, collection=collection)
        segments = [s for s in result.doc_segments if not s.special]
        assert segments, doc_id
        for s in segments:
            assert text[s.start : s.end] == s.text, (doc_id, s)
        assert abs(sum(s.contribution for s in result.doc_segments) - result.score) < 1e-4


def test_queries_and_embed_take_control_characters_too(client, stored):
    collection, _ = stored
    assert client.search("page one\x0c page two", collection=collection, top_k=1)[0].id == "form-feed"
    vectors = client.embed(["bell\x07", "nul\x00", "\x1b[31mred\x1b[0m"])
    assert vectors.shape[0] == 3
