"""Prometheus metrics and one structured access-log line per call.

Every Application owns a `Metrics` with its own CollectorRegistry, so several servers in one process
(tests) never share counters. The access interceptor sits outermost, so calls refused by the API-key
check are logged and counted too. Access lines never hold texts, queries or keys: only the RPC, the
collection, the status code, the duration, message sizes and the peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from semsearch_server.config import ServerConfig
from semsearch_server.domain import CollectionStatus
from semsearch_server.embedding.base import Embedder, EmbedderWrapper
from semsearch_server.transport.auth import (
    HEALTH_PREFIX,
    ApiKeyInterceptor,
    build_auth_interceptor,
    handler_with_behavior,
)
from semsearch_server.transport.deadlines import DeadlineInterceptor

access_log = logging.getLogger("semsearch_server.access")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _CollectionDocuments(Collector):
    """semsearch_collection_documents, read from the live registry at every scrape."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[CollectionStatus]] | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        source = self.source
        for status in source() if source is not None else ():
            family.add_metric([status.name], status.document_count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "semsearch_collection_documents", "Documents stored per collection", labels=["collection"]
        )


class Metrics:
    """The server's Prometheus metrics, in a registry of their own.

    Attributes:
        registry: what the metrics endpoint serves.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "semsearch_grpc_requests",
            "Finished gRPC calls by RPC and status code",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "semsearch_grpc_request_duration_seconds",
            "Time from a call's start to its status, per RPC",
            ["grpc_service", "grpc_method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embedding_batch = Histogram(
            "semsearch_embedding_batch_size",
            "Texts per encode call of the embedder",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.embedding_latency = Histogram(
            "semsearch_embedding_duration_seconds",
            "Time per encode call of the embedder",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "semsearch_load_seconds",
            "Seconds the last start-up load took: the model (unless shared) and opening and recovering "
            "every collection",
            registry=self.registry,
        )
        self._collections = _CollectionDocuments()
        self.registry.register(self._collections)

    def observe_call(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Counts one finished call; `method` is the gRPC path, /package.Service/Method."""
        service, _, rpc = method.lstrip("/").partition("/")
        self.requests.labels(service, rpc, code.name).inc()
        self.latency.labels(service, rpc).observe(seconds)

    def observe_embedding_batch(self, size: int, seconds: float) -> None:
        """Records one encode call of `size` texts that took `seconds`."""
        self.embedding_batch.observe(size)
        self.embedding_latency.observe(seconds)

    def watch_collections(self, source: Callable[[], Iterable[CollectionStatus]] | None) -> None:
        """Where the documents-per-collection gauge reads from at scrape time; None: no samples."""
        self._collections.source = source


class MeteredEmbedder(EmbedderWrapper):
    """An Embedder that records the size and duration of every encode() call in `metrics`.

    Args:
        inner: the embedder doing the work.
        metrics: where batch sizes and encode latency go.
    """

    def __init__(self, inner: Embedder, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    def encode(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.encode(texts)
        finally:
            self._metrics.observe_embedding_batch(len(texts), time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        # Concrete embedders carry more than the protocol (model, model_path, close); pass those through.
        return getattr(self.inner, name)


@dataclass
class _Call:
    """What the access line and the metrics need to know about one call."""

    method: str
    started: float
    collection: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0

    def saw_request(self, request: Any) -> None:
        self.request_bytes += _size(request)
        if self.collection is None:
            self.collection = _collection_of(request)


class AccessInterceptor(grpc.ServerInterceptor):
    """Logs one line per call to `semsearch_server.access` and counts it in `metrics`.

    Health checks are logged at DEBUG so that container probes do not flood the log; every call is counted.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        streaming_in = handler.request_streaming

        def requests(call: _Call, request_or_iterator: Any) -> Any:
            if not streaming_in:
                call.saw_request(request_or_iterator)
                return request_or_iterator
            return _counted(request_or_iterator, call)

        def unary_response(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(method, time.perf_counter())
            failed = True
            try:
                response = inner(requests(call, request_or_iterator), context)
                call.response_bytes = _size(response)
                failed = False
                return response
            finally:
                self._finish(call, _status(context, failed), context.peer())

        def stream_response(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(method, time.perf_counter())
            code: grpc.StatusCode | None = None
            try:
                for response in inner(requests(call, request_or_iterator), context):
                    call.response_bytes += _size(response)
                    yield response
                code = _status(context, failed=False)
            except GeneratorExit:  # the client went away mid-stream
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self._finish(call, code or _status(context, failed=True), context.peer())

        return handler_with_behavior(handler, stream_response if handler.response_streaming else unary_response)

    def _finish(self, call: _Call, code: grpc.StatusCode, peer: str) -> None:
        seconds = time.perf_counter() - call.started
        self._metrics.observe_call(call.method, code, seconds)
        fields: dict[str, Any] = {"rpc": call.method}
        if call.collection is not None:
            fields["collection"] = call.collection
        fields.update(
            code=code.name,
            duration_ms=round(seconds * 1000, 3),
            request_bytes=call.request_bytes,
            response_bytes=call.response_bytes,
            peer=peer,
        )
        level = logging.DEBUG if call.method.startswith(HEALTH_PREFIX) else logging.INFO
        access_log.log(level, " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})


def build_interceptors(
    config: ServerConfig, metrics: Metrics, auth: ApiKeyInterceptor | None = None
) -> list[grpc.ServerInterceptor]:
    """Access log and metrics outermost (refused calls are logged and counted), then the API-key check, then
    the deadline handed to the code below (the embedding batcher).

    Args:
        auth: the API-key check to use (the application keeps it to reload the keys); built from the
            config's key file when None.

    Raises:
        ConfigError: an unusable API key file.
    """
    if auth is None:
        auth = build_auth_interceptor(config.api_key_file)
    return [AccessInterceptor(metrics), *([auth] if auth is not None else []), DeadlineInterceptor()]


class MetricsEndpoint:
    """The running Prometheus HTTP endpoint; `stop()` closes it."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self._httpd, self._thread = start_http_server(config.metrics_port, addr=config.host, registry=metrics.registry)
        self.port = config.metrics_port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics(config: ServerConfig, metrics: Metrics) -> MetricsEndpoint | None:
    """Serves `metrics` on http://<host>:<metrics_port>/metrics, or nothing when metrics_port is 0.

    Raises:
        OSError: the port is taken.
    """
    return MetricsEndpoint(config, metrics) if config.metrics_port else None


def _counted(requests: Iterator[Any], call: _Call) -> Iterator[Any]:
    for request in requests:
        call.saw_request(request)
        yield request


def _status(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    # abort() and set_code() leave the code on the context; an exception without one is UNKNOWN.
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _size(message: Any) -> int:
    byte_size = getattr(message, "ByteSize", None)
    return byte_size() if callable(byte_size) else 0


def _collection_of(request: Any) -> str | None:
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None or not descriptor.full_name.startswith("semsearch."):
        return None
    for field in ("collection", "name"):  # CreateCollection and DeleteCollection call it `name`
        if field in descriptor.fields_by_name:
            return getattr(request, field)
    return None
