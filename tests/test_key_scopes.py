"""API keys with a role and collection patterns: every RPC x role x in/out of scope on the interceptor with fake
contexts, then a few calls over a real channel, and a SIGHUP reload of a real server process."""

from __future__ import annotations

import hashlib
import logging
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from conftest import InProcessServer
from semsearch import SearchClient
from semsearch.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from semsearch.v1 import search_service_pb2 as pb
from semsearch_server.config import ConfigError
from semsearch_server.errors import SemsearchError
from semsearch_server.testing import ServerProcess
from semsearch_server.transport.auth import RPC_RULES, ApiKeyInterceptor, Role, parse_key_file
from semsearch_server.transport.errors import status_for
from semsearch_server.transport.server import SERVICE_NAME

SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"]
SERVICE_RPCS = {m.name for m in SERVICE.methods}

# The classes, written out here rather than read from the code under test.
READ_RPCS = {"Search", "BatchSearch", "Explain", "Get", "Embed", "Count", "Scroll", "GetInfo", "ListCollections"}
READ_RPCS |= {"ListAliases", "ListSnapshots"}
WRITE_RPCS = {"Upsert", "UpsertStream", "Delete", "UpdateAttributes"}
ADMIN_RPCS = {"CreateCollection", "DeleteCollection", "Reindex", "SetAlias", "DeleteAlias"}
ADMIN_RPCS |= {"CreateSnapshot", "DeleteSnapshot", "RestoreSnapshot"}
# Name no collection: any key whose role allows them may call them (listings are filtered instead).
NO_COLLECTION = {"Embed", "GetInfo", "ListCollections", "ListAliases"}
# Name a snapshot, not a collection: only a key on every collection may call them.
SNAPSHOT_NAMED = {"DeleteSnapshot", "RestoreSnapshot"}
# Their listing: (repeated field, the field the key's patterns are matched against).
LISTINGS = {
    "ListCollections": ("collections", "name"),
    "GetInfo": ("collections", "name"),
    "ListAliases": ("aliases", "alias"),
    "ListSnapshots": ("snapshots", "collection"),
}
# The announced RPCs' requests (API.md), for as long as the service does not have them.
ANNOUNCED_FIELDS = {
    "SetAlias": ("alias", "collection"),
    "DeleteAlias": ("alias",),
    "ListAliases": (),
    "CreateSnapshot": ("collection",),
    "ListSnapshots": ("collection",),
    "DeleteSnapshot": ("name",),
    "RestoreSnapshot": ("name", "collection"),
}

KEYS = {  # role of the table -> (key, key file line)
    "read": ("k-read-3b1f", "k-read-3b1f read docs-* faq"),
    "write": ("k-write-8c2d", "k-write-8c2d write docs-* faq"),
    "admin": ("k-admin-1e7a", "k-admin-1e7a admin docs-* faq"),
    "read-only (old line)": ("k-old-ro-5d4c", "k-old-ro-5d4c read-only"),
    "bare key (old line)": ("k-old-rw-9a0b", "k-old-rw-9a0b"),
}
ROLE_OF = {"read": Role.READ, "write": Role.WRITE, "admin": Role.ADMIN}
ROLE_OF |= {"read-only (old line)": Role.READ, "bare key (old line)": Role.ADMIN}
SCOPED = {"read", "write", "admin"}
ALL_RPCS = sorted(SERVICE_RPCS | {m.rsplit("/", 1)[-1] for m in RPC_RULES})
TABLE = [(rpc, role, scope) for rpc in ALL_RPCS for role in KEYS for scope in ("in scope", "out of scope")]


@pytest.fixture(scope="module")
def interceptor(tmp_path_factory) -> ApiKeyInterceptor:
    path = tmp_path_factory.mktemp("keys") / "api_keys"
    path.write_text("\n".join(line for _, line in KEYS.values()) + "\n")
    return ApiKeyInterceptor(parse_key_file(path))


class Aborted(Exception):
    pass


class FakeContext:
    def abort(self, code, details):
        raise Aborted(code, details)


def make_request(rpc: str, name: str):
    """The RPC's request (the real message when the service has the RPC) with each collection-naming field set."""
    if rpc in SERVICE_RPCS:
        request = getattr(pb, SERVICE.methods_by_name[rpc].input_type.name)()
        for field in ("collection", "name", "alias"):
            if field in request.DESCRIPTOR.fields_by_name:
                setattr(request, field, name)
        return request
    return SimpleNamespace(**dict.fromkeys(ANNOUNCED_FIELDS[rpc], name))


def make_response(rpc: str):
    if rpc not in LISTINGS:
        return "served"
    field, name_field = LISTINGS[rpc]
    items = [SimpleNamespace(**{name_field: n}) for n in ("docs-1", "faq", "other", "default")]
    return SimpleNamespace(**{field: items})


def call(interceptor: ApiKeyInterceptor, rpc: str, key: str, requests: list):
    """Drives the interceptor as the server would: the servicer maps a domain error raised by the stream."""
    streaming = rpc == "UpsertStream"
    seen: list = []

    def servicer(request_or_iterator, context):
        if not streaming:
            seen.append(request_or_iterator)
            return make_response(rpc)
        try:
            seen.extend(request_or_iterator)
        except SemsearchError as exc:
            context.abort(status_for(exc), str(exc))
        return "served"

    factory = grpc.stream_unary_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
    handler = factory(servicer)
    details = SimpleNamespace(
        method=f"/{SERVICE_NAME}/{rpc}", invocation_metadata=(("authorization", f"Bearer {key}"),)
    )
    wrapped = interceptor.intercept_service(lambda _: handler, details)
    behavior = wrapped.stream_unary if streaming else wrapped.unary_unary
    return behavior(iter(requests) if streaming else requests[0], FakeContext()), seen


def expected_class(rpc: str) -> str:
    for name, rpcs in (("read", READ_RPCS), ("write", WRITE_RPCS), ("admin", ADMIN_RPCS)):
        if rpc in rpcs:
            return name
    pytest.fail(f"{rpc} is in the service or the rule table but has no class in this test (read, write, admin)")


def test_the_table_covers_every_rpc_and_role():
    assert READ_RPCS | WRITE_RPCS | ADMIN_RPCS == set(ALL_RPCS)
    assert SERVICE_RPCS <= set(ALL_RPCS)
    assert len(TABLE) == len(ALL_RPCS) * 5 * 2


@pytest.mark.parametrize(("rpc", "role", "scope"), TABLE)
def test_rpc_by_role_in_and_out_of_scope(interceptor, rpc, role, scope):
    key = KEYS[role][0]
    name = "docs-1" if scope == "in scope" else "other"
    allowed_roles = {"read": {"read", "write", "admin"}, "write": {"write", "admin"}, "admin": {"admin"}}
    role_ok = ROLE_OF[role].value in allowed_roles[expected_class(rpc)]
    scoped = role in SCOPED
    scope_ok = not scoped or rpc in NO_COLLECTION or (scope == "in scope" and rpc not in SNAPSHOT_NAMED)
    if not (role_ok and scope_ok):
        with pytest.raises(Aborted) as info:
            call(interceptor, rpc, key, [make_request(rpc, name)])
        code, message = info.value.args
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert message.startswith(f"this key (role {ROLE_OF[role].value}, ")
        assert f"may not call {rpc}" in message
        if role_ok and rpc not in SNAPSHOT_NAMED:  # refused for the collection: the message names it
            assert "collections docs-* faq" in message and repr(name) in message
        return
    response, seen = call(interceptor, rpc, key, [make_request(rpc, name)])
    assert len(seen) == 1
    if rpc in LISTINGS:
        field, name_field = LISTINGS[rpc]
        shown = [getattr(item, name_field) for item in getattr(response, field)]
        assert shown == (["docs-1", "faq"] if scoped else ["docs-1", "faq", "other", "default"])
    else:
        assert response == "served"


def test_the_empty_collection_is_default(interceptor):
    with pytest.raises(Aborted, match="on collection 'default'"):
        call(interceptor, "Search", KEYS["read"][0], [pb.SearchRequest(query="q")])
    assert call(interceptor, "Search", KEYS["read-only (old line)"][0], [pb.SearchRequest(query="q")])[0] == "served"


@pytest.mark.parametrize(
    ("alias", "collection", "refused"),
    [("docs-current", "docs-2024", None), ("docs-current", "other", "collection 'other'"), ("x", "faq", "alias 'x'")],
)
def test_set_alias_needs_both_the_alias_and_its_collection(interceptor, alias, collection, refused):
    request = SimpleNamespace(alias=alias, collection=collection)
    if refused is None:
        assert call(interceptor, "SetAlias", KEYS["admin"][0], [request])[0] == "served"
        return
    with pytest.raises(Aborted, match=f"may not call SetAlias on {refused}"):
        call(interceptor, "SetAlias", KEYS["admin"][0], [request])


def test_list_snapshots_without_a_collection_shows_only_covered_ones(interceptor):
    response, _ = call(interceptor, "ListSnapshots", KEYS["read"][0], [SimpleNamespace(collection="")])
    assert [s.collection for s in response.snapshots] == ["docs-1", "faq"]


def test_each_stream_message_is_checked(interceptor):
    """The messages before an out-of-scope one reach the servicer (and are stored), none after it."""
    requests = [pb.UpsertRequest(collection=c) for c in ("docs-1", "faq", "other", "docs-2")]
    with pytest.raises(Aborted) as info:
        call(interceptor, "UpsertStream", KEYS["write"][0], requests)
    assert info.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "this key (role write, collections docs-* faq) may not call UpsertStream on collection 'other'" in str(
        info.value.args[1]
    )


def test_globs_are_whole_name_and_star_only(tmp_path):
    path = tmp_path / "keys"
    path.write_text("k read docs-* *-logs exact\n")
    interceptor = ApiKeyInterceptor(parse_key_file(path))
    for name, covered in [
        ("docs-", True),
        ("docs-a-b", True),
        ("app-logs", True),
        ("exact", True),
        ("exactly", False),
        ("my-docs-1", False),
        ("docs", False),
        ("app-logs2", False),
    ]:
        request = pb.CountRequest(collection=name)
        if covered:
            assert call(interceptor, "Count", "k", [request])[0] == "served", name
        else:
            with pytest.raises(Aborted):
                call(interceptor, "Count", "k", [request])


def test_key_file_lines_with_roles_patterns_and_hashes(tmp_path):
    path = tmp_path / "keys"
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    path.write_text(
        "plain\nold-ro read-only\nold-rw read-write\n"
        f"r read\nw write docs-* faq  # a comment\na admin *\nsha256:{digest.upper()} read docs-*\n"
    )
    assert parse_key_file(path) == [
        ("plain", Role.ADMIN, ()),
        ("old-ro", Role.READ, ()),
        ("old-rw", Role.ADMIN, ()),
        ("r", Role.READ, ()),
        ("w", Role.WRITE, ("docs-*", "faq")),
        ("a", Role.ADMIN, ("*",)),
        (f"sha256:{digest.upper()}", Role.READ, ("docs-*",)),
    ]
    interceptor = ApiKeyInterceptor(parse_key_file(path))
    # The pattern '*' is every collection, as no pattern is: snapshots by name too.
    assert call(interceptor, "DeleteSnapshot", "a", [SimpleNamespace(name="snap-1")])[0] == "served"
    assert call(interceptor, "Get", "hashed-secret", [pb.GetRequest(collection="docs-1")])[0] == "served"
    with pytest.raises(Aborted) as info:  # the hash itself is not a key
        call(interceptor, "Get", f"sha256:{digest.upper()}", [pb.GetRequest(collection="docs-1")])
    assert info.value.args[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("secret-1 docs-*", "ROLE read, write or admin"),
        ("secret-1 superuser docs-*", "ROLE read, write or admin"),
        ("sha256:abc123 read", "64 hex digits"),
        (f"sha256:{'g' * 64} read", "64 hex digits"),
        ("secret-1 read docs-?", "only '*' is a wildcard"),
        ("secret-1 read [ab]*", "only '*' is a wildcard"),
    ],
)
def test_bad_lines_are_named_by_number_never_by_key(tmp_path, line, complaint):
    path = tmp_path / "keys"
    path.write_text(f"good\n{line}\n")
    with pytest.raises(ConfigError, match="line 2") as info:
        parse_key_file(path)
    assert complaint in str(info.value)
    assert "secret-1" not in str(info.value) and "abc123" not in str(info.value)


def test_reload_swaps_the_table_and_a_bad_file_keeps_it(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text("old-key read\n")
    interceptor = ApiKeyInterceptor(parse_key_file(path))
    search = [pb.SearchRequest(collection="docs-1")]
    path.write_text("new-key read docs-*\n")
    assert interceptor.reload(path)
    assert call(interceptor, "Search", "new-key", search)[0] == "served"
    with pytest.raises(Aborted):
        call(interceptor, "Search", "old-key", search)
    caplog.set_level(logging.INFO, logger="semsearch_server.transport.auth")
    caplog.clear()
    path.write_text("new-key read docs-*\nleaked-secret nonsense\n")
    assert not interceptor.reload(path)
    assert call(interceptor, "Search", "new-key", search)[0] == "served"
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "NOT reloaded" in record.getMessage() and "line 2" in record.getMessage()
    assert "leaked-secret" not in record.getMessage()


# -- over a real channel -----------------------------------------------------------------------------
ADMIN_KEY = "adm-6f1e9d2c"
DOCS_READER = "docs-reader-2a7b"
DOCS_WRITER = "docs-writer-4c8e"
HASHED_READER = "hashed-reader-7d3f"


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory, embedder, explainer):
    tmp = tmp_path_factory.mktemp("scoped")
    keys = tmp / "api_keys"
    hashed = hashlib.sha256(HASHED_READER.encode()).hexdigest()
    keys.write_text(
        f"{ADMIN_KEY}\n{DOCS_READER} read docs-*\n{DOCS_WRITER} write docs-*\nsha256:{hashed} read secret\n"
    )
    srv = InProcessServer(tmp / "data", embedder, explainer, api_key_file=keys)
    with SearchClient(srv.address, api_key=ADMIN_KEY, timeout=60) as admin:
        for name in ("docs-a", "docs-b", "secret"):
            admin.create_collection(name)
        admin.upsert([("s1", "the launch codes")], collection="secret")
        admin.upsert([("d1", "the cat sat on the mat")], collection="docs-a")
    yield srv
    srv.stop()


def test_listings_show_only_the_keys_collections(scoped_server):
    with SearchClient(scoped_server.address, api_key=DOCS_READER, timeout=60) as reader:
        assert sorted(c.name for c in reader.list_collections()) == ["docs-a", "docs-b"]
        assert sorted(c.name for c in reader.info().collections) == ["docs-a", "docs-b"]
        assert reader.search("cat", top_k=1, collection="docs-a")[0].id == "d1"
    with SearchClient(scoped_server.address, api_key=ADMIN_KEY, timeout=60) as admin:
        assert {"default", "docs-a", "docs-b", "secret"} <= {c.name for c in admin.list_collections()}


def test_out_of_scope_is_denied_whether_or_not_the_collection_exists(scoped_server):
    with SearchClient(scoped_server.address, api_key=DOCS_READER, timeout=60) as reader:
        messages = []
        for name in ("secret", "no-such-collection"):
            with pytest.raises(PermissionDeniedError) as info:
                reader.get(["s1"], collection=name)
            messages.append(info.value.details.replace(name, "NAME"))
        assert (
            messages[0]
            == messages[1]
            == ("this key (role read, collections docs-*) may not call Get on collection 'NAME'")
        )
        with pytest.raises(NotFoundError):  # inside the patterns, a missing collection is reported as such
            reader.get(["x"], collection="docs-missing")


def test_write_key_writes_in_scope_only(scoped_server):
    with SearchClient(scoped_server.address, api_key=DOCS_WRITER, timeout=60) as writer:
        assert writer.upsert([("w1", "written by the docs writer")], collection="docs-b") == 1
        with pytest.raises(PermissionDeniedError, match="on collection 'secret'"):
            writer.upsert([("w1", "should not be stored")], collection="secret")
        with pytest.raises(PermissionDeniedError, match="may not call CreateCollection: it needs role admin"):
            writer.create_collection("docs-new")
        stream = [
            pb.UpsertRequest(collection=c, documents=[pb.Document(id="st", text="t")]) for c in ("docs-b", "secret")
        ]
        with pytest.raises(grpc.RpcError) as info:
            writer.stub.UpsertStream(iter(stream), metadata=(("authorization", f"Bearer {DOCS_WRITER}"),), timeout=60)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not call UpsertStream on collection 'secret'" in info.value.details()
    with SearchClient(scoped_server.address, api_key=ADMIN_KEY, timeout=60) as admin:
        assert [d.id for d in admin.get(["s1", "w1", "st"], collection="secret")] == ["s1"]
        assert [d.id for d in admin.get(["w1", "st"], collection="docs-b")] == ["w1", "st"]


def test_sha256_key_over_the_channel(scoped_server):
    with SearchClient(scoped_server.address, api_key=HASHED_READER, timeout=60) as reader:
        assert [d.id for d in reader.get(["s1"], collection="secret")] == ["s1"]
        assert [c.name for c in reader.list_collections()] == ["secret"]
    digest = hashlib.sha256(HASHED_READER.encode()).hexdigest()
    with (
        SearchClient(scoped_server.address, api_key=f"sha256:{digest}", timeout=60) as c,
        pytest.raises(UnauthenticatedError),
    ):
        c.list_collections()


# -- SIGHUP on a real server process -----------------------------------------------------------------
def _wait_for_log(server: ServerProcess, text: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.output().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.output()}"
        time.sleep(0.05)


def test_sighup_reloads_the_keys_without_dropping_the_connection(tmp_path: Path):
    keys = tmp_path / "api_keys"
    keys.write_text("first-key-1a2b read\n")
    server = ServerProcess(tmp_path / "data", "--backend", "torch", "--api-key-file", str(keys))
    try:
        server.start()
        # One channel for the whole test: the reload must not need a reconnect.
        with SearchClient(server.address, api_key="", timeout=60) as c:

            def names(key: str) -> list[str]:
                request, metadata = pb.ListCollectionsRequest(), (("authorization", f"Bearer {key}"),)
                return [x.name for x in c.stub.ListCollections(request, metadata=metadata, timeout=60).collections]

            assert names("first-key-1a2b") == ["default"]
            keys.write_text("second-key-3c4d read docs-*\n")
            server.proc.send_signal(signal.SIGHUP)
            _wait_for_log(server, "API keys reloaded", 1)
            assert names("second-key-3c4d") == []  # scoped to docs-*: 'default' is not shown
            with pytest.raises(grpc.RpcError) as info:
                names("first-key-1a2b")
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            keys.write_text("second-key-3c4d read docs-*\nthird-key bogus-role\n")
            server.proc.send_signal(signal.SIGHUP)
            _wait_for_log(server, "API keys NOT reloaded", 1)
            assert names("second-key-3c4d") == []
            assert server.proc.poll() is None
        log = server.output()
        assert "line 2" in log and "third-key" not in log and "second-key" not in log
    finally:
        server.stop()
