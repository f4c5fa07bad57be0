"""Requests whose bytes are not a valid message: INVALID_ARGUMENT with the reason, not gRPC's own INTERNAL.

gRPC Python answers a request its deserializer cannot decode with INTERNAL ("Exception deserializing
request!"), which says the server broke, not the caller. This interceptor swaps each method's deserializer for
one that hands a `MalformedRequest` on instead of raising, and refuses that request as malformed input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from semsearch_server.errors import InvalidArgument
from semsearch_server.transport.errors import status_details, status_for


@dataclass(frozen=True)
class MalformedRequest:
    """What the deserializer returns for bytes that do not decode as the method's request type."""

    error: InvalidArgument


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.full_name if type_name is not None else "request"

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return MalformedRequest(
                InvalidArgument(
                    f"the request is not a valid {type_name} message ({exc or 'it does not decode'}); "
                    "send a message encoded from the service's proto (string fields must be valid UTF-8)"
                )
            )

    return decode


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, MalformedRequest):
            raise request.error  # the servicer maps it like any domain error, after the messages before it
        yield request


def _refusing(behavior: Callable, streaming_requests: bool) -> Callable:
    if streaming_requests:
        return lambda requests, context: behavior(_checked_stream(requests), context)

    def unary(request, context: grpc.ServicerContext):
        if isinstance(request, MalformedRequest):
            context.abort(status_for(request.error), status_details(request.error))
        return behavior(request, context)

    return unary


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Refuses undecodable requests with INVALID_ARGUMENT; innermost, so authentication still comes first."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        behaviors = {
            name: _refusing(getattr(handler, name), handler.request_streaming)
            for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(handler, name) is not None
        }
        return handler._replace(request_deserializer=tolerant(handler.request_deserializer), **behaviors)
