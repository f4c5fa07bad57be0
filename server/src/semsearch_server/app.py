"""The running application: server up first (health NOT_SERVING), then model and collections, then SERVING."""

from __future__ import annotations

import gc
import logging
import time

import grpc
from grpc_health.v1 import health

from semsearch_server.config import ServerConfig
from semsearch_server.core.service import SearchService
from semsearch_server.store_health import StoreHealth
from semsearch_server.transport.auth import ApiKeyInterceptor, build_auth_interceptor
from semsearch_server.transport.observability import (
    MeteredEmbedder,
    Metrics,
    MetricsEndpoint,
    build_interceptors,
    start_metrics,
)
from semsearch_server.transport.server import create_server, set_health
from semsearch_server.transport.servicer import SearchServicer
from semsearch_server.transport.streams import StreamLimits

log = logging.getLogger(__name__)


class Application:
    """Owns the gRPC server and the service behind it.

    Args:
        config: the frozen configuration.
    """

    def __init__(self, config: ServerConfig, embedder=None, explainer=None) -> None:
        self.config = config
        self._embedder = embedder
        self._explainer = explainer
        self.servicer = SearchServicer(StreamLimits.from_config(config))
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.service: SearchService | None = None
        self.server: grpc.Server | None = None
        self.port = 0
        self.metrics = Metrics()
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.auth: ApiKeyInterceptor | None = None
        self.console = None  # semsearch_server.console.web.ConsoleServer when console_port is set
        self.store_health: StoreHealth | None = None

    def start(self) -> int:
        """Starts listening; every SearchService call answers UNAVAILABLE until load() finishes.

        Raises:
            OSError: a port is taken.
            ConfigError: an unusable API key file.
        """
        set_health(self.health, serving=False)
        self.auth = build_auth_interceptor(self.config.api_key_file)
        interceptors = build_interceptors(self.config, self.metrics, self.auth)
        self.server, self.port = create_server(self.config, self.servicer, self.health, interceptors)
        self.server.start()
        log.info("listening on %s:%d (health NOT_SERVING while loading)", self.config.host, self.port)
        self._metrics_endpoint = start_metrics(self.config, self.metrics)
        if self._metrics_endpoint is not None:
            log.info("metrics at http://%s:%d/metrics", self.config.host, self._metrics_endpoint.port)
        if self.config.console_port is not None:
            # Imported only when asked for: a server without a console does not load Starlette and uvicorn.
            from semsearch_server.console.web import start_console

            self.console = start_console(self.servicer, self.auth, self.config.host, self.config.console_port)
            log.info("console at http://%s:%d/", _url_host(self.config.host), self.console.port)
        return self.port

    def reload_api_keys(self) -> bool:
        """Reads the API key file again (SIGHUP): the new table replaces the old one at once, connections and
        calls in flight are untouched; a bad file keeps the old table and logs why. False when nothing changed."""
        if self.config.api_key_file is None:
            log.warning("SIGHUP: no API key file is configured (api_key_file), so there are no keys to reload")
            return False
        if self.auth is None:
            log.warning("SIGHUP before the server started: the key file is read as it starts")
            return False
        return self.auth.reload(self.config.api_key_file)

    def load(self) -> SearchService:
        """Loads the model and recovers every collection, then reports SERVING."""
        started = time.monotonic()
        from semsearch_server.wiring import build_service, return_free_memory

        self.service = build_service(
            self.config, self._embedder, self._explainer, observe=lambda inner: MeteredEmbedder(inner, self.metrics)
        )
        self.metrics.watch_collections(self.service.list_collections)
        self.metrics.load_seconds.set(time.monotonic() - started)
        # What start-up allocated (modules, models, collections) lives as long as the process: moved out
        # of the collector's sight, later collections walk only what requests allocate, not all of it.
        gc.collect()
        return_free_memory()
        gc.freeze()
        self.servicer.attach(self.service)
        set_health(self.health, serving=True)
        # From here on health also follows the store: NOT_SERVING while Milvus cannot be reached.
        self.store_health = StoreHealth(
            getattr(self.service.registry.provider, "ping", None), lambda up: set_health(self.health, serving=up)
        )
        self.servicer.on_store_unreachable = self.store_health.unreachable
        self.store_health.start()
        log.info("serving after %.1fs of loading", time.monotonic() - started)
        return self.service

    def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING, no new calls, in-flight calls finish, collections flushed."""
        grace = self.config.grace_seconds if grace is None else grace
        if self.store_health is not None:
            self.store_health.stop()  # it must not report SERVING again while draining
        set_health(self.health, serving=False)
        if self.server is not None:
            self.server.stop(grace).wait()
        if self.console is not None:
            self.console.stop()
            self.console = None
        self.servicer.detach("the server is shutting down")
        self.metrics.watch_collections(None)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
            self._metrics_endpoint = None
        if self.service is not None:
            self.service.close()
            self.service = None
        log.info("stopped")


def _url_host(host: str) -> str:
    """The host to print in a URL: a wildcard address is reached as localhost."""
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host
