"""The store interfaces: one collection (IndexStore) and the place collections live (StoreProvider).

The core reaches collections through these methods only, so FAISS + SQLite under a data directory and a
remote engine (Milvus) are interchangeable. Scores are computed by the store, fusion by the core:

- dense: the cosine of a query vector and a document's best passage (inner product of normalised vectors);
- lexical: BM25 of the query text and the document's stored text, as the store tokenises it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from semsearch_server.domain import (
    CollectionSettings,
    CollectionStatus,
    Document,
    ModelFingerprint,
    Passage,
    SnapshotInfo,
)
from semsearch_server.errors import FailedPrecondition, InvalidArgument
from semsearch_server.filtering import Filter
from semsearch_server.index.disk_space import SpaceClaim

# A filter as a store takes it: the tree, or the old string map (every key with exactly this value), or
# None/empty for none. Every store gives it the same meaning (filtering.evaluate is the definition).
StoreFilter = Filter | Mapping[str, str] | None


@dataclass(frozen=True)
class EmbeddedDocument:
    """A document as the store persists it: its passages (at least one) and one vector per passage."""

    document: Document
    passages: tuple[Passage, ...]
    vectors: np.ndarray  # (len(passages), dimension), float32, each row L2-normalised


@dataclass(frozen=True)
class DenseMatch:
    doc_id: str
    score: float  # cosine of the query and the best passage
    passage: Passage
    document: Document | None = None  # when the search was asked for documents


@dataclass(frozen=True)
class LexicalMatch:
    doc_id: str
    score: float  # BM25, > 0: at least one query term occurs in the document
    document: Document | None = None  # when the search was asked for documents
    passage: Passage | None = None  # with the document: its passage with the most query terms


@dataclass(frozen=True)
class LexicalTermScore:
    """One query term's share of a document's BM25 score."""

    term: str  # as the index sees it (normalised, stemmed)
    query_text: str  # the query words that produced it, as written
    contribution: float
    term_frequency: int  # occurrences in the document
    document_frequency: int  # documents of the collection that contain it


@dataclass(frozen=True)
class ScoreTable:
    """Every document's scores for one query (Explain's rank): row i is doc_ids[i]."""

    doc_ids: list[str]
    dense: np.ndarray | None  # float32 per document (best passage), None when not asked for
    lexical: np.ndarray | None


class IndexStore(Protocol):
    """A collection. Every method is thread-safe; a write returns only once it is durable, and is then in
    both the dense and the lexical index, or (after a crash before it returned) in neither."""

    name: str
    settings: CollectionSettings
    fingerprint: ModelFingerprint

    # -- writes ------------------------------------------------------------------------------------
    def claim_space(self, docs: Sequence[Document]) -> SpaceClaim:
        """Room for an upsert of these documents, claimed before they are embedded, so that a full disk is said
        at once (DiskFull); the claim's check() raises if the disk filled since. Release it (a context
        manager) once the write is done. A store whose disk is not the server's claims nothing."""
        ...

    def upsert(self, docs: Sequence[EmbeddedDocument], still_wanted: Callable[[], bool] | None = None) -> int:
        """Inserts or replaces (by id) all of docs, atomically; ids are distinct. Returns len(docs).

        still_wanted is asked right before the write is committed (under the collection's write lock);
        False abandons it with DeadlineExceeded, so a write reported failed never commits later."""
        ...

    def delete(self, ids: Sequence[str], still_wanted: Callable[[], bool] | None = None) -> int:
        """Deletes by id, atomically; returns how many existed."""
        ...

    # -- reads -------------------------------------------------------------------------------------
    def get(self, ids: Sequence[str]) -> list[Document]:
        """Found documents in request order, text byte for byte as stored."""
        ...

    def get_passages(self, ids: Sequence[str]) -> dict[str, tuple[tuple[Passage, ...], np.ndarray]]:
        """Each found document's passages and their stored vectors."""
        ...

    def search_dense(
        self, queries: np.ndarray, top_k: int, filter: StoreFilter, documents: bool = False
    ) -> list[list[DenseMatch]]:
        """Per query vector: the top_k documents by best-passage cosine among those the filter matches, best
        first, distinct ids (with their documents when asked: one read instead of a search and a get).
        Never fewer than min(top_k, matching documents)."""
        ...

    def search_lexical(
        self, queries: Sequence[str], top_k: int, filter: StoreFilter, documents: bool = False
    ) -> list[list[LexicalMatch]]:
        """Per query text: the top_k documents by BM25 (only documents with a query term), best first."""
        ...

    def dense_scores(self, query: np.ndarray, ids: Sequence[str]) -> dict[str, DenseMatch]:
        """Best-passage cosine of one query vector for each of these documents that exists."""
        ...

    def lexical_scores(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        """BM25 of one query for each of these documents that exists (0.0 when no term occurs)."""
        ...

    def explain_lexical(self, query: str, doc_id: str) -> list[LexicalTermScore]:
        """The document's BM25 for the query, term by term (query order); contributions sum to its score."""
        ...

    def score_all(
        self, query: str, vector: np.ndarray | None, filter: StoreFilter, dense: bool, lexical: bool
    ) -> ScoreTable:
        """Every document the filter keeps, with the scores asked for (Explain's exact rank)."""
        ...

    def replace_all_vectors(
        self, fingerprint: ModelFingerprint, embed_documents: Callable[[list[Document]], list[EmbeddedDocument]]
    ) -> int:
        """Re-embeds every stored document (Reindex) and records the new model; returns the count."""
        ...

    # -- data management ---------------------------------------------------------------------------
    def count(self, where: Filter | None = None) -> int:
        """Documents in the collection, or those where matches (exact; no vector is read)."""
        ...

    def scroll(self, where: Filter | None, after: str | None, limit: int) -> list[Document]:
        """Up to limit documents where matches whose ids come after `after` (None: from the start), in
        ascending bytewise id order."""
        ...

    def delete_where(self, where: Filter, still_wanted: Callable[[], bool] | None = None) -> int:
        """Deletes every document where matches, atomically; returns how many."""
        ...

    def update_attributes(
        self,
        ids: Sequence[str] | None,
        where: Filter | None,
        set: Mapping,
        unset: Sequence[str],
        limits,
        still_wanted: Callable[[], bool] | None = None,
    ) -> int:
        """Sets and removes attributes of the documents chosen by ids (NotFound for an unknown one, nothing
        changed) or where, atomically, leaving texts and vectors as they are; returns how many changed."""
        ...

    # -- housekeeping ------------------------------------------------------------------------------

    def status(self) -> CollectionStatus: ...

    def snapshot(self) -> None: ...

    def close(self, snapshot: bool = True) -> None: ...


class StoreProvider(Protocol):
    """Where collections live: opens, creates and deletes them by name (a data directory, a Milvus)."""

    def names(self) -> list[str]:
        """Every collection this provider holds, including ones that cannot be opened."""
        ...

    def open(self, name: str, running: ModelFingerprint) -> IndexStore:
        """Opens and recovers a collection.

        Raises:
            ModelMismatch (FailedPrecondition): its vectors came from another model.
            CollectionBroken: it cannot be served (the message says why and where).
        """
        ...

    def open_for_reindex(self, name: str, running: ModelFingerprint) -> IndexStore:
        """Opens a collection of another model without loading its vectors, to re-embed its texts."""
        ...

    def create(self, name: str, settings: CollectionSettings, fingerprint: ModelFingerprint) -> IndexStore:
        """Creates an empty collection atomically (a crash leaves all of it or nothing)."""
        ...

    def delete(self, name: str, store: IndexStore | None) -> None:
        """Deletes a collection (closing store first, if it is open)."""
        ...

    def settings_of(self, name: str) -> CollectionSettings:
        """The settings recorded for a collection, readable even when it cannot be opened."""
        ...

    def cleanup(self) -> None:
        """Removes what interrupted creates and deletes left behind."""
        ...

    # -- aliases (the registry checks names and keeps the map; the provider persists it) -------------
    shared: bool  # True when other processes may change the aliases (replicas of one Milvus)

    def aliases(self) -> dict[str, str]:
        """Every alias -> the collection it names, as persisted."""
        ...

    def set_alias(self, alias: str, collection: str, aliases: Mapping[str, str]) -> None:
        """Persists alias -> collection atomically (aliases: the map before the change)."""
        ...

    def delete_alias(self, alias: str, aliases: Mapping[str, str]) -> None: ...

    # -- snapshots (FailedPrecondition where the store's own tool does it) -------------------------
    def create_snapshot(self, store: IndexStore) -> SnapshotInfo:
        """A consistent point-in-time copy of the collection, as one file."""
        ...

    def list_snapshots(self) -> list[SnapshotInfo]: ...

    def delete_snapshot(self, name: str) -> None: ...

    def restore_snapshot(self, name: str, collection: str, running: ModelFingerprint) -> IndexStore:
        """Builds and opens a new collection from a snapshot.

        Raises:
            DataLoss: the file is damaged. FailedPrecondition: another model. Either way nothing changed.
        """
        ...


class CollectionBroken(Exception):
    """A collection that cannot be served; the message names the file or object and the reason."""


class ModelMismatch(FailedPrecondition):
    """A collection whose vectors came from another model than the running one."""

    def __init__(self, name: str, stored: ModelFingerprint, running: ModelFingerprint) -> None:
        super().__init__(
            f"collection {name!r} was built by model {stored.short()} but the server runs {running.short()}; "
            f"its stored texts can be re-embedded with the running model: `semsearch reindex --collection {name}` "
            "(or start the server with the original --model)"
        )
        self.stored = stored
        self.running = running


def updated_attributes(doc_id: str, attributes: Mapping, set: Mapping, unset: Sequence[str], max_keys: int) -> dict:
    """A document's attributes after UpdateAttributes: `unset` removed, then `set` added or replaced. Refused
    (InvalidArgument, for the whole request) when the document would hold more than max_keys."""
    out = dict(attributes)
    for key in unset:
        out.pop(key, None)
    out.update(set)
    if len(out) > max_keys:
        raise InvalidArgument(
            f"set: document {doc_id!r} would have {len(out)} attributes; at most {max_keys} allowed; "
            "nothing was changed"
        )
    return out
