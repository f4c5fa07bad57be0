"""JSON in, the SearchServicer's own method, JSON out: the console's calls are the gRPC API's calls.

A call names an RPC and carries its request in the protobuf JSON mapping (``{"query": "...", "topK": 5}``); the
request is parsed into the RPC's protobuf message, checked against the caller's API key exactly as the gRPC
interceptor checks it (transport/auth.py), handed to the servicer's method, and its response is returned as
protobuf JSON. Nothing here searches, ranks or explains: there is one copy of that, behind the servicer.
Only the read RPCs are reachable: the console looks, it does not write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from semsearch.v1 import search_service_pb2 as pb

from semsearch_server.transport.auth import (
    RPC_RULES,
    ApiKeyInterceptor,
    RpcClass,
    call_refusal,
    keep_covered,
    scope_refusal,
)
from semsearch_server.transport.server import SERVICE_NAME
from semsearch_server.transport.servicer import SearchServicer

# gRPC status -> HTTP status, as Google's HTTP mapping of google.rpc.Code has it.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

_SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"]


@dataclass(frozen=True)
class Reply:
    """An HTTP status and the JSON body to send with it."""

    status: int
    body: dict[str, Any]


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _CallContext:
    """The part of grpc.ServicerContext the servicer's unary methods use."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Aborted(code, details)

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return self._peer


def error_reply(code: grpc.StatusCode, message: str) -> Reply:
    """The error body of Google's JSON APIs: {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message"}}."""
    status = HTTP_STATUS.get(code, 500)
    return Reply(status, {"error": {"code": status, "status": code.name, "message": message}})


def _unary_read_rpcs(servicer: SearchServicer) -> dict[str, Any]:
    """Each read RPC the servicer implements, unary in both directions: name -> its method descriptor."""
    out = {}
    for method in _SERVICE.methods:
        rule = RPC_RULES.get(f"/{SERVICE_NAME}/{method.name}")
        streaming = method.client_streaming or method.server_streaming
        if rule is not None and rule.rpc_class is RpcClass.READ and not streaming and hasattr(servicer, method.name):
            out[method.name] = method
    return out


class JsonGateway:
    """Calls the servicer's read RPCs for JSON requests, with the gRPC server's API keys.

    Args:
        servicer: the servicer the gRPC server serves (the same object, so the same service and state).
        auth: the gRPC server's key check; None when the server runs without API keys.
    """

    def __init__(self, servicer: SearchServicer, auth: ApiKeyInterceptor | None) -> None:
        self._servicer = servicer
        self._auth = auth
        self._methods = _unary_read_rpcs(servicer)

    @property
    def rpcs(self) -> list[str]:
        return sorted(self._methods)

    def call(self, rpc: str, body: bytes, authorization: str | None, peer: str = "http") -> Reply:
        """One call: `body` is the request in protobuf JSON (empty: the default request).

        Args:
            rpc: the RPC's name, e.g. "Search".
            body: the request as JSON bytes.
            authorization: the request's Authorization header (``Bearer <key>``), if any.
            peer: who called, for the servicer's logs.
        """
        method = self._methods.get(rpc)
        if method is None:
            return error_reply(
                grpc.StatusCode.NOT_FOUND, f"no RPC {rpc!r} here; the console serves {', '.join(self.rpcs)}"
            )
        full_name = f"/{SERVICE_NAME}/{rpc}"
        grant = None
        if self._auth is not None:
            # The same check as the interceptor's, in the same order: the key, then what the request names.
            grant = self._auth.grant(authorization)
            refused = call_refusal(grant, full_name)
            if refused is not None:
                return error_reply(*refused)
        request = message_factory.GetMessageClass(method.input_type)()
        try:
            json_format.Parse(body.decode("utf-8") if body else "{}", request)
        except (json_format.ParseError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error_reply(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the body is not a {method.input_type.full_name} in the protobuf JSON mapping: {exc}",
            )
        rule = RPC_RULES[full_name]
        if grant is not None and grant.patterns:
            refusal = scope_refusal(grant, rpc, rule, request)
            if refusal is not None:
                return error_reply(grpc.StatusCode.PERMISSION_DENIED, refusal)
        try:
            response = getattr(self._servicer, rpc)(request, _CallContext(peer))
        except _Aborted as exc:
            return error_reply(exc.code, exc.details)
        if grant is not None and grant.patterns and rule.listing is not None:
            keep_covered(response, *rule.listing, grant)
        return Reply(200, json_format.MessageToDict(response, always_print_fields_with_no_presence=True))
