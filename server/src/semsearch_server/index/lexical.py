"""BM25 over a collection's texts: an in-memory inverted index with numpy postings and one-file snapshots.

The store owns one :class:`LexicalIndex` per collection, keyed by the documents' SQLite row ids ("labels"),
changes it under its write lock in step with the vector index, and snapshots it at the same sequence number.
The index therefore has no log of its own: after a crash it is its last snapshot plus the writes the store
replays, or, if the snapshot is damaged, a rebuild from the stored texts.

Scoring is Lucene's BM25 (what Elasticsearch, OpenSearch and bm25s compute by default)::

    score(q, d) = sum over query terms t of  idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))

with N the live documents, df the live documents containing t, tf the occurrences of t in d, dl the number of
terms of d after analysis and avgdl their mean over live documents. A term repeated in the query counts once
per occurrence ("cell cell" weighs "cell" twice), as in Lucene's BooleanQuery and bm25s's ``get_scores``;
the Explain shows it as one entry whose contribution is the sum.

Layout (no Python object per posting):

- a forward index: for each document slot, its distinct term ids and their frequencies, appended to two
  growable int32 buffers (start and length per slot). It gives a removed document's terms without a scan;
- postings: per term, a growable (n, 2) int32 array of (slot, tf), append-only and in slot order;
- a replaced or removed document's slot is marked dead; its postings stay until a compaction (when dead
  postings outnumber live ones) rewrites both structures from the live slots. Document frequencies and
  lengths are kept exact at every step, so scores never depend on when compaction ran.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex
import Stemmer

# Lucene's (and Elasticsearch's ``_english_``) stopword list: the words whose absence a user of those engines
# expects. bm25s's default English list is the same 33 words.
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)

# A word: a letter or digit, then letters, digits and combining marks (so "é" written as e + U+0301 and
# Devanagari vowel signs stay inside their word). Everything else (punctuation, spaces, NUL and other control
# characters, emoji) separates words.
_WORD = regex.compile(r"[\p{L}\p{N}][\p{L}\p{N}\p{M}]*")
# The same words in lower-cased ASCII text (stdlib re is faster than regex there).
_ASCII_WORD = re.compile(r"[a-z0-9]+")

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4

_FORMAT = "semsearch-lexical-1"


@dataclass(frozen=True)
class Token:
    term: str  # as indexed: lower-cased, NFC, stemmed
    start: int  # character offsets of the word in the original text
    end: int


@dataclass(frozen=True)
class TermContribution:
    term: str  # as the index sees it
    query_text: str  # the query words that produced it, as written, joined by " "
    contribution: float  # its share of the document's BM25 (all occurrences in the query)
    term_frequency: int  # occurrences in the document
    document_frequency: int  # live documents that contain it


def _normalise(words: list[str]) -> list[str]:
    """Lower-cases and NFC-normalises words in one pass (identical to doing it word by word: words hold no
    spaces, a space stops both lower-casing's final-sigma context and canonical composition)."""
    if not words:
        return []
    joined = " ".join(words).lower()
    if not joined.isascii():
        joined = unicodedata.normalize("NFC", joined)
    return joined.split(" ")


class Analyzer:
    """Lower-cases, splits into words (Unicode-aware), drops English stopwords, stems (Snowball English).

    Args:
        stemming: apply the Snowball English stemmer (PyStemmer), so "cells" and "cell" match.
        stopwords: drop :data:`ENGLISH_STOPWORDS` (checked before stemming).
    """

    cache_size = 500_000  # words whose terms are remembered (a word's term never changes)

    def __init__(self, stemming: bool = True, stopwords: bool = True) -> None:
        self.stemming = stemming
        self.stopwords = stopwords
        self._stemmer = Stemmer.Stemmer("english") if stemming else None
        self._stop = ENGLISH_STOPWORDS if stopwords else frozenset()
        self._terms_of: dict[str, str] = {}  # lower-cased word -> term, "" for a stopword
        self._stem_lock = threading.Lock()

    @property
    def signature(self) -> str:
        """What decides the terms: a snapshot written under another analyzer is not reused."""
        stem = "snowball-english" if self.stemming else "none"
        stop = "lucene-english" if self.stopwords else "none"
        return f"words=L/N+M;lower;nfc;stop={stop};stem={stem}"

    def _lookup(self, words: list[str]) -> dict[str, str]:
        """A word -> term ("" for a stopword) mapping that holds every one of words.

        Safe for concurrent readers: the cache only grows, and is replaced (never cleared) when full, so a
        mapping handed out stays complete; the stemmer, which is not thread-safe, runs under a lock.
        """
        cache = self._terms_of
        missing = set(words).difference(cache)
        if missing:
            if len(cache) + len(missing) > self.cache_size:
                cache, missing = {}, set(words)
            fresh = [w for w in missing if w not in self._stop]
            if self._stemmer is not None:
                with self._stem_lock:
                    stems = self._stemmer.stemWords(fresh)
            else:
                stems = fresh
            cache.update(dict.fromkeys(missing, ""))
            cache.update(zip(fresh, stems, strict=True))
            self._terms_of = cache
        return cache

    def _finish(self, words: list[str]) -> list[str]:
        """Terms of lower-cased words, stopwords dropped, in order: one dict look-up per word (C loops)."""
        return list(filter(None, map(self._lookup(words).__getitem__, words)))

    def tokens(self, text: str) -> list[Token]:
        """The indexed terms with the offsets of the words they came from (``text[start:end]``)."""
        matches = list(_WORD.finditer(text))
        words = _normalise([m.group() for m in matches])
        lookup = self._lookup(words)
        return [Token(lookup[w], m.start(), m.end()) for w, m in zip(words, matches, strict=True) if lookup[w]]

    def terms(self, text: str) -> list[str]:
        """The indexed terms of text, in order (the terms of :meth:`tokens`, faster)."""
        if text.isascii():
            words = _ASCII_WORD.findall(text.lower())
        else:
            words = _normalise(_WORD.findall(text))
        return self._finish(words)

    def query_terms(self, text: str) -> list[tuple[str, str]]:
        """(term, word as written) per query word that yields a term."""
        return [(t.term, text[t.start : t.end]) for t in self.tokens(text)]


class _Growable:
    """An append-only numpy buffer that doubles its capacity."""

    __slots__ = ("data", "size")

    def __init__(self, dtype, width: int | None = None, capacity: int = 16) -> None:
        shape = (capacity,) if width is None else (capacity, width)
        self.data = np.zeros(shape, dtype=dtype)
        self.size = 0

    @classmethod
    def wrap(cls, array: np.ndarray) -> _Growable:
        g = cls.__new__(cls)
        g.data = array
        g.size = len(array)
        return g

    def reserve(self, extra: int) -> None:
        need = self.size + extra
        if need > len(self.data):
            capacity = max(need, 2 * len(self.data), 16)
            grown = np.zeros((capacity, *self.data.shape[1:]), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def extend(self, values: np.ndarray) -> None:
        self.reserve(len(values))
        self.data[self.size : self.size + len(values)] = values
        self.size += len(values)

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class LexicalIndex:
    """BM25 over documents keyed by int64 labels; see the module docstring for the scoring and the layout.

    Not thread-safe: the owner serialises writes against reads (the store's read-write lock).
    Compaction runs inside a write once dead postings outnumber live ones and ``compact_min_dead``.

    Args:
        analyzer: how texts and queries become terms (default: stopwords + Snowball English stemming).
        k1: term-frequency saturation. b: document-length normalisation. The defaults (0.9, 0.4) are
            Anserini's, the configuration of the bm25s reference (Lucene's are 1.2, 0.75, equal on
            scifact-train within 0.001 nDCG@10: see benchmarks/RESULTS.md).
    """

    compact_min_dead = 50_000

    def __init__(self, analyzer: Analyzer | None = None, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        if not (k1 >= 0 and math.isfinite(k1)):
            raise ValueError(f"k1 must be a finite number >= 0, got {k1}")
        if not (0 <= b <= 1):
            raise ValueError(f"b must be between 0 and 1, got {b}")
        self.analyzer = analyzer if analyzer is not None else Analyzer()
        self.k1 = float(k1)
        self.b = float(b)
        self._reset()

    def _reset(self) -> None:
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        self._df = _Growable(np.int64)
        self._postings: list[_Growable | None] = []  # None: a term not yet in any document
        self._slot_of: dict[int, int] = {}
        self._slot_label = _Growable(np.int64)
        self._slot_alive = _Growable(np.bool_)
        self._slot_start = _Growable(np.int64)
        self._slot_count = _Growable(np.int32)  # distinct terms
        self._slot_length = _Growable(np.int64)  # dl: terms after analysis
        self._fwd_term = _Growable(np.int32)
        self._fwd_tf = _Growable(np.int32)
        self._live_terms = 0  # sum of dl over live documents
        self._dead_postings = 0

    # -- writes ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, labels: Sequence[int], texts: Sequence[str]) -> None:
        """Indexes texts under labels; a label already present is replaced (the last one wins in a batch)."""
        labels = [int(x) for x in labels]
        if len(labels) != len(texts):
            raise ValueError(f"{len(labels)} labels but {len(texts)} texts")
        if not labels:
            return
        last = {label: i for i, label in enumerate(labels)}
        if len(last) != len(labels):
            order = sorted(last.values())
            labels, texts = [labels[i] for i in order], [texts[i] for i in order]
        self._remove_slots([self._slot_of.pop(x) for x in labels if x in self._slot_of])
        self._append(np.asarray(labels, dtype=np.int64), [self.analyzer.terms(t) for t in texts])
        self._maybe_compact()

    def _term_ids(self, docs_terms: list[list[str]]) -> np.ndarray:
        vocab = self._vocab
        flat = [t for terms in docs_terms for t in terms]
        new = set(flat).difference(vocab)
        if new:
            for term in sorted(new):
                vocab[term] = len(self._terms)
                self._terms.append(term)
            self._df.extend(np.zeros(len(new), dtype=np.int64))
            self._postings.extend([None] * len(new))
        return np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))

    def _append(self, labels: np.ndarray, docs_terms: list[list[str]]) -> None:
        n = len(labels)
        lengths = np.fromiter((len(t) for t in docs_terms), dtype=np.int64, count=n)
        ids = self._term_ids(docs_terms)
        first = self._slot_label.size
        doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
        # (document, term) pairs with their counts, sorted by document then term.
        pairs, tf = np.unique(doc * len(self._terms) + ids, return_counts=True)
        pair_doc, pair_term = np.divmod(pairs, len(self._terms))
        per_doc = np.bincount(pair_doc, minlength=n)
        starts = self._fwd_term.size + np.cumsum(per_doc) - per_doc
        self._fwd_term.extend(pair_term.astype(np.int32))
        self._fwd_tf.extend(tf.astype(np.int32))
        self._slot_label.extend(labels)
        self._slot_alive.extend(np.ones(n, dtype=np.bool_))
        self._slot_start.extend(starts)
        self._slot_count.extend(per_doc.astype(np.int32))
        self._slot_length.extend(lengths)
        for i, label in enumerate(labels.tolist()):
            self._slot_of[label] = first + i
        self._live_terms += int(lengths.sum())
        self._change_df(pair_term, +1)
        self._add_postings(pair_term, pair_doc + first, tf)

    def _add_postings(self, terms: np.ndarray, slots: np.ndarray, tf: np.ndarray) -> None:
        """Appends (slot, tf) to each term's postings; slots ascend within a term (the order is stable)."""
        if len(terms) == 0:
            return
        order = np.argsort(terms, kind="stable")
        terms, rows = terms[order], np.stack([slots[order], tf[order]], axis=1).astype(np.int32)
        bounds = np.flatnonzero(np.diff(terms)) + 1
        starts = np.concatenate(([0], bounds)).tolist()
        ends = np.concatenate((bounds, [len(terms)])).tolist()
        postings = self._postings
        for term, s, e in zip(terms[starts].tolist(), starts, ends, strict=True):
            plist = postings[term]
            if plist is None:
                postings[term] = _Growable.wrap(rows[s:e].copy())
                continue
            size = plist.size + e - s
            if size > len(plist.data):
                plist.reserve(e - s)
            plist.data[plist.size : size] = rows[s:e]  # inlined extend(): this loop runs once per distinct term
            plist.size = size

    def remove(self, labels: Sequence[int]) -> None:
        """Removes documents; labels not present are ignored."""
        slots = [self._slot_of.pop(int(x)) for x in labels if int(x) in self._slot_of]
        self._remove_slots(slots)
        self._maybe_compact()

    def _remove_slots(self, slots: list[int]) -> None:
        if not slots:
            return
        slots_a = np.asarray(slots, dtype=np.int64)
        self._slot_alive.data[slots_a] = False
        self._live_terms -= int(self._slot_length.data[slots_a].sum())
        entries = self._entries(slots_a)
        self._change_df(self._fwd_term.data[entries], -1)
        self._dead_postings += len(entries)

    def _change_df(self, terms: np.ndarray, sign: int) -> None:
        """Adds sign x (occurrences of each term id in terms) to the document frequencies: O(len(terms)),
        where a bincount over the vocabulary was a pass over every term ever seen on every write (8,000
        entries into 1M terms: 0.012 ms against 0.36 ms and an 8 MB temporary)."""
        np.add.at(self._df.data, terms, sign)

    def _entries(self, slots: np.ndarray) -> np.ndarray:
        """Positions in the forward buffers of these slots' (term, tf) entries, slot by slot."""
        counts = self._slot_count.data[slots].astype(np.int64)
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        offsets = np.repeat(self._slot_start.data[slots] - (np.cumsum(counts) - counts), counts)
        return offsets + np.arange(total, dtype=np.int64)

    def _maybe_compact(self) -> None:
        if self._dead_postings > max(self._fwd_term.size - self._dead_postings, self.compact_min_dead):
            self._compact()

    def _compact(self) -> None:
        """Rewrites the index from its live documents (drops dead slots, their postings and unused terms)."""
        labels, terms, counts, tf, lengths = self._live_arrays()
        self._rebuild(labels, terms, counts, tf, lengths)

    def _live_arrays(self) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
        """The live documents in slot order: labels, vocabulary, distinct-term counts, (term id, tf) entries
        with term ids into that vocabulary, and lengths."""
        slots = np.flatnonzero(self._slot_alive.view())
        entries = self._entries(slots)
        old_terms = self._fwd_term.data[entries]
        used = np.flatnonzero(self._df.view() > 0)
        remap = np.full(self._df.size, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        fwd = np.stack([remap[old_terms], self._fwd_tf.data[entries]], axis=1).astype(np.int32)
        vocabulary = [self._terms[i] for i in used.tolist()]
        return (
            self._slot_label.data[slots].copy(),
            vocabulary,
            self._slot_count.data[slots].copy(),
            fwd,
            self._slot_length.data[slots].copy(),
        )

    def _rebuild(
        self, labels: np.ndarray, vocabulary: list[str], counts: np.ndarray, fwd: np.ndarray, lengths: np.ndarray
    ) -> None:
        self._reset()
        n = len(labels)
        self._vocab = {t: i for i, t in enumerate(vocabulary)}
        self._terms = list(vocabulary)
        self._slot_label = _Growable.wrap(labels.astype(np.int64))
        self._slot_alive = _Growable.wrap(np.ones(n, dtype=np.bool_))
        counts = counts.astype(np.int32)
        self._slot_count = _Growable.wrap(counts)
        self._slot_start = _Growable.wrap(np.cumsum(counts, dtype=np.int64) - counts)
        self._slot_length = _Growable.wrap(lengths.astype(np.int64))
        self._fwd_term = _Growable.wrap(fwd[:, 0].copy())
        self._fwd_tf = _Growable.wrap(fwd[:, 1].copy())
        self._slot_of = dict(zip(labels.tolist(), range(n), strict=True))
        self._live_terms = int(lengths.sum())
        terms = fwd[:, 0].astype(np.int64)
        self._df = _Growable.wrap(np.bincount(terms, minlength=len(vocabulary)).astype(np.int64))
        slots = np.repeat(np.arange(n, dtype=np.int32), counts)
        order = np.argsort(terms, kind="stable")
        rows = np.stack([slots[order], fwd[order, 1]], axis=1)
        ends = np.cumsum(self._df.data)
        self._postings = [
            _Growable.wrap(rows[s:e]) for s, e in zip((ends - self._df.data).tolist(), ends.tolist(), strict=True)
        ]

    # -- scoring ---------------------------------------------------------------------------------------
    def _query(self, query: str) -> list[tuple[str, int | None, int, str]]:
        """Distinct query terms in query order: (term, its id if some live document has it, occurrences in the
        query, the words that produced it as written)."""
        seen: dict[str, list[str]] = {}
        for term, word in self.analyzer.query_terms(query):
            seen.setdefault(term, []).append(word)
        out = []
        for term, words in seen.items():
            tid = self._vocab.get(term)
            if tid is not None and self._df.data[tid] == 0:
                tid = None
            out.append((term, tid, len(words), " ".join(words)))
        return out

    def _idf(self, df: int) -> float:
        n = len(self._slot_of)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def _accumulate(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Slots with a query term (ascending) and their BM25 in float64."""
        terms = [(tid, occurrences) for _, tid, occurrences, _ in self._query(query) if tid is not None]
        if not terms:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        avgdl = self._live_terms / len(self._slot_of)
        alive, length = self._slot_alive.data, self._slot_length.data
        k1, b = self.k1, self.b
        all_slots, all_weights = [], []
        for tid, occurrences in terms:
            rows = self._postings[tid].view()
            slots = rows[:, 0]
            live = alive[slots]
            if not live.all():
                rows = rows[live]
                slots = rows[:, 0]
            tf = rows[:, 1].astype(np.float64)
            norm = k1 * (1.0 - b + b * length[slots] / avgdl)
            all_slots.append(slots)
            all_weights.append((occurrences * self._idf(int(self._df.data[tid]))) * tf * (k1 + 1.0) / (tf + norm))
        if len(all_slots) == 1:
            return all_slots[0].astype(np.int64), all_weights[0]
        slots, weights = np.concatenate(all_slots), np.concatenate(all_weights)
        total = self._slot_label.size
        if len(slots) * 8 > total:
            summed = np.bincount(slots, weights, minlength=total)
            hit = np.zeros(total, dtype=np.bool_)
            hit[slots] = True
            found = np.flatnonzero(hit)
            return found, summed[found]
        found, inverse = np.unique(slots, return_inverse=True)
        return found.astype(np.int64), np.bincount(inverse, weights, minlength=len(found))

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best documents for query: (labels int64, scores float32), best first, only scores > 0,
        ties broken by label ascending; ``allowed`` (labels) restricts the candidates (a metadata filter)."""
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        slots, scores64 = self._accumulate(query)
        labels = self._slot_label.data[slots]
        scores = scores64.astype(np.float32)
        keep = scores > 0
        if allowed is not None:
            keep &= np.isin(labels, np.asarray(allowed, dtype=np.int64))
        if not keep.all():
            labels, scores = labels[keep], scores[keep]
        if len(scores) > k:
            # Every document tied with the k-th score stays a candidate, so ties resolve by label.
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            near = scores >= kth
            labels, scores = labels[near], scores[near]
        order = np.lexsort((labels, -scores))[:k]
        return labels[order], scores[order]

    def scores(self, query: str, labels: Sequence[int]) -> np.ndarray:
        """BM25 of query for each label, float32 (0.0 for an absent label or a document without a query term)."""
        slots, scores64 = self._accumulate(query)  # slots ascending
        want = np.fromiter((self._slot_of.get(int(x), -1) for x in labels), dtype=np.int64, count=len(labels))
        out = np.zeros(len(labels), dtype=np.float32)
        if len(slots):
            at = np.minimum(np.searchsorted(slots, want), len(slots) - 1)
            hit = slots[at] == want  # an absent label (-1) never equals a slot
            out[hit] = scores64[at[hit]]
        return out

    def all_scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, float32 scores) of every live document, zeros included, in no particular order."""
        live = np.flatnonzero(self._slot_alive.view())
        dense = np.zeros(self._slot_label.size, dtype=np.float32)
        slots, scores64 = self._accumulate(query)
        dense[slots] = scores64
        return self._slot_label.data[live].copy(), dense[live]

    def explain(self, query: str, label: int) -> list[TermContribution]:
        """The document's BM25 term by term, one entry per distinct query term in query order; the
        contributions (float64) sum to ``scores(query, [label])[0]``. A query term no live document contains
        is listed with zeros (so "no query term matched" can be shown). Empty for an absent label."""
        slot = self._slot_of.get(int(label))
        if slot is None:
            return []
        start, count = int(self._slot_start.data[slot]), int(self._slot_count.data[slot])
        doc_terms = self._fwd_term.data[start : start + count]  # ascending term ids
        doc_tf = self._fwd_tf.data[start : start + count]
        avgdl = self._live_terms / len(self._slot_of) or 1.0  # 0 only if no document has a term
        norm = self.k1 * (1.0 - self.b + self.b * float(self._slot_length.data[slot]) / avgdl)
        out = []
        for term, tid, occurrences, words in self._query(query):
            if tid is None:
                out.append(TermContribution(term, words, 0.0, 0, 0))
                continue
            at = int(np.searchsorted(doc_terms, tid))
            tf = int(doc_tf[at]) if at < count and doc_terms[at] == tid else 0
            df = int(self._df.data[tid])
            contribution = occurrences * self._idf(df) * tf * (self.k1 + 1.0) / (tf + norm) if tf else 0.0
            out.append(TermContribution(term, words, contribution, tf, df))
        return out

    # -- snapshots -------------------------------------------------------------------------------------
    def write(self, path: Path) -> None:
        """Writes the live documents to one file (numpy .npz, no pickles). The caller renames it into place
        and records its checksum."""
        self.snapshot_writer()(path)

    def snapshot_writer(self) -> Callable[[Path], None]:
        """Copies the live documents now; the returned function writes them as :meth:`write` does, touching
        this index no more (the owner writes the file outside its lock while writes go on)."""
        labels, vocabulary, counts, fwd, lengths = self._live_arrays()  # copies
        signature = self.analyzer.signature

        def write(path: Path) -> None:
            encoded = [t.encode("utf-8") for t in vocabulary]
            ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
            with open(path, "wb") as f:
                np.savez(
                    f,
                    format=np.array(_FORMAT),
                    analyzer=np.array(signature),
                    labels=labels,
                    counts=counts.astype(np.int32),
                    lengths=lengths.astype(np.int64),
                    fwd=fwd.astype(np.int32),
                    vocab=np.frombuffer(b"".join(encoded), dtype=np.uint8),
                    vocab_ends=ends,
                )

        return write

    @classmethod
    def read(
        cls, path: Path, analyzer: Analyzer | None = None, k1: float = DEFAULT_K1, b: float = DEFAULT_B
    ) -> LexicalIndex:
        """Loads a snapshot written by :meth:`write`.

        Raises:
            OSError: the file cannot be read.
            ValueError: it is damaged, or was written by another analyzer (rebuild from the texts).
        """
        index = cls(analyzer, k1, b)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except OSError:
            raise
        except Exception as exc:  # zipfile.BadZipFile, EOFError, KeyError...: all mean a damaged file
            raise ValueError(f"{path}: unreadable lexical snapshot ({type(exc).__name__}: {exc})") from None
        try:
            _check_snapshot(arrays, index.analyzer.signature)
            blob = arrays["vocab"].tobytes()
            ends = arrays["vocab_ends"].tolist()
            vocabulary = [blob[s:e].decode("utf-8") for s, e in zip([0, *ends], ends, strict=False)]
            if len(set(vocabulary)) != len(vocabulary):
                raise ValueError("repeated terms")
        except (KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: damaged lexical snapshot ({exc})") from None
        index._rebuild(arrays["labels"], vocabulary, arrays["counts"], arrays["fwd"], arrays["lengths"])
        return index


def _check_snapshot(arrays: dict[str, np.ndarray], signature: str) -> None:
    """Structural checks: a snapshot that passes them rebuilds into a consistent index."""
    if str(arrays["format"]) != _FORMAT:
        raise ValueError(f"format {arrays['format']!s}, expected {_FORMAT}")
    if str(arrays["analyzer"]) != signature:
        raise ValueError(f"written with analyzer {arrays['analyzer']!s}, this index uses {signature}")
    labels, counts, lengths, fwd = arrays["labels"], arrays["counts"], arrays["lengths"], arrays["fwd"]
    vocab, ends = arrays["vocab"], arrays["vocab_ends"]
    expected = {"labels": np.int64, "counts": np.int32, "lengths": np.int64, "fwd": np.int32}
    for name, dtype in {**expected, "vocab": np.uint8, "vocab_ends": np.int64}.items():
        if arrays[name].dtype != dtype:
            raise ValueError(f"{name} has dtype {arrays[name].dtype}")
    n = len(labels)
    if labels.ndim != 1 or counts.shape != (n,) or lengths.shape != (n,):
        raise ValueError("per-document arrays disagree in length")
    if fwd.ndim != 2 or fwd.shape[1] != 2 or len(fwd) != int(counts.astype(np.int64).sum()):
        raise ValueError("term entries do not match the per-document counts")
    ordered = np.sort(labels)
    if (counts < 0).any() or (ordered[1:] == ordered[:-1]).any():
        raise ValueError("negative counts or repeated labels")
    if ends.ndim != 1 or (len(ends) and (ends[-1] != len(vocab) or (np.diff(ends) <= 0).any() or ends[0] <= 0)):
        raise ValueError("vocabulary offsets out of range")
    if len(fwd) and (fwd[:, 0].min() < 0 or fwd[:, 0].max() >= len(ends) or fwd[:, 1].min() < 1):
        raise ValueError("term ids or frequencies out of range")
    doc = np.repeat(np.arange(n, dtype=np.int64), counts)
    if len(fwd) and (np.diff(doc * len(ends) + fwd[:, 0]) <= 0).any():
        raise ValueError("a document's terms are not distinct and ascending")
    if not np.array_equal(np.bincount(doc, weights=fwd[:, 1], minlength=n).astype(np.int64), lengths):
        raise ValueError("document lengths do not match their term frequencies")
