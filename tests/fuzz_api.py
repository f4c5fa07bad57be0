"""Property-based fuzzing of the gRPC API: random, well-typed requests for every RPC, built from the proto.

The request strategies walk the message descriptors of `semsearch.v1.SearchService`, so a new RPC or field
is fuzzed without touching this file: strings of any valid UTF-8 (empty, blank, at and one past every
length limit), integers at and past every limit and at the int32/int64 edges, NaN and infinities in float
fields, enum values the proto does not define, repeated fields with duplicates and maps with random keys.
Field names the service gives a meaning to (collection, ids, texts, metadata keys) also draw from small
pools of known values, so that many requests are accepted and reach the deep paths, not only validation.
UpsertStream gets streams of such messages, some cancelled half-way. Raw bytes that are not a valid
protobuf message, and messages one byte over the server's receive limit, are part of the corpus.

After each request `ApiFuzzer.check` asserts: the status is one the RPC documents (never UNKNOWN or
INTERNAL), the server still reports SERVING, and a refused request changed nothing (the document count of
every collection, every pooled document's text and metadata, and a canary document's score).

Used by tests/test_fuzz_api.py (a bounded, derandomized profile in `make test`) and by tests/fuzz_long.py
(`make fuzz`, the long run).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st
from semsearch.v1 import search_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"]
RPCS = tuple(m.name for m in SERVICE.methods)
FD = _descriptor.FieldDescriptor
OK = grpc.StatusCode.OK

# What each RPC may answer (API.md "Errors"). RESOURCE_EXHAUSTED (a message over the size limit) and
# UNAVAILABLE (loading, draining) apply to every RPC; the fuzzer sends to a loaded server, so UNAVAILABLE
# is not expected here and counts as a failure.
_EVERY_RPC = {OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
_IA, _NF, _AE, _FP = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
)
DOCUMENTED_CODES: dict[str, set[grpc.StatusCode]] = {
    "Upsert": {_IA, _NF, _FP},
    "UpsertStream": {_IA, _NF, _FP},
    "Delete": {_IA, _NF, _FP},
    "Get": {_IA, _NF, _FP},
    "Search": {_IA, _NF, _FP},
    "BatchSearch": {_IA, _NF, _FP},
    "Explain": {_IA, _NF, _FP},
    "Embed": {_IA},
    "CreateCollection": {_IA, _AE},
    "ListCollections": set(),
    "DeleteCollection": {_IA, _NF, _FP},
    "GetInfo": set(),
    "Reindex": {_IA, _NF, _FP},
    "Count": {_IA, _NF, _FP},
    "Scroll": {_IA, _NF, _FP},
    "UpdateAttributes": {_IA, _NF, _FP},
    "SetAlias": {_IA, _NF, _AE, _FP},
    "DeleteAlias": {_IA, _NF},
    "ListAliases": set(),
    # FAILED_PRECONDITION: the Milvus store leaves snapshots to milvus-backup.
    "CreateSnapshot": {_IA, _NF, _FP},
    "ListSnapshots": {_IA, _FP},
    "DeleteSnapshot": {_IA, _NF, _FP},
    "RestoreSnapshot": {_IA, _NF, _AE, _FP, grpc.StatusCode.DATA_LOSS},
}
DOCUMENTED_CODES = {rpc: codes | _EVERY_RPC for rpc, codes in DOCUMENTED_CODES.items()}
# Bytes that do not decode as the RPC's request message: refused as malformed input.
MALFORMED_CODE = grpc.StatusCode.INVALID_ARGUMENT

# Pools of meaningful values; the canary lives in CANARY_COLLECTION and is restored when an accepted
# request replaced or deleted it (refused ones must not touch it: that is what is checked).
CANARY_COLLECTION = "fz-canary"
CANARY_ID = "canary"
# Its metadata is out of the pools' reach, so that the filter below finds the canary and nothing else.
CANARY_MARK = {"canary-mark": "7f3a9c"}
CANARY = pb.Document(id=CANARY_ID, text="The canary sings in the coal mine.", metadata=CANARY_MARK)
CANARY_QUERY = "a bird singing underground"
COLLECTIONS = (CANARY_COLLECTION, "", "default", "fz-a", "fz-b", "fz-gone", "demo")
IDS = (CANARY_ID, "a", "b", "doc-1", "doc-2", "ünï", "x" * 40)
KEYS = ("role", "lang", "k", "tag")
VALUES = ("canary", "en", "v", "", "x")
SENTENCES = (
    "The canary sings in the coal mine.",
    "I drink water every morning",
    "Ein Hund läuft über die Straße",
    "🐦 birds ‍👩‍👩‍👧 families",
    "Treasury\x12s long-range plan",
    "form\x0cfeed and NUL\x00 inside",
    "a",
)
# RPCs that may change the state when accepted (after an accepted read, the state is not read again).
WRITES = frozenset(
    {
        "Upsert",
        "UpsertStream",
        "Delete",
        "UpdateAttributes",
        "CreateCollection",
        "DeleteCollection",
        "Reindex",
        "SetAlias",
        "DeleteAlias",
        "CreateSnapshot",
        "DeleteSnapshot",
        "RestoreSnapshot",
    }
)
# The canary's score is searched for (an embedding) after every call that names its collection, and
# after every SCORE_EVERY-th call whatever it named.
SCORE_EVERY = 50
# A collection whose document count grows past this is emptied of the fuzzer's documents, so that
# Reindex and exhaustive Explain stay quick over a long run.
MAX_DOCS_PER_COLLECTION = 64

# The server limits both fuzz profiles run with: smaller than the defaults (the same code paths), so
# that requests at and past them stay cheap to embed.
FUZZ_LIMITS = {
    "max_text_chars": 2_000,
    "max_documents_per_request": 32,
    "max_ids_per_request": 64,
    "max_queries_per_request": 8,
    "max_top_k": 100,
    "max_message_bytes": 1 << 20,
}

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)


@dataclass(frozen=True)
class ServerLimits:
    """The limits the server reports in GetInfo; the fuzzer aims at them and one past them."""

    numbers: tuple[int, ...]  # every numeric limit
    lengths: tuple[int, ...]  # string lengths at and past the character limits
    counts: tuple[int, ...]  # list lengths at and past the count limits
    max_message_bytes: int

    @classmethod
    def from_config(cls, limits: dict[str, int]) -> ServerLimits:
        """The limits a server started with these overrides of the defaults reports."""
        from semsearch_server.config import Limits

        configured = Limits(**limits)
        return cls.from_pb(pb.Limits(**{k: getattr(configured, k) for k in pb.Limits.DESCRIPTOR.fields_by_name}))

    @classmethod
    def from_pb(cls, limits: pb.Limits) -> ServerLimits:
        chars = [limits.max_text_chars, limits.max_id_chars, limits.max_metadata_key_chars]
        chars.append(limits.max_metadata_value_chars)
        counts = [limits.max_documents_per_request, limits.max_ids_per_request, limits.max_queries_per_request]
        counts.append(limits.max_metadata_entries)
        numbers = [limits.max_top_k, *chars, *counts]
        return cls(
            numbers=tuple(sorted({n + d for n in numbers for d in (-1, 0, 1)})),
            lengths=tuple(sorted({n + d for n in chars for d in (0, 1)})),
            counts=tuple(sorted({n + d for n in counts for d in (0, 1)})),
            max_message_bytes=limits.max_message_bytes,
        )


# -- strategies from the descriptors -------------------------------------------------------------------
# Every strategy comes in two kinds. Sane values are valid on their own (pooled names and ids, small
# numbers, defined enum values), so that a request of sane fields is usually accepted and reaches the
# deep paths; wild values are anything of the field's type. A request is sane, sane but for one wild
# field (so each kind of violation is met on its own), or wild throughout.
SANE_STRING = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz ABC-_0123456789"), min_size=1, max_size=12)
POOLS: dict[str, tuple[str, ...]] = {
    "collection": COLLECTIONS,
    "name": COLLECTIONS,
    "id": IDS,
    "ids": IDS,
    "doc_id": IDS,
    "query": SENTENCES,
    "queries": SENTENCES,
    "text": SENTENCES,
    "texts": SENTENCES,
    "doc_text": SENTENCES,
    "key": KEYS,
    "value": VALUES,
}


def _any_text(max_size: int = 24) -> st.SearchStrategy[str]:
    # Any valid UTF-8: every code point but the surrogates (which UTF-8 cannot encode).
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


def _long_text(lengths: Sequence[int]) -> st.SearchStrategy[str]:
    unit = st.sampled_from(("x", "é", "語", "🐦", " ", "\x00", "word "))
    return st.builds(lambda u, n: (u * n)[:n], unit, st.sampled_from(lengths))


def string_strategy(name: str, limits: ServerLimits, wild: bool) -> st.SearchStrategy[str]:
    pool = st.sampled_from(POOLS[name]) if name in POOLS else SANE_STRING
    if not wild:
        return pool
    odd = st.sampled_from(("", " ", "\t\n", "\x00", "\u200f", "e\u0301", "👩\u200d👩\u200d👧", "\U0010ffff", "../x"))
    return st.one_of(pool, _any_text(), odd, _long_text(limits.lengths))


def int_strategy(field: FD, limits: ServerLimits, wild: bool) -> st.SearchStrategy[int]:
    low, high = {
        FD.TYPE_INT64: INT64,
        FD.TYPE_SINT64: INT64,
        FD.TYPE_SFIXED64: INT64,
        FD.TYPE_UINT32: UINT32,
        FD.TYPE_FIXED32: UINT32,
        FD.TYPE_UINT64: UINT64,
        FD.TYPE_FIXED64: UINT64,
    }.get(field.type, INT32)
    if not wild:  # mostly 0, which means the default wherever the proto gives it a meaning
        return st.one_of(st.just(0), st.just(0), st.integers(1, 10))
    edges = [low, high, low + 1, high - 1, -2, -1, 0, 1, 2, 3, 4, 7, 8, 100_000, 100_001, 65_536, 65_537, 4096]
    edges += list(limits.numbers)
    return st.one_of(st.sampled_from([n for n in edges if low <= n <= high]), st.integers(low, high))


def float_strategy(field: FD, wild: bool) -> st.SearchStrategy[float]:
    if not wild:
        return st.sampled_from((0.0, 0.3, 0.5, 1.0))
    width = 32 if field.type == FD.TYPE_FLOAT else 64
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 1.0000001, -1.0000001, float("nan"), float("inf"), float("-inf")]
    return st.one_of(st.sampled_from(edges), st.floats(width=width, allow_nan=True, allow_infinity=True))


def enum_strategy(field: FD, wild: bool) -> st.SearchStrategy[int]:
    known = st.sampled_from([v.number for v in field.enum_type.values])
    # proto3 enums are open: a client built from a newer proto may send a value this server never heard of.
    return st.one_of(known, st.integers(*INT32)) if wild else known


def scalar_strategy(field: FD, limits: ServerLimits, wild: bool) -> st.SearchStrategy:
    if field.type == FD.TYPE_STRING:
        return string_strategy(field.name, limits, wild)
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return float_strategy(field, wild)
    if field.type == FD.TYPE_ENUM:
        return enum_strategy(field, wild)
    return int_strategy(field, limits, wild)


# Filters are a recursive message: walked like any other they nest without bound. They are drawn from
# a tree of at most FILTER_DEPTH levels over the fuzzer's keys and values, and from texts, valid and not.
FILTER_DEPTH = 3
FILTER_TEXTS = (
    'k == "v"',
    'role == "canary" or not exists(lang)',
    'lang in ["en", "x"] and k != ""',
    'tag contains "a"',
    "k >= 1",
    "k ==",
    "(((",
    "`` == 1",
    'k in "v"',
    "exists(k) and " * 8 + "true == true",
)


def filter_strategy(limits: ServerLimits, wild: bool) -> st.SearchStrategy[pb.Filter]:
    conditions = st.builds(
        lambda field, op, value: pb.Condition(field=field, op=op, value=value),
        st.one_of(st.sampled_from(KEYS), string_strategy("field", limits, True)) if wild else st.sampled_from(KEYS),
        st.one_of(st.sampled_from(list(pb.Operator.values())), st.integers(-1, 12))
        if wild
        else st.just(pb.OPERATOR_EQ),
        attribute_value_strategy(wild),
    )
    sane = st.builds(
        lambda field, op, value: pb.Filter(condition=pb.Condition(field=field, op=op, value=value)),
        st.sampled_from(KEYS),
        st.sampled_from(list(pb.Operator.values())),
        st.one_of(
            st.sampled_from(VALUES).map(lambda v: pb.Value(string_value=v)),
            st.integers(-3, 3).map(lambda v: pb.Value(int_value=v)),
            st.lists(st.sampled_from(VALUES), max_size=3).map(
                lambda vs: pb.Value(list_value=pb.ValueList(values=[pb.Value(string_value=v) for v in vs]))
            ),
        ),
    )
    leaves = st.one_of(
        sane,
        sane,
        conditions.map(lambda c: pb.Filter(condition=c)),
        st.sampled_from(FILTER_TEXTS).map(lambda text: pb.Filter(expression=text)),
        st.just(pb.Filter()),
    )

    def branches(children: st.SearchStrategy[pb.Filter]) -> st.SearchStrategy[pb.Filter]:
        lists = st.lists(children, max_size=3).map(lambda fs: pb.FilterList(filters=fs))
        negated = children.map(lambda f: pb.Filter(**{"not": f}))
        return st.one_of(lists.map(lambda fl: pb.Filter(all=fl)), lists.map(lambda fl: pb.Filter(any=fl)), negated)

    return st.recursive(leaves, branches, max_leaves=FILTER_DEPTH * 2)


def attribute_value_strategy(wild: bool) -> st.SearchStrategy[pb.Value]:
    """Values of every kind, a list of them; wild: also NaN, infinities, sub-microsecond and out-of-range
    timestamps, nested lists and an empty Value (a list nests at most once: the message is recursive)."""
    scalars = st.one_of(
        st.sampled_from(VALUES).map(lambda v: pb.Value(string_value=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.Value(int_value=v)),
        st.floats(allow_nan=wild, allow_infinity=wild).map(lambda v: pb.Value(double_value=v)),
        st.booleans().map(lambda v: pb.Value(bool_value=v)),
        st.builds(
            lambda seconds, micros: pb.Value(timestamp_value=Timestamp(seconds=seconds, nanos=micros * 1000)),
            st.integers(-62_135_596_800, 253_402_300_799),
            st.integers(0, 999_999),
        ),
    )
    if wild:
        scalars = st.one_of(
            scalars,
            st.just(pb.Value()),
            st.builds(
                lambda seconds, nanos: pb.Value(timestamp_value=Timestamp(seconds=seconds, nanos=nanos)),
                st.sampled_from([-(2**62), -62_135_596_801, 0, 253_402_300_800]),
                st.sampled_from([0, 1, 999, 999_999_999]),
            ),
        )
    lists = st.lists(scalars, max_size=3).map(lambda vs: pb.Value(list_value=pb.ValueList(values=vs)))
    values = st.one_of(scalars, scalars, lists)
    if wild:
        nested = st.lists(lists, min_size=1, max_size=2).map(lambda vs: pb.Value(list_value=pb.ValueList(values=vs)))
        values = st.one_of(values, nested)
    return values


def _element(field: FD, limits: ServerLimits, wild: bool) -> st.SearchStrategy:
    if field.type == FD.TYPE_MESSAGE and field.message_type.full_name == "semsearch.v1.Filter":
        return filter_strategy(limits, wild)
    if field.type == FD.TYPE_MESSAGE and field.message_type.full_name == "semsearch.v1.Value":
        return attribute_value_strategy(wild)
    if field.type == FD.TYPE_MESSAGE:
        if not wild:
            return message_strategy(field.message_type, limits, "sane")
        return st.one_of(
            message_strategy(field.message_type, limits, "one"), message_strategy(field.message_type, limits, "all")
        )
    return scalar_strategy(field, limits, wild)


def _identity_of(value):
    if isinstance(value, Message):
        return value.id if "id" in value.DESCRIPTOR.fields_by_name else value.SerializeToString(deterministic=True)
    return value


def _list_strategy(field: FD, limits: ServerLimits, wild: bool) -> st.SearchStrategy[list]:
    sane = _element(field, limits, False)
    if not wild:  # no duplicates (of ids, for messages that have one)
        return st.lists(sane, min_size=1, max_size=3, unique_by=_identity_of)
    odd = _element(field, limits, True)
    one_odd = st.builds(lambda xs, x, i: [*xs[:i], x, *xs[i:]], st.lists(sane, max_size=3), odd, st.integers(0, 3))
    duplicated = st.builds(
        lambda xs, i: [*xs, xs[i % len(xs)]], st.lists(st.one_of(sane, odd), min_size=1, max_size=3), st.integers(0, 8)
    )
    variants = [one_odd, one_odd, duplicated, st.just([]), st.lists(odd, max_size=5)]
    if field.type == FD.TYPE_STRING:  # at and past the count limits (cheap elements only)
        variants.append(
            st.builds(
                lambda x, n: [f"{x}{i}" for i in range(n)],
                st.sampled_from(("", "id", "q ")),
                st.sampled_from(limits.counts),
            )
        )
    return st.one_of(*variants)


def _map_strategy(field: FD, limits: ServerLimits, wild: bool) -> st.SearchStrategy[dict]:
    key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
    sane = st.dictionaries(_element(key_field, limits, False), _element(value_field, limits, False), max_size=2)
    if not wild:
        return sane
    keys, values = _element(key_field, limits, True), _element(value_field, limits, True)
    one = pb.Value(string_value="v") if value_field.type == FD.TYPE_MESSAGE else "v"
    many = st.builds(lambda n: {f"k{i}": one for i in range(n)}, st.sampled_from(limits.counts))
    return st.one_of(st.dictionaries(keys, values, max_size=4), many)


def value_strategy(field: FD, limits: ServerLimits, wild: bool) -> st.SearchStrategy:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return _map_strategy(field, limits, wild)
    if field.is_repeated:
        return _list_strategy(field, limits, wild)
    return _element(field, limits, wild)


def _assign(message: Message, field: FD, value) -> None:
    target = getattr(message, field.name) if field.is_repeated or field.type == FD.TYPE_MESSAGE else None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if value_field.type == FD.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        target.extend(value)
    elif field.type == FD.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _is_real(oneof: _descriptor.OneofDescriptor) -> bool:
    """False for the synthetic oneof protoc wraps around each proto3 `optional` field."""
    return not (len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name)


_MESSAGE_STRATEGIES: dict[tuple, st.SearchStrategy] = {}


def message_strategy(descriptor: _descriptor.Descriptor, limits: ServerLimits, mode: str) -> st.SearchStrategy[Message]:
    """Messages of this type, each field unset or set (one member per oneof).

    Args:
        mode: "sane" (every value sane), "one" (sane but for one wild field, any of them), "all" (wild).
    """
    key = (descriptor.full_name, limits, mode)
    if key not in _MESSAGE_STRATEGIES:
        if mode == "one" and descriptor.fields:
            names = st.sampled_from([f.name for f in descriptor.fields])
            strategy = names.flatmap(lambda name: _fields_strategy(descriptor, limits, lambda f: f.name == name))
        else:
            strategy = _fields_strategy(descriptor, limits, lambda f: mode == "all")
        _MESSAGE_STRATEGIES[key] = strategy
    return _MESSAGE_STRATEGIES[key]


def _fields_strategy(descriptor: _descriptor.Descriptor, limits: ServerLimits, is_wild: Callable[[FD], bool]):
    def maybe(f: FD) -> st.SearchStrategy:
        value = st.deferred(lambda: value_strategy(f, limits, is_wild(f)))
        # Sane fields are set; a wild one may also be unset (its default, which can be invalid on its own).
        return st.one_of(value, value, value, st.none()) if is_wild(f) else value

    plain = {}
    oneofs = []
    for oneof in filter(_is_real, descriptor.oneofs):
        wild = [f for f in oneof.fields if is_wild(f)]
        members = [st.tuples(st.just(f), maybe(f)) for f in (wild or oneof.fields)]
        oneofs.append(st.one_of(*members))
    for f in descriptor.fields:
        if f.containing_oneof is None or not _is_real(f.containing_oneof):
            plain[f.name] = maybe(f)
    cls = GetMessageClass(descriptor)

    def build(values: dict, chosen: tuple) -> Message:
        message = cls()
        for name, value in values.items():
            if value is not None:
                _assign(message, descriptor.fields_by_name[name], value)
        for pick in chosen:
            if pick is not None and pick[1] is not None:
                _assign(message, *pick)
        return message

    return st.builds(build, st.fixed_dictionaries(plain), st.tuples(*oneofs))


def request_strategy(descriptor: _descriptor.Descriptor, limits: ServerLimits) -> st.SearchStrategy[Message]:
    modes = [message_strategy(descriptor, limits, mode) for mode in ("sane", "one", "one", "all")]
    return st.one_of(*modes)


# -- the calls ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One request of an RPC, as a message (unary) or a list of messages (UpsertStream)."""

    rpc: str
    request: Message | list[Message]
    cancel_after: int | None = None  # a stream cancelled by the client after sending this many messages

    @property
    def label(self) -> str:
        return f"{self.rpc} (cancelled)" if self.cancel_after is not None else self.rpc


@dataclass(frozen=True)
class RawCall:
    """Bytes sent as an RPC's request without a serializer: malformed messages, and ones over the size limit."""

    rpc: str
    payloads: tuple[bytes, ...]
    oversized: bool = False

    @property
    def label(self) -> str:
        return f"{self.rpc} ({'over the size limit' if self.oversized else 'raw bytes'})"

    def decodes(self) -> bool:
        cls = GetMessageClass(SERVICE.methods_by_name[self.rpc].input_type)
        try:
            for payload in self.payloads:
                cls.FromString(payload)
        except DecodeError:
            return False
        return True


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def malformed_bytes() -> st.SearchStrategy[bytes]:
    """Bytes that mostly do not decode: random, truncated length prefixes, bad wire types, invalid UTF-8."""
    return st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda n, b: length_delimited(n, b),
            st.integers(1, 12),
            st.sampled_from((b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b")),
        ),
        st.builds(lambda n: _varint(n << 3 | 2) + _varint(1000), st.integers(1, 12)),  # length past the end
        st.builds(lambda n, w: _varint(n << 3 | w), st.integers(0, 20), st.sampled_from((3, 4, 6, 7))),
        st.builds(lambda n: _varint(n << 3 | 5) + b"\x00", st.integers(1, 12)),  # truncated fixed32
        st.just(b"\x80" * 11),  # a varint longer than ten bytes
    )


def call_strategy(limits: ServerLimits) -> st.SearchStrategy[Call | RawCall]:
    """Calls of every RPC of the service: requests (streams for client-streaming RPCs, some cancelled),
    bytes that are not a message, and messages one byte over the server's receive limit."""
    calls = []
    for method in SERVICE.methods:
        request = request_strategy(method.input_type, limits)
        if method.client_streaming:
            # Mostly sane messages, with sometimes one anywhere that may be refused.
            sane = message_strategy(method.input_type, limits, "sane")
            messages = st.one_of(
                st.lists(sane, max_size=5),
                st.builds(
                    lambda ms, m, i: [*ms[:i], m, *ms[i:]], st.lists(sane, max_size=4), request, st.integers(0, 4)
                ),
            )
            calls.append(st.builds(lambda ms, rpc=method.name: Call(rpc, ms), messages))
            calls.append(
                st.builds(
                    lambda ms, k, rpc=method.name: Call(rpc, ms, cancel_after=min(k, len(ms))),
                    messages,
                    st.integers(0, 6),
                )
            )
        else:
            calls.append(st.builds(lambda m, rpc=method.name: Call(rpc, m), request))
    rpcs = st.sampled_from(RPCS)
    raw = st.one_of(
        st.builds(lambda rpc, b: RawCall(rpc, (b,)), rpcs, malformed_bytes()),
        st.builds(_truncated, rpcs, st.integers(1, 8)),
    )
    oversized = st.builds(
        lambda rpc: RawCall(rpc, (length_delimited(1000, b"z" * (limits.max_message_bytes + 1)),), oversized=True),
        rpcs,
    )
    return st.one_of(*calls, raw, oversized)


def _truncated(rpc: str, cut: int) -> RawCall:
    """A valid request with its last bytes cut off: a length prefix that runs past the end."""
    cls = GetMessageClass(SERVICE.methods_by_name[rpc].input_type)
    payload = length_delimited(1, b"a valid looking string field") + length_delimited(2, "text ü".encode())
    return RawCall(rpc, (cls().SerializeToString() + payload[:-cut],))


# -- running and checking -------------------------------------------------------------------------------
class FuzzFailure(AssertionError):
    pass


def _decodable_prefix(payloads: Sequence[bytes]) -> list[pb.UpsertRequest]:
    """The UpsertStream messages before the first one that does not decode (the server stops there)."""
    out = []
    for payload in payloads:
        try:
            out.append(pb.UpsertRequest.FromString(payload))
        except DecodeError:
            break
    return out


def _mentions(call: Call | RawCall, name: str) -> bool:
    if isinstance(call, RawCall):
        return any(name.encode() in payload for payload in call.payloads)
    messages = call.request if isinstance(call.request, list) else [call.request]
    return any(name in str(m) for m in messages)


@dataclass
class Snapshot:
    counts: dict[str, int]
    documents: dict[str, list[tuple[str, str, tuple]]]  # pooled ids found, per collection
    canary_score: float | None
    measured: bool = True  # False: canary_score was taken over from the state before, not searched for

    def differences(self, other: Snapshot) -> list[str]:
        """What differs in `other`, a later state (its canary score only when it was measured)."""
        out = []
        if self.counts != other.counts:
            out.append(f"document counts {self.counts} -> {other.counts}")
        if self.documents != other.documents:
            out.append(f"pooled documents {self.documents} -> {other.documents}")
        if other.measured and self.canary_score != other.canary_score:
            out.append(f"canary score {self.canary_score} -> {other.canary_score}")
        return out


@dataclass
class Tally:
    """Status codes seen, per RPC (label) and in total."""

    by_rpc: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, label: str, code: grpc.StatusCode) -> None:
        self.by_rpc[label][code.name] += 1

    @property
    def total(self) -> Counter:
        out: Counter = Counter()
        for counter in self.by_rpc.values():
            out.update(counter)
        return out

    def report(self) -> str:
        codes = sorted(self.total)
        width = max([len(label) for label in self.by_rpc] + [5])
        lines = [f"{'rpc':<{width}}  " + "  ".join(f"{c:>19}" for c in codes) + f"  {'total':>8}"]
        for label in sorted(self.by_rpc):
            counter = self.by_rpc[label]
            cells = "  ".join(f"{counter.get(c, 0):>19}" for c in codes)
            lines.append(f"{label:<{width}}  {cells}  {sum(counter.values()):>8}")
        total = self.total
        lines.append(
            f"{'total':<{width}}  " + "  ".join(f"{total[c]:>19}" for c in codes) + f"  {sum(total.values()):>8}"
        )
        return "\n".join(lines)


def _identity(x: bytes) -> bytes:
    return x


class ApiFuzzer:
    """Sends calls to a server over a real channel and checks the three properties after each one.

    Args:
        address: host:port of a loaded server.
        timeout: deadline of each call, in seconds; a call that exceeds it is a failure (a hang).
        is_alive: optional check that the server process is still running (crash detection).
    """

    def __init__(self, address: str, timeout: float = 120.0, is_alive: Callable[[], bool] | None = None) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])
        self.timeout = timeout
        self.is_alive = is_alive or (lambda: True)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.tally = Tally()
        self.checked = 0
        self._ids_written: dict[str, set[str]] = defaultdict(set)
        self._unary = {}
        for method in SERVICE.methods:
            path = f"/{SERVICE.full_name}/{method.name}"
            response = GetMessageClass(method.output_type)
            request = GetMessageClass(method.input_type)
            kind = self.channel.stream_unary if method.client_streaming else self.channel.unary_unary
            self._unary[method.name] = kind(
                path, request_serializer=request.SerializeToString, response_deserializer=response.FromString
            )
            self._unary[(method.name, "raw")] = kind(
                path, request_serializer=_identity, response_deserializer=_identity
            )
        info = self._call_ok("GetInfo", pb.GetInfoRequest())
        self.limits = ServerLimits.from_pb(info.limits)
        self.max_ids_per_request = info.limits.max_ids_per_request
        self.baseline = self.prepare()

    def close(self) -> None:
        self.channel.close()

    # -- state -----------------------------------------------------------------------------------------
    def _call_ok(self, rpc: str, request: Message):
        return self._unary[rpc](request, timeout=self.timeout)

    def prepare(self, snapshot: Snapshot | None = None) -> Snapshot:
        """Restores the canary (and its collection) if an accepted request removed or changed it, and
        empties a collection the fuzzer has grown past MAX_DOCS_PER_COLLECTION of its own documents."""
        snapshot = snapshot or self.snapshot()
        changed = False
        if CANARY_COLLECTION not in snapshot.counts:
            self._call_ok("CreateCollection", pb.CreateCollectionRequest(name=CANARY_COLLECTION))
            changed = True
        canary = (CANARY.id, CANARY.text, tuple(sorted(CANARY.metadata.items())))
        attributes = tuple(sorted((k, pb.Value(string_value=v).SerializeToString()) for k, v in CANARY_MARK.items()))
        stored = snapshot.documents.get(CANARY_COLLECTION, [])
        if changed or canary not in stored or (CANARY.id, "attributes", attributes) not in stored:
            self._call_ok("Upsert", pb.UpsertRequest(collection=CANARY_COLLECTION, documents=[CANARY]))
            changed = True
        for name, count in snapshot.counts.items():
            if count > MAX_DOCS_PER_COLLECTION and self._ids_written.get(name):
                ids = sorted(self._ids_written.pop(name))
                step = self.max_ids_per_request
                for start in range(0, len(ids), step):
                    self._call_ok("Delete", pb.DeleteRequest(collection=name, ids=ids[start : start + step]))
                changed = True
        return self.snapshot() if changed else snapshot

    def snapshot(self, score: bool = True, inherit: Snapshot | None = None) -> Snapshot:
        """The state refused requests must leave alone. The canary's score costs an embedding: unless
        `score`, it is taken over from `inherit` (a state no accepted write to the canary has changed)."""
        listed = self._call_ok("ListCollections", pb.ListCollectionsRequest())
        counts = {c.name: c.document_count for c in listed.collections}
        documents = {}
        for name in sorted(set(COLLECTIONS) & set(counts)):
            found = self._call_ok("Get", pb.GetRequest(collection=name, ids=sorted(set(IDS))))
            documents[name] = [(d.id, d.text, tuple(sorted(d.metadata.items()))) for d in found.documents]
            # Typed attributes too: a refused UpdateAttributes must leave every kind alone.
            documents[name] += [
                (d.id, "attributes", tuple(sorted((k, v.SerializeToString()) for k, v in d.attributes.items())))
                for d in found.documents
            ]
        if not score and inherit is not None:
            return Snapshot(counts, documents, inherit.canary_score, measured=False)
        canary_score = None
        if CANARY_COLLECTION in counts:
            search = pb.SearchRequest(
                collection=CANARY_COLLECTION, query=CANARY_QUERY, top_k=1, min_score=-1, filter=CANARY_MARK
            )
            hits = self._call_ok("Search", search).hits
            canary_score = hits[0].score if hits and hits[0].id == CANARY_ID else None
        return Snapshot(counts, documents, canary_score)

    def _settled_snapshot(self, wait: float = 10.0) -> Snapshot:
        """After a cancelled stream the server may still be finishing it: the state once it stops changing."""
        deadline = time.monotonic() + wait
        previous = self.snapshot()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            current = self.snapshot()
            if not previous.differences(current):
                return current
            previous = current
        raise FuzzFailure(f"the state still changes {wait}s after a cancelled stream")

    # -- one call -------------------------------------------------------------------------------------
    def send(self, call: Call | RawCall) -> tuple[grpc.StatusCode, str]:
        try:
            if isinstance(call, RawCall):
                stub = self._unary[(call.rpc, "raw")]
                payload = (
                    iter(call.payloads) if SERVICE.methods_by_name[call.rpc].client_streaming else call.payloads[0]
                )
                stub(payload, timeout=self.timeout)
            elif call.cancel_after is not None:
                return self._send_cancelled(call)
            elif isinstance(call.request, list):
                self._unary[call.rpc](iter(call.request), timeout=self.timeout)
            else:
                self._unary[call.rpc](call.request, timeout=self.timeout)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return OK, ""

    def _send_cancelled(self, call: Call) -> tuple[grpc.StatusCode, str]:
        release = threading.Event()

        def messages():
            yield from call.request[: call.cancel_after]
            release.wait(self.timeout)  # holds the stream open until the client cancels it

        future = self._unary[call.rpc].future(messages(), timeout=self.timeout)
        time.sleep(0.02)
        future.cancel()
        release.set()
        try:
            future.result()
        except grpc.FutureCancelledError:
            return grpc.StatusCode.CANCELLED, "cancelled by the client"
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return OK, ""

    def check(self, call: Call | RawCall) -> grpc.StatusCode:
        """Sends one call and raises FuzzFailure if any of the three properties does not hold."""
        before = self.baseline
        code, details = self.send(call)
        self.tally.add(call.label, code)
        problems = []
        allowed = set(DOCUMENTED_CODES[call.rpc])
        if isinstance(call, RawCall):
            if call.oversized:
                allowed = {grpc.StatusCode.RESOURCE_EXHAUSTED}
            elif not call.decodes():
                allowed = {MALFORMED_CODE}
        if isinstance(call, Call):
            messages = call.request if isinstance(call.request, list) else [call.request]
            if all(m.ByteSize() <= self.limits.max_message_bytes for m in messages):
                allowed.discard(grpc.StatusCode.RESOURCE_EXHAUSTED)  # nothing else here is over a limit
            if call.cancel_after is not None:
                allowed.add(grpc.StatusCode.CANCELLED)
        if code not in allowed:
            problems.append(f"status {code.name} ({details!r}); allowed {sorted(c.name for c in allowed)}")
        if not self.is_alive():
            raise FuzzFailure(f"the server process died on {call!r}")
        health = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
        self.checked += 1
        score = _mentions(call, CANARY_COLLECTION) or self.checked % SCORE_EVERY == 0
        if code == grpc.StatusCode.CANCELLED:
            after = self._settled_snapshot()
        elif code == OK and isinstance(call, Call) and call.rpc not in WRITES:
            after = before  # an accepted read; the next refused request's check would see it if it wrote
        else:
            after = self.snapshot(score=score, inherit=before)
        if code != OK:
            problems += self._refused_changes(call, before, after)
        if problems:
            raise FuzzFailure(f"{call.label}: " + "; ".join(problems) + f"\nrequest: {call!r}")
        self._remember_writes(call)
        if code == OK and not after.measured and _mentions(call, CANARY_COLLECTION):
            after = self.snapshot()  # an accepted write to the canary's collection may have changed its score
        self.baseline = self.prepare(after)
        return code

    def _refused_changes(self, call: Call | RawCall, before: Snapshot, after: Snapshot) -> list[str]:
        """What a refused call changed that it must not have."""
        if call.rpc != "UpsertStream":
            return [f"a refused request changed {d}" for d in before.differences(after)]
        # A stream applies each message as it arrives: one refused (or cancelled) after some messages
        # keeps those (API.md), an undecodable message like an invalid one. What may have changed: only
        # the collections and ids of the messages before the refused one.
        sent = call.request if isinstance(call, Call) else _decodable_prefix(call.payloads)
        touched = defaultdict(set)
        for message in sent:
            name = message.collection or "default"
            touched[name] |= {d.id for d in message.documents}
        problems = []
        for name, count in after.counts.items():
            grown = count - before.counts.get(name, 0)
            if grown < 0 or grown > len(touched.get(name, ())):
                problems.append(f"collection {name!r} went from {before.counts.get(name)} to {count} documents")
        for name, docs in after.documents.items():
            changed = set(docs) ^ set(before.documents.get(name, []))
            if {d[0] for d in changed} - touched.get(name, set()):
                problems.append(f"documents it did not send changed in {name!r}: {sorted(changed)}")
        if (
            after.measured
            and after.canary_score != before.canary_score
            and CANARY_ID not in touched.get(CANARY_COLLECTION, ())
        ):
            problems.append(f"the canary's score changed: {before.canary_score} -> {after.canary_score}")
        return problems

    def _remember_writes(self, call: Call | RawCall) -> None:
        if isinstance(call, Call) and call.rpc in ("Upsert", "UpsertStream"):
            for message in call.request if isinstance(call.request, list) else [call.request]:
                name = message.collection or "default"
                self._ids_written[name] |= {d.id for d in message.documents if d.id not in IDS}
