"""The Milvus store's writes: versioned rows, document heads and commit markers (see milvus_store)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from semsearch_server.errors import DeadlineExceeded, InvalidArgument, NotFound
from semsearch_server.filtering import Filter, attributes_to_json
from semsearch_server.index.base import EmbeddedDocument, updated_attributes
from semsearch_server.index.milvus_calls import (
    FLUSH_ROWS,
    HEAD,
    INSERT_CHUNK,
    KEY_CHUNK,
    MARKER,
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
    META,
    in_,
)
from semsearch_server.index.milvus_filters import matcher
from semsearch_server.index.milvus_versions import Head

# The Milvus store logs as one logger, whichever of its modules a line comes from.
log = logging.getLogger("semsearch_server.index.milvus_store")


class MilvusWrites:
    """MilvusIndexStore's writes (a mixin: the state is the store's)."""

    def upsert(self, docs: Sequence[EmbeddedDocument], still_wanted: Callable[[], bool] | None = None) -> int:
        if not docs:
            return 0
        if still_wanted is not None and not still_wanted():
            raise DeadlineExceeded("the deadline passed before the write reached Milvus; nothing was stored")
        version = self._new_version()
        rows = self._passage_rows_of(docs, version)
        with self._write_lock:
            self._commit(docs, rows, version)
        return len(docs)

    def _passage_rows_of(self, docs: Sequence[EmbeddedDocument], version: int) -> list[dict]:
        """The passage rows of a write of docs under version (checked against Milvus's limits)."""
        rows = []
        for ed in docs:
            doc = ed.document
            if len(doc.id.encode()) > MAX_ID_BYTES:
                raise InvalidArgument(f"document id {doc.id[:40]!r}...: longer than {MAX_ID_BYTES} bytes")
            if len(doc.text.encode()) > MAX_TEXT_BYTES:
                raise InvalidArgument(
                    f"document {doc.id!r}: text of {len(doc.text.encode())} UTF-8 bytes; the Milvus store "
                    f"holds at most {MAX_TEXT_BYTES}"
                )
            if len(ed.passages) != len(ed.vectors) or not ed.passages:
                raise InvalidArgument(f"document {doc.id!r}: {len(ed.passages)} passages, {len(ed.vectors)} vectors")
            for p, vec in zip(ed.passages, ed.vectors, strict=True):
                rows.append(
                    {
                        "pk": f"{version}:{p.index}:{doc.id}",
                        "doc_id": doc.id,
                        "version": version,
                        "passage_index": p.index,
                        "start": p.start,
                        "end": p.end,
                        "text": doc.text if p.index == 0 else "",
                        "meta": attributes_to_json(doc.attributes),
                        "vector": np.asarray(vec, dtype=np.float32).tolist(),
                    }
                )
        return rows

    def _commit(self, docs: Sequence[EmbeddedDocument], rows: list[dict], version: int) -> None:
        """Writes the rows of version and makes them visible (the steps of the module docstring). The caller
        holds the write lock, so that a write that chose its documents under it (by filter) stays atomic."""
        for i in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[i : i + INSERT_CHUNK]
            self._call("insert", lambda chunk=chunk: self._client.insert(self._collection, chunk))
        marker = {
            "pk": f"{version}:marker",
            "doc_id": "",
            "version": version,
            "passage_index": MARKER,
            "start": 0,
            "end": 0,
            "text": "",
            "meta": {},
            "vector": [0.0] * self.fingerprint.dimension,
        }
        # The heads first, naming the new version and the one readers use until its marker is written
        # (see Head): a crash before the marker leaves every reader on the previous version, a crash
        # after it every reader on the new one, whether it reads by head (get) or by rows (search).
        previous = self._heads(list(dict.fromkeys(ed.document.id for ed in docs)))
        heads = {ed.document.id: self._head_row(ed, version, previous.get(ed.document.id)) for ed in docs}
        head_rows = list(heads.values())
        self._call("upsert (heads)", lambda: self._client.upsert(self._collection, head_rows, partition_name=META))
        self._call(
            "insert (commit marker)", lambda: self._client.insert(self._collection, [marker], partition_name=META)
        )
        self._versions.add(version)
        # Superseded rows are found through the documents' old heads (a primary-key lookup), not by a
        # doc_id expression, which Milvus evaluates by scanning: O(collection) per batch.
        old_pks = [pk for head in previous.values() for pk in head.row_keys(before=version)]
        for i in range(0, len(old_pks), 1000):
            chunk = old_pks[i : i + 1000]
            self._call("delete", lambda chunk=chunk: self._client.delete(self._collection, filter=in_("pk", chunk)))
        self._unflushed_rows += len(rows) + len(heads) + 1
        if self._unflushed_rows >= FLUSH_ROWS:
            # Milvus Lite searches rows still in a growing segment by brute force, slowly: with 20k
            # documents never flushed one search took 1.7-2.3 s, flushed every 8,192 rows 0.16-0.23 s,
            # every 2,048 rows 0.04-0.06 s, ingest no slower (measured). A flush seals the rows into an
            # indexed segment. Milvus standalone seals segments by size itself; the flush every
            # FLUSH_ROWS rows only bounds how many stay growing there too.
            self._call("flush", lambda: self._client.flush(self._collection))
            self._unflushed_rows = 0

    def _head_row(self, ed: EmbeddedDocument, version: int, previous: Head | None) -> dict:
        """A document's head: the version being written and its passage count (in ``end``), and in ``meta``
        the version readers use until that one is committed (the newest committed one the old head named)."""
        meta: dict[str, int] = {}
        if previous is not None:
            keep = self._current(previous)
            if keep is not None and keep[0] < version:
                meta = {"previous_version": keep[0], "previous_passages": keep[1]}
        return {
            "pk": f"h:{ed.document.id}",
            "doc_id": ed.document.id,
            "version": version,
            "passage_index": HEAD,
            "start": 0,
            "end": len(ed.passages),
            "text": "",
            "meta": meta,
            "vector": [0.0] * self.fingerprint.dimension,
        }

    def _heads(self, ids: list[str]) -> dict[str, Head]:
        """The head rows of these documents (primary-key lookups), by document id."""
        rows = self._rows_by_key([f"h:{d}" for d in ids], ["doc_id", "version", "end", "meta"])
        return {r["doc_id"]: Head.of(r) for r in rows}

    def _rows_by_key(self, keys: Sequence[str], fields: Sequence[str]) -> list[dict]:
        """The rows with these primary keys (those that exist), in chunks of KEY_CHUNK keys."""
        rows: list[dict] = []
        for begin in range(0, len(keys), KEY_CHUNK):
            chunk = list(keys[begin : begin + KEY_CHUNK])
            # An expression on the primary key (a key lookup), quoted by us: pymilvus's get(ids=...) does
            # not escape backslashes in string keys.
            rows += self._query(in_("pk", chunk), list(fields), limit=len(chunk))
        return rows

    def _current(self, head: Head) -> tuple[int, int] | None:
        """The (version, passage count) readers use for a head's document: the newest committed of the
        versions it names; None if neither is committed (a first write that has not reached its marker)."""
        committed = self._versions.committed(self, {v for v, _ in head.versions})
        return max(((v, n) for v, n in head.versions if v in committed), default=None)

    def _current_versions(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """{doc_id: (version, passage count)} that readers use, through the heads; documents absent or not
        yet committed are left out."""
        out = {}
        for doc_id, head in self._heads(list(dict.fromkeys(ids))).items():
            current = self._current(head)
            if current is not None:
                out[doc_id] = current
        return out

    def delete(self, ids: Sequence[str], still_wanted: Callable[[], bool] | None = None) -> int:
        if not ids:
            return 0
        if still_wanted is not None and not still_wanted():
            raise DeadlineExceeded("the deadline passed before the delete reached Milvus; nothing was deleted")
        with self._write_lock:
            return self._delete_locked(ids)

    def _delete_locked(self, ids: Sequence[str]) -> int:
        """Deletes these documents (the caller holds the write lock); returns how many existed."""
        existing = {d.id for d in self.get(ids)}
        heads = self._heads(sorted(existing))
        # Rows by primary key (every version the head names, passage 0 first), then the heads: a crash in
        # between leaves heads whose rows are gone, which readers take as deleted (get finds no passage 0,
        # search no rows). Deleting the heads first would leave rows that search sees and get does not.
        keys = [pk for i in sorted(existing) if i in heads for pk in heads[i].row_keys()]
        keys.sort(key=lambda k: k.split(":", 2)[1] != "0")
        for begin in range(0, len(keys), KEY_CHUNK):
            chunk = keys[begin : begin + KEY_CHUNK]
            self._call("delete", lambda chunk=chunk: self._client.delete(self._collection, filter=in_("pk", chunk)))
        heads_keys = [f"h:{i}" for i in sorted(existing)]
        for begin in range(0, len(heads_keys), KEY_CHUNK):
            chunk = heads_keys[begin : begin + KEY_CHUNK]
            self._call(
                "delete (heads)", lambda chunk=chunk: self._client.delete(self._collection, filter=in_("pk", chunk))
            )
        return len(existing)

    def delete_where(self, where: Filter, still_wanted: Callable[[], bool] | None = None) -> int:
        """Deletes the documents that match when the write lock is held, as ``delete`` deletes by id."""
        with self._write_lock:
            if still_wanted is not None and not still_wanted():
                raise DeadlineExceeded("the deadline passed while waiting for the collection; nothing was deleted")
            wanted = self._matching(where)
            return self._delete_locked(sorted(wanted)) if wanted else 0

    def update_attributes(
        self,
        ids: Sequence[str] | None,
        where: Filter | None,
        set: Mapping,
        unset: Sequence[str],
        limits,
        still_wanted: Callable[[], bool] | None = None,
    ) -> int:
        """A new version of each chosen document with the new attributes and its stored text, passages and
        vectors (nothing is re-embedded), written by the upsert path under the write lock: atomic, and
        seen by every replica and after a crash exactly as an upsert is."""
        with self._write_lock:
            if still_wanted is not None and not still_wanted():
                raise DeadlineExceeded("the deadline passed while waiting for the collection; nothing was changed")
            if ids is not None:
                chosen = list(dict.fromkeys(ids))
                docs = {d.id: d for d in self.get(chosen)}
                missing = [i for i in chosen if i not in docs]
                if missing:
                    raise NotFound(
                        f"ids: no document {missing[0]!r} in collection {self.name!r}"
                        + (f" ({len(missing)} ids are unknown)" if len(missing) > 1 else "")
                        + "; nothing was changed"
                    )
            else:
                # as they are now (another replica may have written one since it matched)
                keeps = matcher(where)
                chosen = sorted(self._matching(where))
                docs = {d.id: d for d in self.get(chosen) if keeps(attributes_to_json(d.attributes))}
                chosen = [i for i in chosen if i in docs]
            if not chosen:
                return 0
            stored = self.get_passages(chosen)
            changed = []
            for doc_id in chosen:
                attributes = updated_attributes(
                    doc_id, docs[doc_id].attributes, set, unset, limits.max_metadata_entries
                )
                passages, vectors = stored[doc_id]
                document = dataclasses.replace(docs[doc_id], attributes=attributes)
                changed.append(EmbeddedDocument(document, passages, vectors))
            version = self._new_version()
            self._commit(changed, self._passage_rows_of(changed, version), version)
        return len(changed)
