"""Passage splitting: windows of the model's own tokens, with offsets into the original text."""

from __future__ import annotations

import pytest
from semsearch_server.domain import Passage, PassageConfig
from semsearch_server.embedding.passages import PassageSplitter, ResolvedPassages, split_offsets
from semsearch_server.embedding.sentence_transformer import default_model_path
from semsearch_server.errors import InvalidArgument


@pytest.fixture(scope="module")
def splitter() -> PassageSplitter:
    return PassageSplitter.for_model(default_model_path(), 256)


def words(n: int) -> str:
    return " ".join(f"word{i % 50}" for i in range(n))


def test_a_short_text_is_one_passage_covering_it(splitter):
    text = "I drink water with wine"
    assert splitter.split([text], ResolvedPassages(True, 128, 32)) == [(Passage(0, 0, len(text)),)]


def test_passages_off_is_one_passage_whatever_the_length(splitter):
    text = words(2000)
    assert splitter.split([text], ResolvedPassages(False, 128, 32)) == [(Passage(0, 0, len(text)),)]


@pytest.mark.parametrize(("window", "overlap"), [(128, 32), (254, 63), (16, 0), (10, 9)])
def test_windows_cover_the_text_overlap_and_fit_the_window(splitter, window, overlap):
    text = "Pneumonoultramicroscopic findings: " + words(700) + " — naïve café, 東京, emoji 🎉 end."
    (passages,) = splitter.split([text], ResolvedPassages(True, window, overlap))
    assert len(passages) > 1
    assert passages[0].start == 0 and passages[-1].end == len(text)
    assert [p.index for p in passages] == list(range(len(passages)))
    for before, after in zip(passages, passages[1:], strict=False):
        assert before.start < after.start
        # Consecutive windows overlap, or (overlap 0) meet with nothing but spaces between them.
        assert after.start < before.end or not text[before.end : after.start].strip()
    tokenizer = splitter._tokenizer
    for p in passages:
        piece = text[p.start : p.end]
        assert piece.strip(), "no empty passage"
        # The passage re-tokenises to (about) the window: never more than the model's window.
        assert len(tokenizer.encode(piece, add_special_tokens=False).ids) <= min(window + 2, 254)


def test_a_window_never_starts_inside_a_word():
    # Offsets of "unbelievable" as three pieces, then single-piece words.
    text = "unbelievable cats run fast today"
    offsets = [(0, 2), (2, 7), (7, 12), (13, 17), (18, 21), (22, 26), (27, 32)]
    passages = split_offsets(text, offsets, window=3, overlap=2)
    starts = {p.start for p in passages}
    assert not starts & {2, 7}, passages
    assert passages[0] == Passage(0, 0, 12) and passages[-1].end == len(text)


def test_resolve_fills_defaults_and_refuses_what_the_model_cannot_take(splitter):
    resolved = splitter.resolve(PassageConfig())
    assert (resolved.window_tokens, resolved.overlap_tokens) == (128, 32)
    assert splitter.resolve(PassageConfig(window_tokens=200)).overlap_tokens == 50
    with pytest.raises(InvalidArgument, match="passages.window_tokens: 300 is outside 8..254"):
        splitter.resolve(PassageConfig(window_tokens=300))
    with pytest.raises(InvalidArgument, match="passages.overlap_tokens"):
        splitter.resolve(PassageConfig(window_tokens=64, overlap_tokens=64))
