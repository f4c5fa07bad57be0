"""The fuzzed API never breaks: every RPC, random well-typed requests, raw bytes and oversized messages.

A bounded, derandomized profile of tests/fuzz_api.py (the same calls on every run); `make fuzz` runs the
long one. The examples below the property are what the fuzzer found, kept as regression tests.
"""

from __future__ import annotations

import os

import grpc
import pytest
from fuzz_api import (
    DOCUMENTED_CODES,
    FUZZ_LIMITS,
    RPCS,
    SERVICE,
    ApiFuzzer,
    Call,
    RawCall,
    ServerLimits,
    call_strategy,
    length_delimited,
    malformed_bytes,
    request_strategy,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from semsearch.v1 import search_service_pb2 as pb
from semsearch.v1.search_service_pb2_grpc import SearchServiceStub

# Enough for every RPC to be drawn many times; about a minute on a shared 2-core machine.
EXAMPLES = int(os.environ.get("SEMSEARCH_FUZZ_TEST_EXAMPLES", "600"))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory, embedder, explainer):
    from conftest import InProcessServer
    from semsearch_server.config import Limits

    srv = InProcessServer(
        tmp_path_factory.mktemp("fuzz"), embedder, explainer, seed_demo=True, limits=Limits(**FUZZ_LIMITS)
    )
    fuzzer = ApiFuzzer(srv.address)
    yield fuzzer
    print("\n" + fuzzer.tally.report())
    fuzzer.close()
    srv.stop()


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(call=call_strategy(ServerLimits.from_config(FUZZ_LIMITS)))
def test_random_requests_never_break_the_server(fuzzer, call):
    fuzzer.check(call)


def test_every_rpc_is_fuzzed():
    """The strategy reaches every RPC of the service, a new one included without editing the fuzzer: raw and
    oversized calls draw their RPC from RPCS, requests are built for each method of the service's descriptor,
    and each method's request strategy yields its request type (one draw each: drawing the whole strategy
    until every RPC had come up took 2,000 examples and 16 s)."""
    assert list(RPCS) == [m.name for m in SERVICE.methods]
    assert set(DOCUMENTED_CODES) == set(RPCS), "every RPC needs the status codes it may answer"
    limits = ServerLimits.from_config(FUZZ_LIMITS)

    @settings(
        max_examples=3,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw_each(data):
        for method in SERVICE.methods:
            drawn = data.draw(request_strategy(method.input_type, limits), label=method.name)
            assert drawn.DESCRIPTOR is method.input_type, method.name

    draw_each()


# -- what the fuzzer found, kept ------------------------------------------------------------------------
@pytest.mark.parametrize("rpc", [m.name for m in SERVICE.methods])
def test_bytes_that_are_not_a_message_are_invalid_argument(fuzzer, rpc):
    """gRPC's own answer to an undecodable request is INTERNAL; the server says what was wrong instead."""
    # The last: found by `make fuzz` once streams were read ahead in a thread of their own, where the
    # decoding error was taken for a client gone and the stream answered OK.
    for payload in (b"\xff\xff\xff", b"\x0a\x10abc", b"\x80" * 11, b"\n\x1ca valid looking string field\x12\x07text"):
        call = RawCall(rpc, (payload,))
        assert not call.decodes()
        assert fuzzer.check(call) == grpc.StatusCode.INVALID_ARGUMENT
    code, details = fuzzer.send(RawCall(rpc, (b"\x0a\x10abc",)))
    assert (
        "not a valid" in details
        and pb.DESCRIPTOR.message_types_by_name[SERVICE.methods_by_name[rpc].input_type.name].full_name in details
    ), details


def test_invalid_utf8_in_a_string_field_is_invalid_argument(fuzzer):
    # documents[0].text = b"\xc3" (a cut two-byte sequence): protobuf refuses it while decoding.
    document = b"\x0a\x01d" + b"\x12\x01\xc3"
    call = RawCall("Upsert", (b"\x0a\x09fz-canary" + b"\x12" + bytes([len(document)]) + document,))
    assert fuzzer.check(call) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_with_one_undecodable_message_is_invalid_argument(fuzzer):
    good = pb.UpsertRequest(collection="fz-a", documents=[pb.Document(id="s1", text="fine")]).SerializeToString()
    fuzzer.check(Call("CreateCollection", pb.CreateCollectionRequest(name="fz-a")))
    assert fuzzer.check(RawCall("UpsertStream", (good, b"\xff\xff"))) == grpc.StatusCode.INVALID_ARGUMENT
    # Like an invalid message, an undecodable one ends the stream after the messages before it, which are stored.
    stored = SearchServiceStub(fuzzer.channel).Get(pb.GetRequest(collection="fz-a", ids=["s1"]), timeout=30)
    assert [(d.id, d.text) for d in stored.documents] == [("s1", "fine")]


def test_a_message_over_the_limit_is_resource_exhausted(fuzzer):
    for rpc in ("Upsert", "UpsertStream", "GetInfo"):
        # An unknown length-delimited field: a valid message of any type, one byte over the limit.
        payload = length_delimited(1000, b"z" * (fuzzer.limits.max_message_bytes + 1))
        call = RawCall(rpc, (payload,), oversized=True)
        assert fuzzer.check(call) == grpc.StatusCode.RESOURCE_EXHAUSTED


@given(st.sampled_from([m.name for m in SERVICE.methods]), malformed_bytes())
@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_malformed_bytes_are_refused_or_served(fuzzer, rpc, payload):
    fuzzer.check(RawCall(rpc, (payload,)))


@pytest.mark.parametrize("rpc", ["DeleteCollection", "CreateCollection", "Search"])
def test_a_huge_invalid_name_is_invalid_argument_not_a_dropped_response(fuzzer, rpc):
    """The message used to quote the whole name: 2,000 'é' are 12 KB percent-encoded in the status trailer,
    past the client's 8 KiB header limit, which then reported RESOURCE_EXHAUSTED (sometimes) instead."""
    name = "é" * 2000
    request = {
        "DeleteCollection": pb.DeleteCollectionRequest(name=name),
        "CreateCollection": pb.CreateCollectionRequest(name=name),
        "Search": pb.SearchRequest(collection=name, query="q"),
    }[rpc]
    for _ in range(5):  # the client's limit is soft: past 8 KiB it drops some responses, not all
        assert fuzzer.check(Call(rpc, request)) == grpc.StatusCode.INVALID_ARGUMENT
    code, details = fuzzer.send(Call(rpc, request))
    assert "is not a valid collection name" in details and "names must match" in details
    assert "(2000 characters)" in details


def test_status_details_fit_in_a_trailer_whatever_the_message():
    from semsearch_server.errors import NotFound
    from semsearch_server.transport.errors import MAX_DETAILS_BYTES, status_details

    short = NotFound("collection 'x' does not exist")
    assert status_details(short) == str(short)
    for char in ("a", "é", "🐦", "%", "\x00"):
        details = status_details(NotFound(char * 50_000))
        encoded = sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in details)
        assert encoded <= MAX_DETAILS_BYTES
        assert details.startswith(char * 100) and details.endswith("more characters cut)")
