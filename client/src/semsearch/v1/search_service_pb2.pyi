import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_EQ: _ClassVar[Operator]
    OPERATOR_NE: _ClassVar[Operator]
    OPERATOR_LT: _ClassVar[Operator]
    OPERATOR_LTE: _ClassVar[Operator]
    OPERATOR_GT: _ClassVar[Operator]
    OPERATOR_GTE: _ClassVar[Operator]
    OPERATOR_IN: _ClassVar[Operator]
    OPERATOR_NOT_IN: _ClassVar[Operator]
    OPERATOR_EXISTS: _ClassVar[Operator]
    OPERATOR_CONTAINS: _ClassVar[Operator]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_LEXICAL: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_WEIGHTED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]

class PassageMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PASSAGE_MODE_UNSPECIFIED: _ClassVar[PassageMode]
    PASSAGE_MODE_ON: _ClassVar[PassageMode]
    PASSAGE_MODE_OFF: _ClassVar[PassageMode]

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_WORD: _ClassVar[Granularity]
    GRANULARITY_TOKEN: _ClassVar[Granularity]

class IndexKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_KIND_UNSPECIFIED: _ClassVar[IndexKind]
    INDEX_KIND_FLAT: _ClassVar[IndexKind]
    INDEX_KIND_HNSW: _ClassVar[IndexKind]
    INDEX_KIND_IVF: _ClassVar[IndexKind]

class CollectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTION_STATE_UNSPECIFIED: _ClassVar[CollectionState]
    COLLECTION_STATE_READY: _ClassVar[CollectionState]
    COLLECTION_STATE_FAILED: _ClassVar[CollectionState]
OPERATOR_UNSPECIFIED: Operator
OPERATOR_EQ: Operator
OPERATOR_NE: Operator
OPERATOR_LT: Operator
OPERATOR_LTE: Operator
OPERATOR_GT: Operator
OPERATOR_GTE: Operator
OPERATOR_IN: Operator
OPERATOR_NOT_IN: Operator
OPERATOR_EXISTS: Operator
OPERATOR_CONTAINS: Operator
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_LEXICAL: SearchMode
SEARCH_MODE_HYBRID: SearchMode
FUSION_UNSPECIFIED: Fusion
FUSION_WEIGHTED: Fusion
FUSION_RRF: Fusion
PASSAGE_MODE_UNSPECIFIED: PassageMode
PASSAGE_MODE_ON: PassageMode
PASSAGE_MODE_OFF: PassageMode
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_WORD: Granularity
GRANULARITY_TOKEN: Granularity
INDEX_KIND_UNSPECIFIED: IndexKind
INDEX_KIND_FLAT: IndexKind
INDEX_KIND_HNSW: IndexKind
INDEX_KIND_IVF: IndexKind
COLLECTION_STATE_UNSPECIFIED: CollectionState
COLLECTION_STATE_READY: CollectionState
COLLECTION_STATE_FAILED: CollectionState

class Value(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value", "timestamp_value", "list_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    timestamp_value: _timestamp_pb2.Timestamp
    list_value: ValueList
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., list_value: _Optional[_Union[ValueList, _Mapping]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("field", "op", "value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    op: Operator
    value: Value
    def __init__(self, field: _Optional[str] = ..., op: _Optional[_Union[Operator, str]] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class FilterList(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("condition", "all", "any", "expression")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    NOT_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    condition: Condition
    all: FilterList
    any: FilterList
    expression: str
    def __init__(self, condition: _Optional[_Union[Condition, _Mapping]] = ..., all: _Optional[_Union[FilterList, _Mapping]] = ..., any: _Optional[_Union[FilterList, _Mapping]] = ..., expression: _Optional[str] = ..., **kwargs) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "attributes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _containers.ScalarMap[str, str]
    attributes: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., attributes: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "text", "metadata", "dense_score", "lexical_score", "passage", "attributes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    PASSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    text: str
    metadata: _containers.ScalarMap[str, str]
    dense_score: float
    lexical_score: float
    passage: Passage
    attributes: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., dense_score: _Optional[float] = ..., lexical_score: _Optional[float] = ..., passage: _Optional[_Union[Passage, _Mapping]] = ..., attributes: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Passage(_message.Message):
    __slots__ = ("index", "start", "end")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    index: int
    start: int
    end: int
    def __init__(self, index: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class HybridParams(_message.Message):
    __slots__ = ("fusion", "dense_weight", "rrf_k")
    FUSION_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    fusion: Fusion
    dense_weight: float
    rrf_k: int
    def __init__(self, fusion: _Optional[_Union[Fusion, str]] = ..., dense_weight: _Optional[float] = ..., rrf_k: _Optional[int] = ...) -> None: ...

class PassageConfig(_message.Message):
    __slots__ = ("mode", "window_tokens", "overlap_tokens")
    MODE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    mode: PassageMode
    window_tokens: int
    overlap_tokens: int
    def __init__(self, mode: _Optional[_Union[PassageMode, str]] = ..., window_tokens: _Optional[int] = ..., overlap_tokens: _Optional[int] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted_count",)
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    def __init__(self, upserted_count: _Optional[int] = ...) -> None: ...

class UpsertStreamResponse(_message.Message):
    __slots__ = ("upserted_count",)
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    def __init__(self, upserted_count: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "where")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    where: Filter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "min_score", "filter", "mode", "hybrid", "where")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    top_k: int
    min_score: float
    filter: _containers.ScalarMap[str, str]
    mode: SearchMode
    hybrid: HybridParams
    where: Filter
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., filter: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., hybrid: _Optional[_Union[HybridParams, _Mapping]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "top_k", "min_score", "filter", "mode", "hybrid", "where")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    min_score: float
    filter: _containers.ScalarMap[str, str]
    mode: SearchMode
    hybrid: HybridParams
    where: Filter
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., filter: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., hybrid: _Optional[_Union[HybridParams, _Mapping]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("collection", "query", "doc_id", "doc_text", "granularity", "include_attention", "attention_layer", "attention_head", "mode", "hybrid", "top_k", "filter", "where")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOC_ID_FIELD_NUMBER: _ClassVar[int]
    DOC_TEXT_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYER_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_HEAD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    doc_id: str
    doc_text: str
    granularity: Granularity
    include_attention: bool
    attention_layer: int
    attention_head: int
    mode: SearchMode
    hybrid: HybridParams
    top_k: int
    filter: _containers.ScalarMap[str, str]
    where: Filter
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., doc_id: _Optional[str] = ..., doc_text: _Optional[str] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., include_attention: _Optional[bool] = ..., attention_layer: _Optional[int] = ..., attention_head: _Optional[int] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., hybrid: _Optional[_Union[HybridParams, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Mapping[str, str]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class LexicalTerm(_message.Message):
    __slots__ = ("term", "contribution", "query_text", "term_frequency", "document_frequency")
    TERM_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_TEXT_FIELD_NUMBER: _ClassVar[int]
    TERM_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    term: str
    contribution: float
    query_text: str
    term_frequency: int
    document_frequency: int
    def __init__(self, term: _Optional[str] = ..., contribution: _Optional[float] = ..., query_text: _Optional[str] = ..., term_frequency: _Optional[int] = ..., document_frequency: _Optional[int] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("text", "start", "end", "contribution", "special")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_FIELD_NUMBER: _ClassVar[int]
    text: str
    start: int
    end: int
    contribution: float
    special: bool
    def __init__(self, text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., contribution: _Optional[float] = ..., special: _Optional[bool] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("score", "query_segments", "doc_segments", "pair_contributions", "rows", "cols", "cross_attention", "query_self_attention", "query_self_attention_size", "doc_self_attention", "doc_self_attention_size", "attention_layer", "attention_head", "query_truncated", "doc_truncated", "index_score", "notes", "rank", "kth_score", "lexical_terms", "dense_score", "lexical_score", "dense_weight", "passage", "mode", "fusion", "dense_min", "dense_max", "lexical_max", "rrf_k", "dense_rank", "lexical_rank", "excluded_by")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    QUERY_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DOC_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PAIR_CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    CROSS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_SELF_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_SELF_ATTENTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    DOC_SELF_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    DOC_SELF_ATTENTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYER_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_HEAD_FIELD_NUMBER: _ClassVar[int]
    QUERY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DOC_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    INDEX_SCORE_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    KTH_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_TERMS_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PASSAGE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    DENSE_MIN_FIELD_NUMBER: _ClassVar[int]
    DENSE_MAX_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_MAX_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    DENSE_RANK_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_RANK_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_BY_FIELD_NUMBER: _ClassVar[int]
    score: float
    query_segments: _containers.RepeatedCompositeFieldContainer[Segment]
    doc_segments: _containers.RepeatedCompositeFieldContainer[Segment]
    pair_contributions: _containers.RepeatedScalarFieldContainer[float]
    rows: int
    cols: int
    cross_attention: _containers.RepeatedScalarFieldContainer[float]
    query_self_attention: _containers.RepeatedScalarFieldContainer[float]
    query_self_attention_size: int
    doc_self_attention: _containers.RepeatedScalarFieldContainer[float]
    doc_self_attention_size: int
    attention_layer: int
    attention_head: int
    query_truncated: bool
    doc_truncated: bool
    index_score: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    rank: int
    kth_score: float
    lexical_terms: _containers.RepeatedCompositeFieldContainer[LexicalTerm]
    dense_score: float
    lexical_score: float
    dense_weight: float
    passage: Passage
    mode: SearchMode
    fusion: Fusion
    dense_min: float
    dense_max: float
    lexical_max: float
    rrf_k: int
    dense_rank: int
    lexical_rank: int
    excluded_by: str
    def __init__(self, score: _Optional[float] = ..., query_segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., doc_segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., pair_contributions: _Optional[_Iterable[float]] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., cross_attention: _Optional[_Iterable[float]] = ..., query_self_attention: _Optional[_Iterable[float]] = ..., query_self_attention_size: _Optional[int] = ..., doc_self_attention: _Optional[_Iterable[float]] = ..., doc_self_attention_size: _Optional[int] = ..., attention_layer: _Optional[int] = ..., attention_head: _Optional[int] = ..., query_truncated: _Optional[bool] = ..., doc_truncated: _Optional[bool] = ..., index_score: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ..., rank: _Optional[int] = ..., kth_score: _Optional[float] = ..., lexical_terms: _Optional[_Iterable[_Union[LexicalTerm, _Mapping]]] = ..., dense_score: _Optional[float] = ..., lexical_score: _Optional[float] = ..., dense_weight: _Optional[float] = ..., passage: _Optional[_Union[Passage, _Mapping]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., dense_min: _Optional[float] = ..., dense_max: _Optional[float] = ..., lexical_max: _Optional[float] = ..., rrf_k: _Optional[int] = ..., dense_rank: _Optional[int] = ..., lexical_rank: _Optional[int] = ..., excluded_by: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dimension")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dimension: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dimension: _Optional[int] = ...) -> None: ...

class HnswParams(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class IvfParams(_message.Message):
    __slots__ = ("nlist", "nprobe")
    NLIST_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    nlist: int
    nprobe: int
    def __init__(self, nlist: _Optional[int] = ..., nprobe: _Optional[int] = ...) -> None: ...

class IndexConfig(_message.Message):
    __slots__ = ("kind", "hnsw", "ivf")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    IVF_FIELD_NUMBER: _ClassVar[int]
    kind: IndexKind
    hnsw: HnswParams
    ivf: IvfParams
    def __init__(self, kind: _Optional[_Union[IndexKind, str]] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., ivf: _Optional[_Union[IvfParams, _Mapping]] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "document_count", "index", "state", "status_message", "index_trained", "passages", "default_mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_TRAINED_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    document_count: int
    index: IndexConfig
    state: CollectionState
    status_message: str
    index_trained: bool
    passages: PassageConfig
    default_mode: SearchMode
    def __init__(self, name: _Optional[str] = ..., document_count: _Optional[int] = ..., index: _Optional[_Union[IndexConfig, _Mapping]] = ..., state: _Optional[_Union[CollectionState, str]] = ..., status_message: _Optional[str] = ..., index_trained: _Optional[bool] = ..., passages: _Optional[_Union[PassageConfig, _Mapping]] = ..., default_mode: _Optional[_Union[SearchMode, str]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "index", "passages", "default_mode", "exist_ok")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODE_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: IndexConfig
    passages: PassageConfig
    default_mode: SearchMode
    exist_ok: bool
    def __init__(self, name: _Optional[str] = ..., index: _Optional[_Union[IndexConfig, _Mapping]] = ..., passages: _Optional[_Union[PassageConfig, _Mapping]] = ..., default_mode: _Optional[_Union[SearchMode, str]] = ..., exist_ok: _Optional[bool] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_text_chars", "max_documents_per_request", "max_top_k", "max_ids_per_request", "max_message_bytes", "collection_name_pattern", "max_metadata_entries", "max_metadata_key_chars", "max_metadata_value_chars", "max_queries_per_request", "max_id_chars")
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_IDS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_NAME_PATTERN_FIELD_NUMBER: _ClassVar[int]
    MAX_METADATA_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_METADATA_KEY_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_METADATA_VALUE_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERIES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_ID_CHARS_FIELD_NUMBER: _ClassVar[int]
    max_text_chars: int
    max_documents_per_request: int
    max_top_k: int
    max_ids_per_request: int
    max_message_bytes: int
    collection_name_pattern: str
    max_metadata_entries: int
    max_metadata_key_chars: int
    max_metadata_value_chars: int
    max_queries_per_request: int
    max_id_chars: int
    def __init__(self, max_text_chars: _Optional[int] = ..., max_documents_per_request: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_ids_per_request: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., collection_name_pattern: _Optional[str] = ..., max_metadata_entries: _Optional[int] = ..., max_metadata_key_chars: _Optional[int] = ..., max_metadata_value_chars: _Optional[int] = ..., max_queries_per_request: _Optional[int] = ..., max_id_chars: _Optional[int] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("model_id", "dimension", "collections", "server_version", "backend", "max_seq_length", "pooling", "model_fingerprint", "limits")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    dimension: int
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    server_version: str
    backend: str
    max_seq_length: int
    pooling: str
    model_fingerprint: str
    limits: Limits
    def __init__(self, model_id: _Optional[str] = ..., dimension: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ..., server_version: _Optional[str] = ..., backend: _Optional[str] = ..., max_seq_length: _Optional[int] = ..., pooling: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("reindexed_count",)
    REINDEXED_COUNT_FIELD_NUMBER: _ClassVar[int]
    reindexed_count: int
    def __init__(self, reindexed_count: _Optional[int] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "where")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    where: Filter
    def __init__(self, collection: _Optional[str] = ..., where: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("collection", "where", "limit", "cursor")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    collection: str
    where: Filter
    limit: int
    cursor: str
    def __init__(self, collection: _Optional[str] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ScrollResponse(_message.Message):
    __slots__ = ("documents", "next_cursor")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    next_cursor: str
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class UpdateAttributesRequest(_message.Message):
    __slots__ = ("collection", "ids", "where", "set", "unset")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    UNSET_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    where: Filter
    set: _containers.MessageMap[str, Value]
    unset: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., set: _Optional[_Mapping[str, Value]] = ..., unset: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateAttributesResponse(_message.Message):
    __slots__ = ("updated_count",)
    UPDATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    updated_count: int
    def __init__(self, updated_count: _Optional[int] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("alias", "collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("alias", "collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("previous_collection",)
    PREVIOUS_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    previous_collection: str
    def __init__(self, previous_collection: _Optional[str] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("name", "collection", "created_at", "size_bytes", "document_count", "model_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    collection: str
    created_at: _timestamp_pb2.Timestamp
    size_bytes: int
    document_count: int
    model_id: str
    def __init__(self, name: _Optional[str] = ..., collection: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., document_count: _Optional[int] = ..., model_id: _Optional[str] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RestoreSnapshotRequest(_message.Message):
    __slots__ = ("name", "collection")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    collection: str
    def __init__(self, name: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class RestoreSnapshotResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...
