"""SearchClient: every semsearch RPC with a default timeout, typed results and the client's own exceptions.

Each RPC is written once, in ``SearchApi``: the request it sends and how its response is read. The blocking
``SearchClient`` and the asyncio ``AsyncSearchClient`` (semsearch.aio) differ only in ``_invoke``, which sends
the request on their channel, so the two cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from semsearch.errors import from_rpc_error
from semsearch.filters import FilterLike, fill_attributes, read_attributes, to_pb_filter, to_pb_value
from semsearch.types import Document, ExplainResult, Hit, LexicalTerm, Page, Passage, Ranking, Segment
from semsearch.v1 import search_service_pb2 as pb
from semsearch.v1 import search_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    # numpy is imported where arrays are built (embed, explain): its import is about a quarter of a CLI
    # command's start-up (`semsearch search`, `semsearch index`), which needs no arrays.
    import numpy as np

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_TIMEOUT = 30.0
_HEALTH_SERVICE = "semsearch.v1.SearchService"

DocumentLike = Document | pb.Document | Mapping[str, Any] | tuple
T = TypeVar("T")

_INDEX_KINDS = {"flat": pb.INDEX_KIND_FLAT, "hnsw": pb.INDEX_KIND_HNSW, "ivf": pb.INDEX_KIND_IVF}
_GRANULARITIES = {"word": pb.GRANULARITY_WORD, "token": pb.GRANULARITY_TOKEN}


def to_pb_document(doc: DocumentLike) -> pb.Document:
    """Accepts a Document, a pb.Document, a mapping with id/text/metadata, or an (id, text[, metadata]) tuple.

    metadata values are plain Python values (str, int, float, bool, datetime, lists): strings travel in the
    message's ``metadata`` map, other kinds in ``attributes``."""
    if isinstance(doc, pb.Document):
        return doc
    if isinstance(doc, Document):
        doc_id, text, metadata = doc.id, doc.text, doc.metadata
    elif isinstance(doc, Mapping):
        doc_id, text, metadata = str(doc["id"]), str(doc["text"]), doc.get("metadata")
    elif isinstance(doc, tuple) and len(doc) in (2, 3):
        doc_id, text, metadata = doc[0], doc[1], doc[2] if len(doc) == 3 else None
    else:
        raise TypeError(f"cannot make a document of {doc!r}: give a Document, a mapping, or (id, text[, metadata])")
    message = pb.Document(id=doc_id, text=text)
    fill_attributes(message, metadata)
    return message


def _document(d: pb.Document) -> Document:
    return Document(id=d.id, text=d.text, metadata=read_attributes(d))


def _hit(h: pb.Hit) -> Hit:
    return Hit(
        id=h.id,
        score=h.score,
        text=h.text,
        metadata=read_attributes(h),
        dense_score=h.dense_score,
        lexical_score=h.lexical_score,
        passage=Passage(h.passage.index, h.passage.start, h.passage.end) if h.HasField("passage") else None,
    )


_MODES = {
    None: pb.SEARCH_MODE_UNSPECIFIED,
    "dense": pb.SEARCH_MODE_DENSE,
    "lexical": pb.SEARCH_MODE_LEXICAL,
    "hybrid": pb.SEARCH_MODE_HYBRID,
}
_MODE_NAMES = {v: k for k, v in _MODES.items() if k}
_FUSIONS = {None: pb.FUSION_UNSPECIFIED, "weighted": pb.FUSION_WEIGHTED, "rrf": pb.FUSION_RRF}
_FUSION_NAMES = {v: k for k, v in _FUSIONS.items() if k}


def _mode(mode: str | None) -> int:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(m for m in _MODES if m)} (or None: the collection's default)")
    return _MODES[mode]


def _hybrid(fusion: str | None, dense_weight: float, rrf_k: int) -> pb.HybridParams | None:
    if fusion not in _FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(f for f in _FUSIONS if f)} (or None: the server's default)")
    if fusion is None and not dense_weight and not rrf_k:
        return None
    return pb.HybridParams(fusion=_FUSIONS[fusion], dense_weight=dense_weight, rrf_k=rrf_k)


def _matrix(values, size: int) -> np.ndarray | None:
    import numpy as np

    return np.asarray(values, dtype=np.float64).reshape(size, size) if size else None


def _set_where(request, where: FilterLike | None) -> None:
    message = to_pb_filter(where)
    if message is not None:
        request.where.CopyFrom(message)


class SearchApi:
    """Every semsearch RPC, once: the request and the decoding of its response. Subclasses send them.

    Args: see SearchClient. ``settings`` keeps them, so a twin can be made: ``AsyncSearchClient(**c.settings)``.
    """

    _channels: Any  # the module that makes channels: grpc, or grpc.aio

    def __init__(
        self,
        address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        api_key: str | None = None,
        tls_ca: str | None = None,
        tls: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address or os.environ.get("SEMSEARCH_ADDRESS") or DEFAULT_ADDRESS
        self.timeout = timeout
        api_key = api_key if api_key is not None else os.environ.get("SEMSEARCH_API_KEY")
        self.settings = {
            "address": self.address,
            "timeout": timeout,
            "api_key": api_key,
            "tls_ca": tls_ca,
            "tls": tls,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "options": tuple(options),
        }
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        channel_options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *options]
        if tls or tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert)
            )
            self.channel = self._channels.secure_channel(self.address, creds, options=channel_options)
        else:
            self.channel = self._channels.insecure_channel(self.address, options=channel_options)
        self.stub = pb_grpc.SearchServiceStub(self.channel)

    def _invoke(self, method: str, request, decode: Callable[[Any], T], timeout: float | None) -> T:
        """Sends request to method and returns decode(response) (or, on an async client, an awaitable of it)."""
        raise NotImplementedError

    def _rpc(self, method: str):
        """The stub's callable for "Search" (SearchService) or "Health/Check" (the health service)."""
        if method.startswith("Health/"):
            from grpc_health.v1 import health_pb2_grpc

            return getattr(health_pb2_grpc.HealthStub(self.channel), method.removeprefix("Health/"))
        return getattr(self.stub, method)

    # -- documents -----------------------------------------------------------------------------------
    def upsert(self, documents: Iterable[DocumentLike], collection: str = "", timeout: float | None = None) -> int:
        """Stores documents, replacing any with the same id; all or nothing. Returns the count."""
        request = pb.UpsertRequest(collection=collection, documents=[to_pb_document(d) for d in documents])
        return self._invoke("Upsert", request, lambda r: r.upserted_count, timeout)

    def upsert_stream(
        self, batches: Iterable[Iterable[DocumentLike]], collection: str = "", timeout: float | None = None
    ) -> int:
        """Streams batches over one UpsertStream call; each batch is applied all-or-nothing.

        Returns the number of documents stored by the whole stream.
        """
        requests = (
            pb.UpsertRequest(collection=collection, documents=[to_pb_document(d) for d in batch]) for batch in batches
        )
        return self._invoke("UpsertStream", requests, lambda r: r.upserted_count, timeout)

    def delete(
        self,
        ids: Sequence[str] = (),
        collection: str = "",
        timeout: float | None = None,
        where: FilterLike | None = None,
    ) -> int:
        """Deletes by id (unknown ids are not counted), or every document `where` matches (atomically)."""
        request = pb.DeleteRequest(collection=collection, ids=list(ids))
        _set_where(request, where)
        return self._invoke("Delete", request, lambda r: r.deleted_count, timeout)

    def get(self, ids: Sequence[str], collection: str = "", timeout: float | None = None) -> list[Document]:
        """Found documents, in request order; unknown ids are left out."""
        request = pb.GetRequest(collection=collection, ids=list(ids))
        return self._invoke("Get", request, lambda r: [_document(d) for d in r.documents], timeout)

    def count(self, collection: str = "", where: FilterLike | None = None, timeout: float | None = None) -> int:
        """How many documents `where` matches (every document without it); exact."""
        request = pb.CountRequest(collection=collection)
        _set_where(request, where)
        return self._invoke("Count", request, lambda r: r.count, timeout)

    def scroll(
        self,
        collection: str = "",
        where: FilterLike | None = None,
        limit: int = 0,
        cursor: str = "",
        timeout: float | None = None,
    ) -> Page:
        """One page of documents in ascending id order; pass ``page.next_cursor`` for the next ('' at the end).

        Args:
            limit: documents per page (0: 100; at most 10,000).
        """
        request = pb.ScrollRequest(collection=collection, limit=limit, cursor=cursor)
        _set_where(request, where)
        return self._invoke(
            "Scroll", request, lambda r: Page([_document(d) for d in r.documents], r.next_cursor), timeout
        )

    def update_attributes(
        self,
        ids: Sequence[str] = (),
        set: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        collection: str = "",
        where: FilterLike | None = None,
        timeout: float | None = None,
    ) -> int:
        """Sets (adds or replaces) and removes attributes of the documents chosen by ids or by `where`,
        atomically; texts and vectors stay as they are. Returns how many documents changed."""
        request = pb.UpdateAttributesRequest(
            collection=collection,
            ids=list(ids),
            set={key: to_pb_value(value) for key, value in (set or {}).items()},
            unset=list(unset),
        )
        _set_where(request, where)
        return self._invoke("UpdateAttributes", request, lambda r: r.updated_count, timeout)

    # -- search ----------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        collection: str = "",
        top_k: int = 10,
        min_score: float = 0.0,
        filter: Mapping[str, str] | None = None,
        timeout: float | None = None,
        mode: str | None = None,
        fusion: str | None = None,
        dense_weight: float = 0.0,
        rrf_k: int = 0,
        where: FilterLike | None = None,
    ) -> list[Hit]:
        """Best documents for `query`, best first, among those the filters match.

        Args:
            filter: the old exact-match filter (every key with exactly this string); AND-ed with where.
            where: a typed filter: its text form (``'year >= 2020 and lang in ["en", "de"]'``), a tree from
                semsearch.filters, or a mapping.
            mode: "dense" (cosine of embeddings), "lexical" (BM25), "hybrid" (both, fused), or None for
                the collection's default_mode.
            fusion, dense_weight, rrf_k: hybrid only; "weighted" or "rrf"; 0/None mean the server's default.
        """
        request = pb.SearchRequest(
            collection=collection,
            query=query,
            top_k=top_k,
            min_score=min_score,
            filter=dict(filter or {}),
            mode=_mode(mode),
            hybrid=_hybrid(fusion, dense_weight, rrf_k),
        )
        _set_where(request, where)
        return self._invoke("Search", request, lambda r: [_hit(h) for h in r.hits], timeout)

    def batch_search(
        self,
        queries: Sequence[str],
        collection: str = "",
        top_k: int = 10,
        min_score: float = 0.0,
        filter: Mapping[str, str] | None = None,
        timeout: float | None = None,
        mode: str | None = None,
        fusion: str | None = None,
        dense_weight: float = 0.0,
        rrf_k: int = 0,
        where: FilterLike | None = None,
    ) -> list[list[Hit]]:
        """One result list per query, in order; the options are Search's."""
        request = pb.BatchSearchRequest(
            collection=collection,
            queries=list(queries),
            top_k=top_k,
            min_score=min_score,
            filter=dict(filter or {}),
            mode=_mode(mode),
            hybrid=_hybrid(fusion, dense_weight, rrf_k),
        )
        _set_where(request, where)
        return self._invoke(
            "BatchSearch", request, lambda r: [[_hit(h) for h in result.hits] for result in r.results], timeout
        )

    def embed(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """The server's L2-normalised embeddings, shape (len(texts), dimension)."""

        def decode(response: pb.EmbedResponse) -> np.ndarray:
            import numpy as np

            return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(
                len(texts), response.dimension
            )

        return self._invoke("Embed", pb.EmbedRequest(texts=list(texts)), decode, timeout)

    def explain(
        self,
        query: str,
        doc_id: str | None = None,
        doc_text: str | None = None,
        collection: str = "",
        granularity: str = "word",
        include_attention: bool = False,
        attention_layer: int = -1,
        attention_head: int = -1,
        timeout: float | None = None,
        mode: str | None = None,
        fusion: str | None = None,
        dense_weight: float = 0.0,
        rrf_k: int = 0,
        top_k: int = 0,
        filter: Mapping[str, str] | None = None,
        where: FilterLike | None = None,
    ) -> ExplainResult:
        """Why `query` matches a stored document (`doc_id`) or any text (`doc_text`).

        With doc_id, the result's `ranking` has BM25 term by term and the fusion's inputs; with top_k
        (the k searched with) also where the document ranks for this query, mode and filter, and the
        score of the top_k-th hit: the bar it had to clear.
        """
        if (doc_id is None) == (doc_text is None):
            raise ValueError("give exactly one of doc_id and doc_text")
        if granularity not in _GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(_GRANULARITIES)}")
        request = pb.ExplainRequest(
            collection=collection,
            query=query,
            granularity=_GRANULARITIES[granularity],
            include_attention=include_attention,
            attention_layer=attention_layer,
            attention_head=attention_head,
            mode=_mode(mode),
            hybrid=_hybrid(fusion, dense_weight, rrf_k),
            top_k=top_k,
            filter=dict(filter or {}),
        )
        if doc_id is not None:
            request.doc_id = doc_id
        else:
            request.doc_text = doc_text
        _set_where(request, where)
        return self._invoke("Explain", request, lambda r: _explain_result(r, doc_id is not None, top_k), timeout)

    # -- collections and the server ------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        index: str = "flat",
        hnsw_m: int = 0,
        hnsw_ef_construction: int = 0,
        hnsw_ef_search: int = 0,
        ivf_nlist: int = 0,
        ivf_nprobe: int = 0,
        timeout: float | None = None,
        passages: bool = True,
        window_tokens: int = 0,
        overlap_tokens: int = 0,
        default_mode: str | None = None,
        exist_ok: bool = False,
    ) -> pb.CollectionInfo:
        """Creates a collection; `index` is flat (exact), hnsw or ivf; 0 parameters mean server defaults.

        Args:
            passages: split texts longer than the window into overlapping token windows (a document
                scores as its best passage); False keeps one vector per document, truncated.
            window_tokens, overlap_tokens: the windows (0: the server's defaults).
            default_mode: the mode of a Search that names none ("dense" unless set).
            exist_ok: get or create: an existing collection of this name is returned (with its own
                settings) instead of AlreadyExistsError.
        """
        if index not in _INDEX_KINDS:
            raise ValueError(f"index must be one of {', '.join(_INDEX_KINDS)}")
        config = pb.IndexConfig(
            kind=_INDEX_KINDS[index],
            hnsw=pb.HnswParams(m=hnsw_m, ef_construction=hnsw_ef_construction, ef_search=hnsw_ef_search),
            ivf=pb.IvfParams(nlist=ivf_nlist, nprobe=ivf_nprobe),
        )
        request = pb.CreateCollectionRequest(
            name=name,
            index=config,
            passages=pb.PassageConfig(
                mode=pb.PASSAGE_MODE_ON if passages else pb.PASSAGE_MODE_OFF,
                window_tokens=window_tokens,
                overlap_tokens=overlap_tokens,
            ),
            default_mode=_mode(default_mode),
            exist_ok=exist_ok,
        )
        return self._invoke("CreateCollection", request, lambda r: r.collection, timeout)

    def list_collections(self, timeout: float | None = None) -> list[pb.CollectionInfo]:
        return self._invoke("ListCollections", pb.ListCollectionsRequest(), lambda r: list(r.collections), timeout)

    def delete_collection(self, name: str, timeout: float | None = None) -> None:
        return self._invoke("DeleteCollection", pb.DeleteCollectionRequest(name=name), lambda r: None, timeout)

    def reindex(self, collection: str = "", timeout: float | None = None) -> int:
        request = pb.ReindexRequest(collection=collection)
        return self._invoke("Reindex", request, lambda r: r.reindexed_count, timeout)

    # -- aliases -------------------------------------------------------------------------------------
    def set_alias(self, alias: str, collection: str, timeout: float | None = None) -> str:
        """Points alias at collection (creates it, or repoints it atomically); every call that takes a
        collection accepts the alias. Returns the collection it named before ('' when new)."""
        request = pb.SetAliasRequest(alias=alias, collection=collection)
        return self._invoke("SetAlias", request, lambda r: r.previous_collection, timeout)

    def delete_alias(self, alias: str, timeout: float | None = None) -> None:
        return self._invoke("DeleteAlias", pb.DeleteAliasRequest(alias=alias), lambda r: None, timeout)

    def list_aliases(self, timeout: float | None = None) -> dict[str, str]:
        """alias -> the collection it names."""
        return self._invoke(
            "ListAliases", pb.ListAliasesRequest(), lambda r: {a.alias: a.collection for a in r.aliases}, timeout
        )

    # -- snapshots (local store) --------------------------------------------------------------------
    def create_snapshot(self, collection: str = "", timeout: float | None = None) -> pb.Snapshot:
        """A consistent point-in-time copy of a collection, as one file in the server's snapshots folder."""
        request = pb.CreateSnapshotRequest(collection=collection)
        return self._invoke("CreateSnapshot", request, lambda r: r.snapshot, timeout)

    def list_snapshots(self, collection: str = "", timeout: float | None = None) -> list[pb.Snapshot]:
        """The snapshots of one collection (or alias), oldest first; every snapshot when collection is ''."""
        request = pb.ListSnapshotsRequest(collection=collection)
        return self._invoke("ListSnapshots", request, lambda r: list(r.snapshots), timeout)

    def delete_snapshot(self, name: str, timeout: float | None = None) -> None:
        return self._invoke("DeleteSnapshot", pb.DeleteSnapshotRequest(name=name), lambda r: None, timeout)

    def restore_snapshot(self, name: str, collection: str, timeout: float | None = None) -> pb.CollectionInfo:
        """Builds the new collection `collection` from snapshot `name`; returns its info."""
        request = pb.RestoreSnapshotRequest(name=name, collection=collection)
        return self._invoke("RestoreSnapshot", request, lambda r: r.collection, timeout)

    def info(self, timeout: float | None = None) -> pb.GetInfoResponse:
        return self._invoke("GetInfo", pb.GetInfoRequest(), lambda r: r, timeout)

    def health(self, service: str = _HEALTH_SERVICE, timeout: float | None = None) -> str:
        """The standard health service's status for `service`: SERVING, NOT_SERVING, ..."""
        from grpc_health.v1 import health_pb2

        request = health_pb2.HealthCheckRequest(service=service)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name
        return self._invoke("Health/Check", request, lambda r: name(r.status), timeout)


def _explain_result(r: pb.ExplainResponse, stored: bool, top_k: int) -> ExplainResult:
    def segments(items) -> list[Segment]:
        return [Segment(s.text, s.start, s.end, s.contribution, s.special) for s in items]

    import numpy as np

    shape = (r.rows, r.cols)
    return ExplainResult(
        score=r.score,
        query_segments=segments(r.query_segments),
        doc_segments=segments(r.doc_segments),
        pair_contributions=np.asarray(r.pair_contributions, dtype=np.float64).reshape(shape),
        cross_attention=np.asarray(r.cross_attention, dtype=np.float64).reshape(shape),
        query_self_attention=_matrix(r.query_self_attention, r.query_self_attention_size),
        doc_self_attention=_matrix(r.doc_self_attention, r.doc_self_attention_size),
        attention_layer=r.attention_layer,
        attention_head=r.attention_head,
        query_truncated=r.query_truncated,
        doc_truncated=r.doc_truncated,
        index_score=r.index_score,
        notes=list(r.notes),
        ranking=_ranking(r, top_k) if stored else None,
    )


class SearchClient(SearchApi):
    """A connection to a semsearch server (blocking calls; semsearch.AsyncSearchClient is the asyncio twin).

    Args:
        address: host:port (default ``SEMSEARCH_ADDRESS`` or localhost:50051).
        timeout: default deadline in seconds for every call (each method takes ``timeout=`` to override).
        api_key: sent as ``authorization: Bearer <key>`` (default ``SEMSEARCH_API_KEY``).
        tls_ca: PEM file of the CA that signed the server's certificate; turns TLS on.
        tls: use TLS with the system's roots.
        tls_cert, tls_key: client certificate and key for mTLS.
        options: extra gRPC channel options.

    The raw stub stays reachable as ``client.stub``. Use as a context manager to close the channel.
    """

    _channels = grpc

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _invoke(self, method: str, request, decode: Callable[[Any], T], timeout: float | None) -> T:
        try:
            response = self._rpc(method)(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return decode(response)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def _ranking(r: pb.ExplainResponse, top_k: int) -> Ranking:
    return Ranking(
        mode=_MODE_NAMES.get(r.mode, "dense"),
        rank=r.rank,
        top_k=top_k,
        kth_score=r.kth_score,
        dense_score=r.dense_score,
        lexical_score=r.lexical_score,
        lexical_terms=[
            LexicalTerm(t.term, t.contribution, t.query_text, t.term_frequency, t.document_frequency)
            for t in r.lexical_terms
        ],
        passage=Passage(r.passage.index, r.passage.start, r.passage.end) if r.HasField("passage") else None,
        fusion=_FUSION_NAMES.get(r.fusion, ""),
        dense_weight=r.dense_weight,
        dense_min=r.dense_min,
        dense_max=r.dense_max,
        lexical_max=r.lexical_max,
        rrf_k=r.rrf_k,
        dense_rank=r.dense_rank,
        lexical_rank=r.lexical_rank,
        excluded_by=r.excluded_by,
    )
