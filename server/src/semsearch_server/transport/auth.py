"""API-key authentication and scopes: a gRPC server interceptor in front of every SearchService call.

The key file (``--api-key-file``, format in docs/operations-keys.md) holds one key per line::

    # comments start with '#', blank lines are ignored
    s3cr3t-admin-key                     # no role: admin on every collection (as 'read-write')
    s3cr3t-reader-key read-only          # read on every collection (as 'read')
    s3cr3t-docs-writer write docs-* faq  # read and write on docs-*, faq and nothing else
    sha256:9f86d081884c7d65...  read     # the key's sha256 in hex: the file holds no secret

A key is any run of characters without whitespace or '#'. Clients send it as the metadata
``authorization: Bearer <key>``. A missing or unknown key is UNAUTHENTICATED. Every SearchService RPC has a
rule in RPC_RULES: its class (read, write, admin) and which request fields name the collections it acts on.
A key calls an RPC when its role allows the class and its patterns cover every collection the request names
(the name the caller used, so an alias is reached through its own name); otherwise PERMISSION_DENIED, with
no look-up first, so that a refusal says nothing about whether the collection exists. Listings (ListCollections,
GetInfo, ListAliases, ListSnapshots) show only what the key covers. An RPC without a rule is refused to every
key (a new RPC is closed until someone decides what it is; a test checks the table against the service).
The health and reflection services stay open so that probes and grpcurl work without a key. Keys are compared
in constant time and never logged or echoed.

The key table is swapped whole by `ApiKeyInterceptor.reload` (SIGHUP, __main__.py): a call uses the table it
started with, an open UpsertStream keeps the grant it opened with, and connections are not touched.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from semsearch_server.config import ConfigError
from semsearch_server.core.validation import DEFAULT_COLLECTION
from semsearch_server.errors import PermissionDenied
from semsearch_server.transport.decoding import MalformedRequest
from semsearch_server.transport.server import SERVICE_NAME

log = logging.getLogger(__name__)


class RpcClass(enum.Enum):
    READ = "read"  # changes nothing
    WRITE = "write"  # changes documents
    ADMIN = "admin"  # changes collections, aliases or snapshots


class Role(enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    # The key file's first words, kept: 'read-only' is read, 'read-write' (or no word) is admin.
    READ_ONLY = "read"
    READ_WRITE = "admin"


ROLE_WORDS: dict[str, Role] = {
    "read": Role.READ,
    "write": Role.WRITE,
    "admin": Role.ADMIN,
    "read-only": Role.READ,
    "read-write": Role.ADMIN,
}

ALLOWED: dict[Role, frozenset[RpcClass]] = {
    Role.READ: frozenset({RpcClass.READ}),
    Role.WRITE: frozenset({RpcClass.READ, RpcClass.WRITE}),
    Role.ADMIN: frozenset(RpcClass),
}

# (what the name is, the name) for each collection or alias a request names.
Targets = list[tuple[str, str]]


def _collection(request: Any) -> Targets:
    return [("collection", request.collection or DEFAULT_COLLECTION)]


def _collection_name(request: Any) -> Targets:
    return [("collection", request.name)]


def _nothing(request: Any) -> Targets:
    return []


def _alias(request: Any) -> Targets:
    return [("alias", request.alias)]


def _alias_and_collection(request: Any) -> Targets:
    return [*_alias(request), *_collection(request)]


def _collection_if_named(request: Any) -> Targets:
    return _collection(request) if request.collection else []


@dataclass(frozen=True)
class RpcRule:
    """How the key check treats one RPC.

    Attributes:
        rpc_class: which roles may call it.
        targets: the collections and aliases the request names (each must be covered by the key's patterns).
        every_collection: the request names no collection the check can see (a snapshot by its name), so only
            a key on every collection may call it.
        listing: (repeated field, name field) of a response that lists collections: the items the key's
            patterns do not cover are dropped.
    """

    rpc_class: RpcClass
    targets: Callable[[Any], Targets] = _collection
    every_collection: bool = False
    listing: tuple[str, str] | None = None


READ, WRITE, ADMIN = RpcClass.READ, RpcClass.WRITE, RpcClass.ADMIN
_RULES: dict[str, RpcRule] = {
    "Search": RpcRule(READ),
    "BatchSearch": RpcRule(READ),
    "Explain": RpcRule(READ),
    "Get": RpcRule(READ),
    "Embed": RpcRule(READ, _nothing),
    "Count": RpcRule(READ),
    "Scroll": RpcRule(READ),
    "GetInfo": RpcRule(READ, _nothing, listing=("collections", "name")),
    "ListCollections": RpcRule(READ, _nothing, listing=("collections", "name")),
    "ListAliases": RpcRule(READ, _nothing, listing=("aliases", "alias")),
    # Without a collection the snapshots of every collection, each shown only if the key covers its collection.
    "ListSnapshots": RpcRule(READ, _collection_if_named, listing=("snapshots", "collection")),
    "Upsert": RpcRule(WRITE),
    "UpsertStream": RpcRule(WRITE),  # each message's collection, as it arrives
    "Delete": RpcRule(WRITE),
    "UpdateAttributes": RpcRule(WRITE),
    "CreateCollection": RpcRule(ADMIN, _collection_name),
    "DeleteCollection": RpcRule(ADMIN, _collection_name),
    "Reindex": RpcRule(ADMIN),
    "SetAlias": RpcRule(ADMIN, _alias_and_collection),
    "DeleteAlias": RpcRule(ADMIN, _alias),
    "CreateSnapshot": RpcRule(ADMIN),
    # A snapshot is named by its own name: which collection it holds is not in the request.
    "DeleteSnapshot": RpcRule(ADMIN, _nothing, every_collection=True),
    "RestoreSnapshot": RpcRule(ADMIN, _nothing, every_collection=True),
}
RPC_RULES: dict[str, RpcRule] = {f"/{SERVICE_NAME}/{name}": rule for name, rule in _RULES.items()}
RPC_CLASSES: dict[str, RpcClass] = {method: rule.rpc_class for method, rule in RPC_RULES.items()}
# Classified ahead of their arrival (aliases and snapshots, API.md): the service may not have them yet.
ANNOUNCED_RPCS: frozenset[str] = frozenset(
    f"/{SERVICE_NAME}/{name}"
    for name in (
        "SetAlias",
        "DeleteAlias",
        "ListAliases",
        "CreateSnapshot",
        "ListSnapshots",
        "DeleteSnapshot",
        "RestoreSnapshot",
    )
)
WRITE_RPCS: frozenset[str] = frozenset(m for m, c in RPC_CLASSES.items() if c is not RpcClass.READ)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
OPEN_PREFIXES: tuple[str, ...] = (HEALTH_PREFIX, "/grpc.reflection.")

_EXPECTED = "send the metadata 'authorization: Bearer <key>' with a key from the server's API key file"
_NEEDS = {
    RpcClass.WRITE: "role write or admin (a read-write API key has admin)",
    RpcClass.ADMIN: "role admin (a read-write API key has it)",
}
_HASHED = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_GLOB_SPECIALS = re.compile(r"[?\[\]]")


class KeyEntry(NamedTuple):
    """One line of the key file: the key (or "sha256:HEX"), its role, and its patterns (none: every collection)."""

    key: str
    role: Role
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grant:
    """What one key may do: a role on the collections and aliases its patterns match (none: all of them)."""

    role: Role
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        regex = "|".join(".*".join(re.escape(part) for part in p.split("*")) for p in self.patterns)
        object.__setattr__(self, "_matcher", re.compile(f"(?:{regex})\\Z", re.DOTALL) if self.patterns else None)

    def covers(self, name: str) -> bool:
        matcher = self._matcher  # type: ignore[attr-defined]
        return matcher is None or matcher.match(name) is not None

    def describe(self) -> str:
        scope = f"collections {' '.join(self.patterns)}" if self.patterns else "all collections"
        return f"this key (role {self.role.value}, {scope})"


class KeyTable:
    """The keys of one key file, looked up in constant time."""

    def __init__(self, entries: Sequence[tuple[str, Role] | tuple[str, Role, tuple[str, ...]]]) -> None:
        self._keys = [(_key_digest(entry[0]), _grant(*entry[1:])) for entry in entries]

    def __len__(self) -> int:
        return len(self._keys)

    def grant(self, token: str | None) -> Grant | None:
        """The grant of the matching key; every key is compared, so timing does not tell which matched."""
        if token is None:
            return None
        digest = _digest(token)
        found: Grant | None = None
        for key_digest, grant in self._keys:
            if hmac.compare_digest(digest, key_digest) and found is None:
                found = grant
        return found


def _grant(role: Role, patterns: Sequence[str] = ()) -> Grant:
    """The grant of a key file line; the pattern '*' alone covers everything, as no pattern does."""
    return Grant(role, () if "*" in patterns else tuple(patterns))


def parse_key_file(path: Path) -> list[KeyEntry]:
    """Reads an API key file (syntax in the module docstring and docs/operations-keys.md).

    Raises:
        ConfigError: an unreadable file, a bad line (named by number, never by content), or no keys.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"option api_key_file: cannot read {path}: {exc}") from None
    keys: list[KeyEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"option api_key_file: {path} line {number}"
        key, role_word, patterns = words[0], (words[1] if len(words) > 1 else "read-write"), tuple(words[2:])
        if role_word not in ROLE_WORDS:
            raise ConfigError(
                f"{where}: expected 'KEY', 'KEY read-only', 'KEY read-write' or 'KEY ROLE [PATTERN ...]' "
                "with ROLE read, write or admin"
            )
        if key.startswith(_HASHED) and not _HEX_DIGEST.fullmatch(key[len(_HASHED) :]):
            raise ConfigError(f"{where}: a key written as sha256:HEX needs the 64 hex digits of the key's sha256")
        for pattern in patterns:
            if _GLOB_SPECIALS.search(pattern):
                raise ConfigError(
                    f"{where}: pattern {pattern!r}: only '*' is a wildcard in collection patterns ('?', '[' and ']' "
                    "are not allowed)"
                )
        keys.append(KeyEntry(key, ROLE_WORDS[role_word], patterns))
    if not keys:
        raise ConfigError(f"option api_key_file: {path} holds no keys; every call would be refused")
    return keys


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Refuses SearchService calls without a valid key, and calls the key's role or patterns do not allow.

    Args:
        keys: (key, role) or (key, role, patterns) entries, e.g. from parse_key_file().
    """

    def __init__(self, keys: Sequence[tuple[str, Role] | tuple[str, Role, tuple[str, ...]]]) -> None:
        self._table = KeyTable(keys)

    def replace(self, keys: Sequence[tuple[str, Role] | tuple[str, Role, tuple[str, ...]]]) -> None:
        """Swaps the whole key table at once; calls already running keep the grant they started with."""
        self._table = KeyTable(keys)

    def reload(self, path: Path) -> bool:
        """Reads the key file again and swaps the table; a bad file keeps the table in force (one log line)."""
        try:
            table = KeyTable(parse_key_file(path))
        except ConfigError as exc:
            log.error("API keys NOT reloaded, the previous %d keys stay in force: %s", len(self._table), exc)
            return False
        self._table = table
        log.info("API keys reloaded from %s: %d keys", path, len(table))
        return True

    def grant(self, authorization: str | None) -> Grant | None:
        """The grant of the key in an ``authorization: Bearer <key>`` value (a header or gRPC metadata), or None.

        The console's HTTP endpoints (semsearch_server.console) check their calls with this table and
        call_refusal(), so that an HTTP call and a gRPC call with the same key are allowed the same things.
        """
        return self._table.grant(_bearer_token([("authorization", authorization)] if authorization else None))

    def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        grant = self._table.grant(_bearer_token(handler_call_details.invocation_metadata))
        refused = call_refusal(grant, method)
        if refused is not None:
            return _refusing(handler, *refused)
        assert grant is not None  # call_refusal refuses a missing key
        rule = RPC_RULES[method]
        if not grant.patterns:
            return handler  # every collection: nothing to check per request, nothing to filter
        return _scoped(handler, method.rsplit("/", 1)[-1], rule, grant)


def call_refusal(grant: Grant | None, method: str) -> tuple[grpc.StatusCode, str] | None:
    """Why a caller with `grant` (None: no or an unknown key) may not call `method` at all, or None.

    What the request names is checked afterwards, by scope_refusal(), once it is decoded.
    """
    if grant is None:
        return grpc.StatusCode.UNAUTHENTICATED, f"missing or unknown API key: {_EXPECTED}"
    rule = RPC_RULES.get(method)
    if rule is None:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} is not classified as a read, write or admin RPC, so no API key may call it",
        )
    rpc = method.rsplit("/", 1)[-1]
    if rule.rpc_class not in ALLOWED[grant.role]:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{grant.describe()} may not call {rpc}: it needs {_NEEDS[rule.rpc_class]}",
        )
    if grant.patterns and rule.every_collection:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{grant.describe()} may not call {rpc}: it names no collection a key's patterns could cover, "
            "so it needs a key on all collections",
        )
    return None


def scope_refusal(grant: Grant, rpc: str, rule: RpcRule, request: Any) -> str | None:
    """Why `grant` may not make this request (a collection or alias outside its patterns), or None."""
    for kind, name in rule.targets(request):
        if not grant.covers(name):
            return f"{grant.describe()} may not call {rpc} on {kind} {name!r}"
    return None


def _scoped(handler: grpc.RpcMethodHandler, rpc: str, rule: RpcRule, grant: Grant) -> grpc.RpcMethodHandler:
    """`handler` checking each request's collections against `grant` and filtering listings by it.

    Requests that do not decode pass through untouched: the innermost interceptor refuses them (decoding.py).
    """
    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    def checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
        for request in requests:
            refusal = None if isinstance(request, MalformedRequest) else scope_refusal(grant, rpc, rule, request)
            if refusal is not None:
                # Raised where the servicer reads the stream: what came before is kept, as for a bad message.
                raise PermissionDenied(refusal)
            yield request

    def check(request: Any, context: grpc.ServicerContext) -> None:
        refusal = None if isinstance(request, MalformedRequest) else scope_refusal(grant, rpc, rule, request)
        if refusal is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    def behavior(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        if handler.request_streaming:
            request_or_iterator = checked_stream(request_or_iterator)
        else:
            check(request_or_iterator, context)
        response = inner(request_or_iterator, context)
        if rule.listing is not None and not handler.response_streaming:
            keep_covered(response, *rule.listing, grant)
        return response

    return handler_with_behavior(handler, behavior)


def keep_covered(response: Any, field: str, name_field: str, grant: Grant) -> None:
    """Drops the items of `response.<field>` whose `<name_field>` the grant does not cover."""
    items = getattr(response, field, None)
    if items is None:
        return
    kept = [item for item in items if grant.covers(getattr(item, name_field))]
    if len(kept) != len(items):
        del items[:]
        items.extend(kept)


def build_auth_interceptor(api_key_file: Path | None) -> ApiKeyInterceptor | None:
    """The interceptor for the configured key file, or None when authentication is off."""
    return None if api_key_file is None else ApiKeyInterceptor(parse_key_file(api_key_file))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _key_digest(key: str) -> bytes:
    """The digest a presented key must have: given in the file (sha256:HEX) or computed from the key."""
    if key.startswith(_HASHED) and _HEX_DIGEST.fullmatch(key[len(_HASHED) :]):
        return bytes.fromhex(key[len(_HASHED) :])
    return _digest(key)


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (so streams are read as streams) that aborts at once."""

    def refuse(request, context: grpc.ServicerContext):
        context.abort(code, message)

    return handler_with_behavior(handler, refuse)


def handler_with_behavior(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    """A copy of `handler` (same streaming kind and (de)serializers) that runs `behavior` instead."""
    factory: Callable[..., grpc.RpcMethodHandler]
    if handler.request_streaming and handler.response_streaming:
        factory = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    return factory(behavior, handler.request_deserializer, handler.response_serializer)
