"""Splitting long texts into overlapping token windows ("passages") with character offsets.

A model sees at most its window (256 tokens for all-MiniLM-L6-v2); everything after that is cut off
silently when a text is embedded whole. Split into windows of the model's own tokens, each window is
embedded on its own and a document scores as its best passage. The splitter uses the model's fast
tokenizer (tokenizer.json, through the `tokenizers` library) and nothing heavier, so the server, the
batch indexer and the Ray path all split exactly alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from semsearch_server.domain import Passage, PassageConfig
from semsearch_server.errors import InvalidArgument

# The window when a collection does not say (capped at the model's own). Measured on SciFact train
# (all-MiniLM-L6-v2, best passage per document, nDCG@10): one truncated vector 0.659, windows of 254
# tokens 0.679, of 128 tokens 0.691 at the same embedding time (3.7 passages a document instead of 1.9,
# but attention costs grow with the square of the length). See benchmarks/retrieval_quality.py.
DEFAULT_WINDOW_TOKENS = 128
# Tokens shared by consecutive windows when a collection does not say: a sentence cut by one window
# boundary is whole in the next window.
DEFAULT_OVERLAP_FRACTION = 0.25


@dataclass(frozen=True)
class ResolvedPassages:
    """A collection's passage settings with the defaults filled in for the running model."""

    enabled: bool
    window_tokens: int
    overlap_tokens: int

    def as_config(self) -> PassageConfig:
        return PassageConfig(self.enabled, self.window_tokens, self.overlap_tokens)


class PassageSplitter:
    """Splits texts into token windows of the model's tokenizer.

    Args:
        tokenizer: a `tokenizers.Tokenizer` (fast, Rust) of the model.
        max_content_tokens: the model's window less its special tokens ([CLS], [SEP]).
    """

    def __init__(self, tokenizer, max_content_tokens: int) -> None:
        self._tokenizer = tokenizer
        self.max_content_tokens = max_content_tokens

    @classmethod
    def for_model(cls, model_path: str, max_seq_length: int) -> PassageSplitter:
        from tokenizers import Tokenizer

        path = Path(model_path) / "tokenizer.json"
        if path.is_file():
            tokenizer = Tokenizer.from_file(str(path))
        else:  # a model without tokenizer.json: let transformers build the fast tokenizer once
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True, local_files_only=True)._tokenizer
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer, max(1, max_seq_length - 2))

    def resolve(self, config: PassageConfig) -> ResolvedPassages:
        """Fills in the defaults and checks the values against the model's window."""
        default = min(DEFAULT_WINDOW_TOKENS, self.max_content_tokens)
        window = config.window_tokens or default
        if window < 8 or window > self.max_content_tokens:
            raise InvalidArgument(
                f"passages.window_tokens: {config.window_tokens} is outside 8..{self.max_content_tokens} "
                f"(the model's window less its two special tokens); 0 means {default}"
            )
        overlap = config.overlap_tokens or int(window * DEFAULT_OVERLAP_FRACTION)
        if overlap < 0 or overlap >= window:
            raise InvalidArgument(
                f"passages.overlap_tokens: {config.overlap_tokens} must be less than window_tokens ({window}); "
                "0 means a quarter of the window"
            )
        return ResolvedPassages(config.enabled, window, overlap)

    def split(self, texts: Sequence[str], settings: ResolvedPassages) -> list[tuple[Passage, ...]]:
        """Each text's passages, in order; a text within one window (or with passages off) is one passage."""
        if not settings.enabled:
            return [(Passage(0, 0, len(t)),) for t in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [
            split_offsets(text, enc.offsets, settings.window_tokens, settings.overlap_tokens)
            for text, enc in zip(texts, encodings, strict=True)
        ]


def split_offsets(text: str, offsets: Sequence[tuple[int, int]], window: int, overlap: int) -> tuple[Passage, ...]:
    """Passages of `window` tokens overlapping by `overlap`, from the tokens' character offsets.

    The first passage starts at 0 and the last ends at len(text), so the passages cover the whole text;
    a window never starts inside a word (it moves back to the word's first piece).
    """
    n = len(offsets)
    if n <= window:
        return (Passage(0, 0, len(text)),)
    step = window - overlap
    passages: list[Passage] = []
    first = 0
    while True:
        last = min(first + window, n)  # exclusive
        start = 0 if not passages else offsets[first][0]
        end = len(text) if last == n else offsets[last - 1][1]
        passages.append(Passage(len(passages), start, end))
        if last == n:
            break
        first = _word_start(text, offsets, first + step, first + 1, last)
    return tuple(passages)


def _word_start(text: str, offsets: Sequence[tuple[int, int]], at: int, low: int, high: int) -> int:
    """The token index nearest `at` that begins a word: back as far as low, else forward as far as high
    (the end of the window before, so that no token is ever skipped)."""

    def inside_word(i: int) -> bool:  # a piece that touches the piece before it continues that word
        return offsets[i][0] == offsets[i - 1][1] and _joins(text, offsets[i][0])

    back = at
    while back > low and inside_word(back):
        back -= 1
    if not inside_word(back):
        return back
    forward = at
    while forward < min(high, len(offsets) - 1) and inside_word(forward):
        forward += 1
    return forward if not inside_word(forward) else at


def _joins(text: str, at: int) -> bool:
    """True when the characters either side of `at` belong to one word."""
    return 0 < at < len(text) and text[at - 1].isalnum() and text[at].isalnum()
