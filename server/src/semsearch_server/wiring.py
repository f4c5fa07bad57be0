"""Builds the concrete objects behind the service from the configuration (heavy imports live here)."""

from __future__ import annotations

import logging

from semsearch.demo import DEMO_COLLECTION, DEMO_DOCUMENTS
from semsearch_server.config import ServerConfig
from semsearch_server.core.models import Document, IndexSpec
from semsearch_server.core.registry import CollectionRegistry
from semsearch_server.core.service import SearchService
from semsearch_server.errors import AlreadyExists

log = logging.getLogger(__name__)


def build_embedder(config: ServerConfig):
    from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder, default_model_path

    model_path = config.model or default_model_path()
    embedder = SentenceTransformerEmbedder(model_path)
    log.info("model %s loaded: %s", model_path, embedder.fingerprint.short())
    return embedder


def build_service(config: ServerConfig, embedder=None, explainer=None) -> SearchService:
    """Builds the service; tests pass an already loaded embedder (and explainer) to share one model."""
    if embedder is None:
        embedder = build_embedder(config)
        explainer = _build_explainer(embedder)
    registry = CollectionRegistry(config.data_dir, embedder.fingerprint, config.snapshot_every)
    registry.load_all()
    service = SearchService(embedder, registry, config.limits, explainer)
    if config.seed_demo:
        seed_demo(service)
    return service


def _build_explainer(embedder):
    try:
        from semsearch_server.embedding.explain import Explainer
    except ImportError:
        log.warning("Explain is unavailable: semsearch_server.embedding.explain could not be imported")
        return None
    return Explainer(embedder.model, embedder.model_path)


def seed_demo(service: SearchService) -> None:
    """Fills the demo collection with the seed contexts if it is empty."""
    try:
        service.create_collection(DEMO_COLLECTION, IndexSpec())
    except AlreadyExists:
        pass
    store = service.registry.get(DEMO_COLLECTION)
    if store.count() == 0:
        service.upsert(DEMO_COLLECTION, [Document(i, t, m) for i, t, m in DEMO_DOCUMENTS])
        log.info("seeded collection %r with %d demo documents", DEMO_COLLECTION, len(DEMO_DOCUMENTS))
