"""Milvus collections: each semsearch collection one Milvus collection, with Milvus's own aliases."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping

from semsearch_server.domain import (
    CollectionSettings,
    IndexKind,
    IndexSpec,
    ModelFingerprint,
    PassageConfig,
    SearchMode,
    SnapshotInfo,
)
from semsearch_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from semsearch_server.index.base import CollectionBroken, ModelMismatch
from semsearch_server.index.milvus_calls import (
    ANALYZER,
    FINGERPRINT_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
    META,
    SETTINGS_KEY,
    call,
)
from semsearch_server.index.milvus_store import MilvusIndexStore

# gRPC waits up to 120 s between attempts to reach a server that went away (1 s doubling by 1.6): a Milvus
# back after a 10 s outage was reached 3.8 s after it started, 1.3 s with attempts at most 1 s apart.
_GRPC_OPTIONS = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 1000}


class MilvusStoreProvider:
    """The collections of a deployment on one Milvus (``uri``: ``http://host:port`` or a Lite ``*.db`` file)."""

    def __init__(self, uri: str, token: str = "", prefix: str = "semsearch_", timeout: float = 10.0) -> None:
        from pymilvus import MilvusClient

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
            raise InvalidArgument(f"--milvus-prefix {prefix!r}: letters, digits and _ only, not starting with a digit")
        self.uri = uri
        self.prefix = prefix
        options = {"uri": uri, "token": token or "", "timeout": timeout, "grpc_options": _GRPC_OPTIONS}
        try:
            self._client = call("connect", lambda: MilvusClient(**options))
        except Unavailable:
            # Once more: a server may drop a connection it found too chatty (GOAWAY "too_many_pings", seen
            # with `milvus-lite server` and pymilvus's 10 s keepalive) just as it is reused for a new client.
            time.sleep(0.5)
            self._client = call("connect", lambda: MilvusClient(**options))

    def ping(self, timeout: float) -> None:
        """One cheap request (list the collections) within `timeout`; raises StoreUnreachable if it fails."""
        call("ping", lambda: self._client.list_collections(timeout=timeout))

    def _full(self, name: str) -> str:
        return self.prefix + name

    def names(self) -> list[str]:
        return sorted(
            c[len(self.prefix) :] for c in call("list", self._client.list_collections) if c.startswith(self.prefix)
        )

    def _properties(self, name: str) -> dict:
        if not call("describe", lambda: self._client.has_collection(self._full(name))):
            raise NotFound(f"collection {name!r} not found")
        desc = call("describe", lambda: self._client.describe_collection(self._full(name)))
        return dict(desc.get("properties") or {})

    def settings_of(self, name: str) -> CollectionSettings:
        props = self._properties(name)
        try:
            data = json.loads(props[SETTINGS_KEY])
            return CollectionSettings(
                index=IndexSpec.from_dict(data["index"]),
                passages=PassageConfig.from_dict(data.get("passages")),
                default_mode=SearchMode(data.get("default_mode", "dense")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CollectionBroken(
                f"Milvus collection {self._full(name)!r}: property {SETTINGS_KEY} missing or unreadable ({exc})"
            ) from exc

    def _fingerprint_of(self, name: str) -> ModelFingerprint:
        props = self._properties(name)
        try:
            return ModelFingerprint.from_dict(json.loads(props[FINGERPRINT_KEY]))
        except (KeyError, ValueError, TypeError) as exc:
            raise CollectionBroken(
                f"Milvus collection {self._full(name)!r}: property {FINGERPRINT_KEY} missing or unreadable ({exc})"
            ) from exc

    def _load(self, name: str, fingerprint: ModelFingerprint) -> MilvusIndexStore:
        settings = self.settings_of(name)
        full = self._full(name)
        if not call("describe", lambda: self._client.has_partition(full, META)):
            # a collection created before heads and markers had a partition of their own: theirs stay in
            # the passages' partition (filtered out by passage_index, as before); new ones go to META. A
            # partition can be added to a loaded collection (measured on Milvus Lite): no replica is disturbed.
            call("create partition", lambda: self._client.create_partition(full, META))
        call("load", lambda: self._client.load_collection(full))
        store = MilvusIndexStore(self._client, self._full(name), name, settings, fingerprint)
        store.repair()
        return store

    def open(self, name: str, running: ModelFingerprint) -> MilvusIndexStore:
        stored = self._fingerprint_of(name)
        if not stored.is_compatible(running):
            raise ModelMismatch(name, stored, running)
        return self._load(name, stored)

    def open_for_reindex(self, name: str, running: ModelFingerprint) -> MilvusIndexStore:
        return self._load(name, self._fingerprint_of(name))

    def create(self, name: str, settings: CollectionSettings, fingerprint: ModelFingerprint) -> MilvusIndexStore:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        full = self._full(name)
        if call("describe", lambda: self._client.has_collection(full)):
            raise AlreadyExists(f"collection {name!r} already exists")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, max_length=MAX_ID_BYTES + 64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field("version", DataType.INT64)
        schema.add_field("passage_index", DataType.INT64)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field(
            "text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True, analyzer_params=ANALYZER
        )
        schema.add_field("meta", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=fingerprint.dimension)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        spec = settings.index
        index = self._client.prepare_index_params()
        if spec.kind is IndexKind.HNSW:
            index.add_index(
                "vector",
                index_type="HNSW",
                metric_type="IP",
                params={"M": spec.hnsw_m, "efConstruction": spec.hnsw_ef_construction},
            )
        elif spec.kind is IndexKind.IVF:
            index.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": spec.ivf_nlist or 128})
        else:
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        properties = {
            FORMAT_KEY: FORMAT_VERSION,
            SETTINGS_KEY: json.dumps(
                {
                    "index": spec.to_dict(),
                    "passages": settings.passages.to_dict(),
                    "default_mode": settings.default_mode.value,
                }
            ),
            FINGERPRINT_KEY: json.dumps(fingerprint.to_dict()),
        }
        call(
            "create collection",
            lambda: self._client.create_collection(
                full, schema=schema, consistency_level="Strong", properties=properties
            ),
        )
        # Indexes without pymilvus's wait for them (sync=False): the wait starts with an AllocTimestamp
        # call, which Milvus Lite does not implement (it logged a NotImplementedError traceback for each
        # index of every new collection); an index of an empty collection is ready at once, and loading
        # the collection below waits for it on a standalone Milvus.
        call("create index", lambda: self._client.create_index(full, index, sync=False))
        call("create partition", lambda: self._client.create_partition(full, META))
        call("load", lambda: self._client.load_collection(full))
        return MilvusIndexStore(self._client, full, name, settings, fingerprint)

    def delete(self, name: str, store: MilvusIndexStore | None) -> None:
        if store is not None:
            store.close(snapshot=False)
        full = self._full(name)
        if not call("describe", lambda: self._client.has_collection(full)):
            raise NotFound(f"collection {name!r} not found")
        call("drop collection", lambda: self._client.drop_collection(full))

    def cleanup(self) -> None:
        """Nothing to do: a Milvus create or drop is one request; interrupted writes are repaired on open."""

    # -- aliases: Milvus's own (``<prefix><alias>`` names ``<prefix><collection>``), so every replica reads
    # the same ones, Milvus repoints atomically and refuses an alias named like a collection.
    shared = True

    def aliases(self) -> dict[str, str]:
        listed = call("list aliases", lambda: self._client.list_aliases()).get("aliases") or []
        out = {}
        for full in listed:
            if not full.startswith(self.prefix):
                continue
            try:
                target = call("describe alias", lambda full=full: self._client.describe_alias(full))["collection_name"]
            except CollectionBroken:
                continue  # dropped since it was listed
            if target.startswith(self.prefix):
                out[full[len(self.prefix) :]] = target[len(self.prefix) :]
        return out

    def set_alias(self, alias: str, collection: str, aliases: Mapping[str, str]) -> None:
        full, target = self._full(alias), self._full(collection)
        try:
            if alias in aliases:
                call("alter alias", lambda: self._client.alter_alias(target, full))
            else:
                call("create alias", lambda: self._client.create_alias(target, full))
        except CollectionBroken as exc:  # another replica made a collection or alias of that name meanwhile
            if "exist" in str(exc) or "conflict" in str(exc):
                raise AlreadyExists(f"alias {alias!r}: the name is taken ({exc})") from None
            raise FailedPrecondition(f"alias {alias!r} was not set: {exc}") from None

    def delete_alias(self, alias: str, aliases: Mapping[str, str]) -> None:
        try:
            call("drop alias", lambda: self._client.drop_alias(self._full(alias)))
        except CollectionBroken as exc:
            raise NotFound(f"alias {alias!r} was not deleted: {exc}") from None

    # -- snapshots: not this store's job.
    def _no_snapshots(self) -> FailedPrecondition:
        return FailedPrecondition(
            "snapshots are not taken by semsearch on the Milvus store (--store milvus): back up and restore its "
            "collections with Milvus's own backup tool, milvus-backup (https://github.com/zilliztech/milvus-backup); "
            f"this deployment's collections are the Milvus collections named {self.prefix}<collection>"
        )

    def create_snapshot(self, store: MilvusIndexStore) -> SnapshotInfo:
        raise self._no_snapshots()

    def list_snapshots(self) -> list[SnapshotInfo]:
        raise self._no_snapshots()

    def delete_snapshot(self, name: str) -> None:
        raise self._no_snapshots()

    def restore_snapshot(self, name: str, collection: str, running: ModelFingerprint) -> MilvusIndexStore:
        raise self._no_snapshots()

    def close(self) -> None:
        call("close", self._client.close)
