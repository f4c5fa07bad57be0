"""SearchClient: every semsearch RPC with a default timeout, typed results and the client's own exceptions."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from semsearch.errors import from_rpc_error
from semsearch.types import Document, ExplainResult, Hit, LexicalTerm, Passage, Ranking, Segment
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


def _translate_errors(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return wrapper


def to_pb_document(doc: DocumentLike) -> pb.Document:
    """Accepts a Document, a pb.Document, a mapping with id/text/metadata, or an (id, text[, metadata]) tuple."""
    if isinstance(doc, pb.Document):
        return doc
    if isinstance(doc, Document):
        return pb.Document(id=doc.id, text=doc.text, metadata=dict(doc.metadata))
    if isinstance(doc, Mapping):
        return pb.Document(id=str(doc["id"]), text=str(doc["text"]), metadata=dict(doc.get("metadata") or {}))
    if isinstance(doc, tuple) and len(doc) in (2, 3):
        return pb.Document(id=doc[0], text=doc[1], metadata=dict(doc[2]) if len(doc) == 3 else {})
    raise TypeError(f"cannot make a document of {doc!r}: give a Document, a mapping, or (id, text[, metadata])")


def _hit(h: pb.Hit) -> Hit:
    return Hit(
        id=h.id,
        score=h.score,
        text=h.text,
        metadata=dict(h.metadata),
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


class SearchClient:
    """A connection to a semsearch server.

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
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        channel_options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *options]
        if tls or tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert)
            )
            self.channel = grpc.secure_channel(self.address, creds, options=channel_options)
        else:
            self.channel = grpc.insecure_channel(self.address, options=channel_options)
        self.stub = pb_grpc.SearchServiceStub(self.channel)

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, rpc, request, timeout: float | None):
        return rpc(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)

    # -- documents -----------------------------------------------------------------------------------
    @_translate_errors
    def upsert(self, documents: Iterable[DocumentLike], collection: str = "", timeout: float | None = None) -> int:
        """Stores documents, replacing any with the same id; all or nothing. Returns the count."""
        request = pb.UpsertRequest(collection=collection, documents=[to_pb_document(d) for d in documents])
        return self._call(self.stub.Upsert, request, timeout).upserted_count

    @_translate_errors
    def upsert_stream(
        self, batches: Iterable[Iterable[DocumentLike]], collection: str = "", timeout: float | None = None
    ) -> int:
        """Streams batches over one UpsertStream call; each batch is applied all-or-nothing.

        Returns the number of documents stored by the whole stream.
        """
        requests = (
            pb.UpsertRequest(collection=collection, documents=[to_pb_document(d) for d in batch]) for batch in batches
        )
        return self._call(self.stub.UpsertStream, requests, timeout).upserted_count

    @_translate_errors
    def delete(self, ids: Sequence[str], collection: str = "", timeout: float | None = None) -> int:
        return self._call(
            self.stub.Delete, pb.DeleteRequest(collection=collection, ids=list(ids)), timeout
        ).deleted_count

    @_translate_errors
    def get(self, ids: Sequence[str], collection: str = "", timeout: float | None = None) -> list[Document]:
        """Found documents, in request order; unknown ids are left out."""
        response = self._call(self.stub.Get, pb.GetRequest(collection=collection, ids=list(ids)), timeout)
        return [Document(id=d.id, text=d.text, metadata=dict(d.metadata)) for d in response.documents]

    # -- search ----------------------------------------------------------------------------------------
    @_translate_errors
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
    ) -> list[Hit]:
        """Best documents for `query`, best first; `filter` keeps exact metadata matches.

        Args:
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
        return [_hit(h) for h in self._call(self.stub.Search, request, timeout).hits]

    @_translate_errors
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
        return [[_hit(h) for h in r.hits] for r in self._call(self.stub.BatchSearch, request, timeout).results]

    @_translate_errors
    def embed(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """The server's L2-normalised embeddings, shape (len(texts), dimension)."""
        response = self._call(self.stub.Embed, pb.EmbedRequest(texts=list(texts)), timeout)
        import numpy as np

        return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(
            len(texts), response.dimension
        )

    @_translate_errors
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
        r = self._call(self.stub.Explain, request, timeout)

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
            ranking=_ranking(r, top_k) if doc_id is not None else None,
        )

    # -- collections and the server ------------------------------------------------------------------
    @_translate_errors
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
    ) -> pb.CollectionInfo:
        """Creates a collection; `index` is flat (exact), hnsw or ivf; 0 parameters mean server defaults.

        Args:
            passages: split texts longer than the window into overlapping token windows (a document
                scores as its best passage); False keeps one vector per document, truncated.
            window_tokens, overlap_tokens: the windows (0: the server's defaults).
            default_mode: the mode of a Search that names none ("dense" unless set).
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
        )
        return self._call(self.stub.CreateCollection, request, timeout).collection

    @_translate_errors
    def list_collections(self, timeout: float | None = None) -> list[pb.CollectionInfo]:
        return list(self._call(self.stub.ListCollections, pb.ListCollectionsRequest(), timeout).collections)

    @_translate_errors
    def delete_collection(self, name: str, timeout: float | None = None) -> None:
        self._call(self.stub.DeleteCollection, pb.DeleteCollectionRequest(name=name), timeout)

    @_translate_errors
    def reindex(self, collection: str = "", timeout: float | None = None) -> int:
        return self._call(self.stub.Reindex, pb.ReindexRequest(collection=collection), timeout).reindexed_count

    @_translate_errors
    def info(self, timeout: float | None = None) -> pb.GetInfoResponse:
        return self._call(self.stub.GetInfo, pb.GetInfoRequest(), timeout)

    @_translate_errors
    def health(self, service: str = _HEALTH_SERVICE, timeout: float | None = None) -> str:
        """The standard health service's status for `service`: SERVING, NOT_SERVING, ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout if timeout is None else timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


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
    )
