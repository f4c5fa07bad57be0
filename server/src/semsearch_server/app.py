"""The running application: server up first (health NOT_SERVING), then model and collections, then SERVING."""

from __future__ import annotations

import logging
import time

import grpc
from grpc_health.v1 import health

from semsearch_server.config import ServerConfig
from semsearch_server.core.registry import CollectionRegistry
from semsearch_server.core.service import SearchService
from semsearch_server.transport.server import create_server, set_health
from semsearch_server.transport.servicer import SearchServicer

log = logging.getLogger(__name__)


class Application:
    """Owns the gRPC server and the service behind it.

    Args:
        config: the frozen configuration.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.servicer = SearchServicer()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.service: SearchService | None = None
        self.server: grpc.Server | None = None
        self.port = 0

    def start(self) -> int:
        """Starts listening; every SearchService call answers UNAVAILABLE until load() finishes."""
        set_health(self.health, serving=False)
        self.server, self.port = create_server(self.config, self.servicer, self.health)
        self.server.start()
        log.info("listening on %s:%d (health NOT_SERVING while loading)", self.config.host, self.port)
        return self.port

    def load(self) -> SearchService:
        """Loads the model and recovers every collection, then reports SERVING."""
        started = time.monotonic()
        from semsearch_server.wiring import build_service

        self.service = build_service(self.config)
        self.servicer.attach(self.service)
        set_health(self.health, serving=True)
        log.info("serving after %.1fs of loading", time.monotonic() - started)
        return self.service

    def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING, no new calls, in-flight calls finish, collections flushed."""
        grace = self.config.grace_seconds if grace is None else grace
        set_health(self.health, serving=False)
        if self.server is not None:
            self.server.stop(grace).wait()
        self.servicer.detach("the server is shutting down")
        if self.service is not None:
            self.service.close()
            self.service = None
        log.info("stopped")


def build_registry(config: ServerConfig, fingerprint) -> CollectionRegistry:
    registry = CollectionRegistry(config.data_dir, fingerprint, config.snapshot_every)
    registry.load_all()
    return registry
