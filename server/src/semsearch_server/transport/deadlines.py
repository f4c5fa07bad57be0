"""Hands each call's gRPC deadline to the code below the transport (``semsearch_server.deadlines``)."""

from __future__ import annotations

from typing import Any

import grpc

from semsearch_server.deadlines import caller_deadline
from semsearch_server.transport.auth import handler_with_behavior

# grpc reports "no deadline" as a huge time remaining on some versions, None on others.
_NO_DEADLINE_AFTER = 10 * 365 * 24 * 3600.0


class DeadlineInterceptor(grpc.ServerInterceptor):
    """Runs every unary-response handler inside caller_deadline(context.time_remaining())."""

    def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler.response_streaming:
            return handler  # every SearchService RPC answers with one message
        inner = handler.unary_unary or handler.stream_unary

        def with_deadline(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            seconds = context.time_remaining()
            with caller_deadline(None if seconds is None or seconds > _NO_DEADLINE_AFTER else seconds):
                return inner(request_or_iterator, context)

        return handler_with_behavior(handler, with_deadline)
