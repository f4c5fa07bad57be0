"""API-key authentication: a gRPC server interceptor in front of every SearchService call.

The key file (``--api-key-file``) holds one key per line::

    # comments start with '#', blank lines are ignored
    s3cr3t-writer-key              # no role: read-write
    s3cr3t-writer-key read-write   # the same, spelled out
    s3cr3t-reader-key read-only    # may call every RPC except the writes

A key is any run of characters without whitespace or '#'. Clients send it as the metadata
``authorization: Bearer <key>``. A missing or unknown key is UNAUTHENTICATED. Every SearchService RPC is
classified in RPC_CLASSES as a read or a write: a read-only key calling a write RPC is PERMISSION_DENIED,
and so is any key calling an RPC that is not classified (a new RPC is closed until someone decides what it
is; a test checks that the table covers the service exactly). The health and reflection services stay open
so that probes and grpcurl work without a key. Keys are compared in constant time and never logged or
echoed.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from semsearch_server.config import ConfigError
from semsearch_server.transport.server import SERVICE_NAME


class RpcClass(enum.Enum):
    READ = "read"  # changes nothing: any valid key
    WRITE = "write"  # changes documents or collections: a read-write key


RPC_CLASSES: dict[str, RpcClass] = {
    f"/{SERVICE_NAME}/{name}": rpc_class
    for name, rpc_class in {
        "Upsert": RpcClass.WRITE,
        "UpsertStream": RpcClass.WRITE,
        "Delete": RpcClass.WRITE,
        "Get": RpcClass.READ,
        "Search": RpcClass.READ,
        "BatchSearch": RpcClass.READ,
        "Explain": RpcClass.READ,
        "Embed": RpcClass.READ,
        "CreateCollection": RpcClass.WRITE,
        "ListCollections": RpcClass.READ,
        "DeleteCollection": RpcClass.WRITE,
        "GetInfo": RpcClass.READ,
        "Reindex": RpcClass.WRITE,
        "Count": RpcClass.READ,
        "Scroll": RpcClass.READ,
        "UpdateAttributes": RpcClass.WRITE,
        "SetAlias": RpcClass.WRITE,
        "DeleteAlias": RpcClass.WRITE,
        "ListAliases": RpcClass.READ,
        "CreateSnapshot": RpcClass.WRITE,
        "ListSnapshots": RpcClass.READ,
        "DeleteSnapshot": RpcClass.WRITE,
        "RestoreSnapshot": RpcClass.WRITE,
    }.items()
}
WRITE_RPCS: frozenset[str] = frozenset(m for m, c in RPC_CLASSES.items() if c is RpcClass.WRITE)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
OPEN_PREFIXES: tuple[str, ...] = (HEALTH_PREFIX, "/grpc.reflection.")

_EXPECTED = "send the metadata 'authorization: Bearer <key>' with a key from the server's API key file"


class Role(enum.Enum):
    READ_ONLY = "read-only"
    READ_WRITE = "read-write"


ALLOWED: dict[Role, frozenset[RpcClass]] = {
    Role.READ_ONLY: frozenset({RpcClass.READ}),
    Role.READ_WRITE: frozenset(RpcClass),
}


@dataclass(frozen=True)
class _Key:
    digest: bytes  # sha256 of the key: equal lengths, so compare_digest reveals nothing about length
    role: Role


def parse_key_file(path: Path) -> list[tuple[str, Role]]:
    """Reads an API key file (syntax in the module docstring).

    Raises:
        ConfigError: an unreadable file, a bad line (named by number, never by content), or no keys.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"option api_key_file: cannot read {path}: {exc}") from None
    roles = {r.value: r for r in Role}
    keys: list[tuple[str, Role]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1] not in roles):
            raise ConfigError(
                f"option api_key_file: {path} line {number}: expected 'KEY' or 'KEY read-only' or 'KEY read-write'"
            )
        keys.append((words[0], roles[words[1]] if len(words) == 2 else Role.READ_WRITE))
    if not keys:
        raise ConfigError(f"option api_key_file: {path} holds no keys; every call would be refused")
    return keys


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Refuses SearchService calls without a valid key; read-only keys may not call write RPCs.

    Args:
        keys: (key, role) pairs, e.g. from parse_key_file().
    """

    def __init__(self, keys: Sequence[tuple[str, Role]]) -> None:
        self._keys = [_Key(_digest(key), role) for key, role in keys]

    def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        role = self._role(_bearer_token(handler_call_details.invocation_metadata))
        if role is None:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, f"missing or unknown API key: {_EXPECTED}")
        rpc_class = RPC_CLASSES.get(method)
        if rpc_class is None:
            return _refusing(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not classified as a read or a write RPC, so no API key may call it",
            )
        if rpc_class not in ALLOWED[role]:
            rpc = method.rsplit("/", 1)[-1]
            return _refusing(
                handler, grpc.StatusCode.PERMISSION_DENIED, f"{rpc} needs a read-write API key; this key is read-only"
            )
        return handler

    def _role(self, token: str | None) -> Role | None:
        """The role of the matching key; every key is compared, so timing does not tell which matched."""
        if token is None:
            return None
        digest = _digest(token)
        found: Role | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key.role
        return found


def build_auth_interceptor(api_key_file: Path | None) -> ApiKeyInterceptor | None:
    """The interceptor for the configured key file, or None when authentication is off."""
    return None if api_key_file is None else ApiKeyInterceptor(parse_key_file(api_key_file))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


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
