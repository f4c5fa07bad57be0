"""SearchServicer: protobuf in, domain call, protobuf out. No logic of its own."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from semsearch.v1 import search_service_pb2 as pb
from semsearch.v1 import search_service_pb2_grpc as pb_grpc

from semsearch_server.core.service import SearchService
from semsearch_server.domain import (
    CollectionSettings,
    CollectionState,
    CollectionStatus,
    Document,
    Fusion,
    Hit,
    HybridParams,
    IndexKind,
    IndexSpec,
    Passage,
    PassageConfig,
    SearchMode,
    SnapshotInfo,
)
from semsearch_server.errors import InvalidArgument, SemsearchError, StoreUnreachable, Unavailable
from semsearch_server.transport.attributes import to_attributes, to_filter, to_pb_attributes, to_value
from semsearch_server.transport.errors import status_details, status_for
from semsearch_server.transport.streams import StreamCancelled, StreamFeed, StreamGate, StreamLimits

log = logging.getLogger(__name__)

_KIND_TO_PB = {IndexKind.FLAT: pb.INDEX_KIND_FLAT, IndexKind.HNSW: pb.INDEX_KIND_HNSW, IndexKind.IVF: pb.INDEX_KIND_IVF}
_PB_TO_KIND = {v: k for k, v in _KIND_TO_PB.items()} | {pb.INDEX_KIND_UNSPECIFIED: IndexKind.FLAT}
_STATE_TO_PB = {CollectionState.READY: pb.COLLECTION_STATE_READY, CollectionState.FAILED: pb.COLLECTION_STATE_FAILED}
_GRANULARITY = {pb.GRANULARITY_UNSPECIFIED: "word", pb.GRANULARITY_WORD: "word", pb.GRANULARITY_TOKEN: "token"}
_MODE_TO_PB = {
    SearchMode.DENSE: pb.SEARCH_MODE_DENSE,
    SearchMode.LEXICAL: pb.SEARCH_MODE_LEXICAL,
    SearchMode.HYBRID: pb.SEARCH_MODE_HYBRID,
}
_PB_TO_MODE = {v: k for k, v in _MODE_TO_PB.items()} | {pb.SEARCH_MODE_UNSPECIFIED: None}
_FUSION_TO_PB = {Fusion.WEIGHTED: pb.FUSION_WEIGHTED, Fusion.RRF: pb.FUSION_RRF}
_PB_TO_FUSION = {v: k for k, v in _FUSION_TO_PB.items()} | {pb.FUSION_UNSPECIFIED: None}
_PASSAGE_MODES = {pb.PASSAGE_MODE_UNSPECIFIED: True, pb.PASSAGE_MODE_ON: True, pb.PASSAGE_MODE_OFF: False}


def _rpc(method: Callable) -> Callable:
    """Maps domain errors to their status code; anything else is INTERNAL with a logged traceback."""

    @functools.wraps(method)
    def wrapper(self: SearchServicer, request, context: grpc.ServicerContext):
        try:
            return method(self, request, context)
        except SemsearchError as exc:
            if isinstance(exc, StoreUnreachable) and self.on_store_unreachable is not None:
                self.on_store_unreachable(exc)  # health goes NOT_SERVING now, not at the next probe
            context.abort(status_for(exc), status_details(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed on the server; see its log")

    return wrapper


def to_document(doc: pb.Document, field: str = "documents") -> Document:
    return Document(id=doc.id, text=doc.text, attributes=to_attributes(doc.metadata, doc.attributes, field))


def to_documents(docs, field: str = "documents") -> list[Document]:
    return [to_document(d, f"{field}[{i}]") for i, d in enumerate(docs)]


def to_pb_document(doc: Document) -> pb.Document:
    return pb.Document(id=doc.id, text=doc.text, metadata=doc.metadata, attributes=to_pb_attributes(doc.attributes))


def to_pb_hit(hit: Hit) -> pb.Hit:
    return pb.Hit(
        id=hit.id,
        score=hit.score,
        text=hit.text,
        metadata=hit.metadata,
        attributes=to_pb_attributes(hit.attributes),
        dense_score=hit.dense_score,
        lexical_score=hit.lexical_score,
        passage=to_pb_passage(hit.passage, hit.text),
    )


def to_where(request) -> object:
    """The request's `where` as a filter tree (None when unset)."""
    return to_filter(request.where) if request.HasField("where") else None


def to_where_required(request) -> object:
    """`where` of a request that acts on what it matches: set but empty is refused, not read as 'all'."""
    if request.HasField("where") and request.where.WhichOneof("kind") is None:
        raise InvalidArgument(
            "where: the filter is empty; set a condition, all, any, not or expression "
            "(to act on every document of a collection, delete the collection)"
        )
    return to_where(request)


def to_pb_passage(passage: Passage | None, text: str = "") -> pb.Passage:
    if passage is None:  # one passage: the whole text
        return pb.Passage(index=0, start=0, end=len(text))
    return pb.Passage(index=passage.index, start=passage.start, end=passage.end)


def to_mode(value: int, field: str = "mode") -> SearchMode | None:
    if value not in _PB_TO_MODE:
        raise InvalidArgument(f"{field}: unknown value {value}; allowed DENSE, LEXICAL, HYBRID (or unset)")
    return _PB_TO_MODE[value]


def to_hybrid(request) -> HybridParams | None:
    if not request.HasField("hybrid"):
        return None
    params = request.hybrid
    if params.fusion not in _PB_TO_FUSION:
        raise InvalidArgument(f"hybrid.fusion: unknown value {params.fusion}; allowed WEIGHTED, RRF (or unset)")
    return HybridParams(_PB_TO_FUSION[params.fusion], params.dense_weight, params.rrf_k)


def to_settings(request: pb.CreateCollectionRequest) -> CollectionSettings:
    passages = request.passages
    if passages.mode not in _PASSAGE_MODES:
        raise InvalidArgument(f"passages.mode: unknown value {passages.mode}; allowed ON, OFF (or unset)")
    if passages.window_tokens < 0 or passages.overlap_tokens < 0:
        raise InvalidArgument("passages: window_tokens and overlap_tokens must not be negative (0 means the default)")
    mode = to_mode(request.default_mode, "default_mode")
    return CollectionSettings(
        index=to_index_spec(request.index),
        passages=PassageConfig(_PASSAGE_MODES[passages.mode], passages.window_tokens, passages.overlap_tokens),
        default_mode=mode or SearchMode.DENSE,
    )


def to_index_spec(config: pb.IndexConfig) -> IndexSpec:
    if config.kind not in _PB_TO_KIND:
        raise InvalidArgument(f"index.kind: unknown value {config.kind}; allowed FLAT, HNSW, IVF")
    default = IndexSpec()
    return IndexSpec(
        kind=_PB_TO_KIND[config.kind],
        hnsw_m=config.hnsw.m or default.hnsw_m,
        hnsw_ef_construction=config.hnsw.ef_construction or default.hnsw_ef_construction,
        hnsw_ef_search=config.hnsw.ef_search or default.hnsw_ef_search,
        ivf_nlist=config.ivf.nlist,
        ivf_nprobe=config.ivf.nprobe or default.ivf_nprobe,
    )


def to_pb_collection(status: CollectionStatus) -> pb.CollectionInfo:
    spec = status.index
    return pb.CollectionInfo(
        name=status.name,
        document_count=status.document_count,
        index=pb.IndexConfig(
            kind=_KIND_TO_PB[spec.kind],
            hnsw=pb.HnswParams(m=spec.hnsw_m, ef_construction=spec.hnsw_ef_construction, ef_search=spec.hnsw_ef_search),
            ivf=pb.IvfParams(nlist=spec.ivf_nlist, nprobe=spec.ivf_nprobe),
        ),
        state=_STATE_TO_PB[status.state],
        status_message=status.message,
        index_trained=status.index_trained,
        passages=pb.PassageConfig(
            mode=pb.PASSAGE_MODE_ON if status.passages.enabled else pb.PASSAGE_MODE_OFF,
            window_tokens=status.passages.window_tokens,
            overlap_tokens=status.passages.overlap_tokens,
        ),
        default_mode=_MODE_TO_PB[status.default_mode],
    )


def _matrix(values: np.ndarray | None) -> list[float]:
    return [] if values is None else np.asarray(values, dtype=np.float64).ravel().tolist()


class SearchServicer(pb_grpc.SearchServiceServicer):
    """Serves semsearch.v1.SearchService; answers UNAVAILABLE until a SearchService is attached."""

    def __init__(self, stream_limits: StreamLimits | None = None) -> None:
        self._service: SearchService | None = None
        self.streams = StreamGate(stream_limits or StreamLimits())
        self._unavailable = "the server is loading the model and collections; retry shortly"
        # Told of every call that failed because the store is unreachable (store_health.py).
        self.on_store_unreachable: Callable[[StoreUnreachable], None] | None = None

    def attach(self, service: SearchService) -> None:
        self._service = service

    def detach(self, reason: str) -> None:
        self._unavailable = reason
        self._service = None

    @property
    def service(self) -> SearchService:
        service = self._service
        if service is None:
            raise Unavailable(self._unavailable)
        return service

    @_rpc
    def Upsert(self, request: pb.UpsertRequest, context) -> pb.UpsertResponse:
        docs = to_documents(request.documents)
        return pb.UpsertResponse(upserted_count=self.service.upsert(request.collection, docs, context.is_active))

    @_rpc
    def UpsertStream(self, request_iterator: Iterator[pb.UpsertRequest], context) -> pb.UpsertStreamResponse:
        service = self.service
        limits = self.streams.limits
        with self.streams.admit(context.peer()):
            feed = StreamFeed(request_iterator, limits.idle_seconds)
            batches = (None if r is None else (r.collection, to_documents(r.documents)) for r in feed)
            try:
                count = service.upsert_stream(batches, context.is_active, limits.buffer_bytes)
            except StreamCancelled:
                # Nobody is left to answer; what was stored before the cancel stays, nothing after it is.
                log.info("UpsertStream from %s ended by the client after %d messages", context.peer(), feed.received)
                return pb.UpsertStreamResponse()
            finally:
                feed.close()
        return pb.UpsertStreamResponse(upserted_count=count)

    @_rpc
    def Delete(self, request: pb.DeleteRequest, context) -> pb.DeleteResponse:
        count = self.service.delete(
            request.collection, list(request.ids), context.is_active, to_where_required(request)
        )
        return pb.DeleteResponse(deleted_count=count)

    @_rpc
    def Get(self, request: pb.GetRequest, context) -> pb.GetResponse:
        docs = self.service.get(request.collection, list(request.ids))
        return pb.GetResponse(documents=[to_pb_document(d) for d in docs])

    @_rpc
    def Count(self, request: pb.CountRequest, context) -> pb.CountResponse:
        return pb.CountResponse(count=self.service.count(request.collection, to_where(request)))

    @_rpc
    def Scroll(self, request: pb.ScrollRequest, context) -> pb.ScrollResponse:
        docs, cursor = self.service.scroll(request.collection, to_where(request), request.limit, request.cursor)
        return pb.ScrollResponse(documents=[to_pb_document(d) for d in docs], next_cursor=cursor)

    @_rpc
    def UpdateAttributes(self, request: pb.UpdateAttributesRequest, context) -> pb.UpdateAttributesResponse:
        values = {key: to_value(value, f"set[{key!r}]") for key, value in request.set.items()}
        count = self.service.update_attributes(
            request.collection,
            list(request.ids),
            to_where_required(request),
            values,
            list(request.unset),
            context.is_active,
        )
        return pb.UpdateAttributesResponse(updated_count=count)

    @_rpc
    def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        hits = self.service.search(
            request.collection,
            request.query,
            request.top_k,
            request.min_score,
            dict(request.filter),
            to_mode(request.mode),
            to_hybrid(request),
            to_where(request),
        )
        return pb.SearchResponse(hits=[to_pb_hit(h) for h in hits])

    @_rpc
    def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        results = self.service.batch_search(
            request.collection,
            list(request.queries),
            request.top_k,
            request.min_score,
            dict(request.filter),
            to_mode(request.mode),
            to_hybrid(request),
            to_where(request),
        )
        return pb.BatchSearchResponse(
            results=[pb.SearchResponse(hits=[to_pb_hit(h) for h in hits]) for hits in results]
        )

    @_rpc
    def Explain(self, request: pb.ExplainRequest, context) -> pb.ExplainResponse:
        target = request.WhichOneof("target")
        if request.granularity not in _GRANULARITY:
            raise InvalidArgument(f"granularity: unknown value {request.granularity}; allowed WORD, TOKEN")
        outcome = self.service.explain(
            request.collection,
            request.query,
            doc_id=request.doc_id if target == "doc_id" else None,
            doc_text=request.doc_text if target == "doc_text" else None,
            granularity=_GRANULARITY[request.granularity],
            include_attention=request.include_attention,
            attention_layer=request.attention_layer if request.HasField("attention_layer") else -1,
            attention_head=request.attention_head if request.HasField("attention_head") else -1,
            mode=to_mode(request.mode),
            hybrid=to_hybrid(request),
            top_k=request.top_k,
            filter=dict(request.filter),
            where=to_where(request),
        )
        e = outcome.explanation
        r = outcome.ranking

        def segments(items) -> list[pb.Segment]:
            return [
                pb.Segment(text=s.text, start=s.start, end=s.end, contribution=s.contribution, special=s.special)
                for s in items
            ]

        rows, cols = e.pair_contributions.shape
        return pb.ExplainResponse(
            query_segments=segments(e.query_segments),
            doc_segments=segments(e.doc_segments),
            pair_contributions=_matrix(e.pair_contributions),
            rows=rows,
            cols=cols,
            cross_attention=_matrix(e.cross_attention),
            query_self_attention=_matrix(e.query_self_attention),
            query_self_attention_size=0 if e.query_self_attention is None else len(e.query_self_attention),
            doc_self_attention=_matrix(e.doc_self_attention),
            doc_self_attention_size=0 if e.doc_self_attention is None else len(e.doc_self_attention),
            attention_layer=e.attention_layer,
            attention_head=e.attention_head,
            query_truncated=e.query_truncated,
            doc_truncated=e.doc_truncated,
            index_score=outcome.index_score,
            notes=outcome.notes,
            **(_ranking_fields(r) if r is not None else _text_fields(e.score)),
        )

    @_rpc
    def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        vectors = self.service.embed(list(request.texts))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v.tolist()) for v in vectors], dimension=int(vectors.shape[1])
        )

    @_rpc
    def CreateCollection(self, request: pb.CreateCollectionRequest, context) -> pb.CreateCollectionResponse:
        status = self.service.create_collection(request.name, to_settings(request), request.exist_ok)
        return pb.CreateCollectionResponse(collection=to_pb_collection(status))

    @_rpc
    def ListCollections(self, request: pb.ListCollectionsRequest, context) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(collections=[to_pb_collection(s) for s in self.service.list_collections()])

    @_rpc
    def DeleteCollection(self, request: pb.DeleteCollectionRequest, context) -> pb.DeleteCollectionResponse:
        self.service.delete_collection(request.name)
        return pb.DeleteCollectionResponse()

    @_rpc
    def GetInfo(self, request: pb.GetInfoRequest, context) -> pb.GetInfoResponse:
        info = self.service.info()
        fp = info.fingerprint
        return pb.GetInfoResponse(
            model_id=info.model_id,
            dimension=fp.dimension,
            collections=[to_pb_collection(s) for s in info.collections],
            server_version=info.version,
            backend=info.backend,
            max_seq_length=fp.max_seq_length,
            pooling=fp.pooling,
            model_fingerprint=fp.weights_sha256,
            limits=pb.Limits(**dataclasses.asdict(info.limits)),
        )

    @_rpc
    def Reindex(self, request: pb.ReindexRequest, context) -> pb.ReindexResponse:
        return pb.ReindexResponse(reindexed_count=self.service.reindex(request.collection))

    @_rpc
    def SetAlias(self, request: pb.SetAliasRequest, context) -> pb.SetAliasResponse:
        return pb.SetAliasResponse(previous_collection=self.service.set_alias(request.alias, request.collection))

    @_rpc
    def DeleteAlias(self, request: pb.DeleteAliasRequest, context) -> pb.DeleteAliasResponse:
        self.service.delete_alias(request.alias)
        return pb.DeleteAliasResponse()

    @_rpc
    def ListAliases(self, request: pb.ListAliasesRequest, context) -> pb.ListAliasesResponse:
        aliases = [pb.Alias(alias=a, collection=c) for a, c in self.service.list_aliases()]
        return pb.ListAliasesResponse(aliases=aliases)

    @_rpc
    def CreateSnapshot(self, request: pb.CreateSnapshotRequest, context) -> pb.CreateSnapshotResponse:
        return pb.CreateSnapshotResponse(snapshot=to_pb_snapshot(self.service.create_snapshot(request.collection)))

    @_rpc
    def ListSnapshots(self, request: pb.ListSnapshotsRequest, context) -> pb.ListSnapshotsResponse:
        snapshots = self.service.list_snapshots(request.collection)
        return pb.ListSnapshotsResponse(snapshots=[to_pb_snapshot(s) for s in snapshots])

    @_rpc
    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest, context) -> pb.DeleteSnapshotResponse:
        self.service.delete_snapshot(request.name)
        return pb.DeleteSnapshotResponse()

    @_rpc
    def RestoreSnapshot(self, request: pb.RestoreSnapshotRequest, context) -> pb.RestoreSnapshotResponse:
        status = self.service.restore_snapshot(request.name, request.collection)
        return pb.RestoreSnapshotResponse(collection=to_pb_collection(status))


def to_pb_snapshot(snapshot: SnapshotInfo) -> pb.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(int(snapshot.created_at * 1e9))
    return pb.Snapshot(
        name=snapshot.name,
        collection=snapshot.collection,
        created_at=created,
        size_bytes=snapshot.size_bytes,
        document_count=snapshot.document_count,
        model_id=snapshot.model_id,
    )


def _text_fields(score: float) -> dict:
    """Explain of doc_text: DENSE, the recomputed cosine."""
    return {"score": score, "mode": pb.SEARCH_MODE_DENSE, "dense_score": score}


def _ranking_fields(r) -> dict:
    """ExplainResponse's ranking fields from a RankingExplanation (the score becomes the mode's)."""
    fields = {
        "score": r.score,
        "mode": _MODE_TO_PB[r.mode],
        "rank": r.rank,
        "kth_score": r.kth_score,
        "dense_score": r.dense_score,
        "lexical_score": r.lexical_score,
        "lexical_terms": [
            pb.LexicalTerm(
                term=t.term,
                contribution=t.contribution,
                query_text=t.query_text,
                term_frequency=t.term_frequency,
                document_frequency=t.document_frequency,
            )
            for t in r.lexical_terms
        ],
        "passage": to_pb_passage(r.passage),
        "dense_rank": r.dense_rank,
        "lexical_rank": r.lexical_rank,
        "excluded_by": r.excluded_by,
    }
    if r.fusion is not None:
        fields |= {
            "fusion": _FUSION_TO_PB[r.fusion.params.fusion],
            "dense_weight": r.fusion.params.dense_weight,
            "rrf_k": r.fusion.params.rrf_k,
            "dense_min": r.fusion.dense_min,
            "dense_max": r.fusion.dense_max,
            "lexical_max": r.fusion.lexical_max,
        }
    return fields
