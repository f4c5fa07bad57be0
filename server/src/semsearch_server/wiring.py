"""Builds the concrete objects behind the service from the configuration (heavy imports live here)."""

from __future__ import annotations

import logging
from pathlib import Path

from semsearch.demo import DEMO_COLLECTION, DEMO_DOCUMENTS

from semsearch_server.config import ServerConfig
from semsearch_server.core.registry import CollectionRegistry
from semsearch_server.core.service import SearchService
from semsearch_server.domain import CollectionSettings, Document, PassageConfig
from semsearch_server.embedding.batching import MicroBatchingEmbedder
from semsearch_server.embedding.passages import PassageSplitter
from semsearch_server.errors import AlreadyExists
from semsearch_server.index.faiss_store import LocalStoreProvider

log = logging.getLogger(__name__)


def build_embedder(config: ServerConfig):
    """The configured backend's embedder, and the torch embedder behind it (Explain needs torch)."""
    from semsearch_server.embedding.factory import build_embedder as build_backend
    from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder, default_model_path

    model_path = config.model or default_model_path()
    reference = SentenceTransformerEmbedder(model_path)
    log.info("model %s loaded: %s", model_path, reference.fingerprint.short())
    embedder = build_backend(
        model_path,
        config.backend,
        cache_dir=config.model_cache_dir,
        threads=config.threads or None,
        reference=reference,
        # Any group the micro-batcher forms may go to ONNX Runtime while OpenVINO runs a bulk request.
        small_max_texts_while_busy=config.batch_max_size,
    )
    return embedder, reference


def build_service(config: ServerConfig, embedder=None, explainer=None, observe=None) -> SearchService:
    """Builds the service.

    Args:
        embedder, explainer: already loaded ones (tests share one model this way); built from the
            config when embedder is None.
        observe: wraps the model-facing embedder (metrics see the batches the model really runs).
    """
    if embedder is None:
        embedder, reference = build_embedder(config)
        explainer = _build_explainer(reference)
    if observe is not None:
        embedder = observe(embedder)
    # With two engines (routing.py), an upsert on the batch engine need not hold up searches.
    bulk_lane = bool(getattr(embedder, "serves_small_calls_while_busy", False))
    embedder = MicroBatchingEmbedder(embedder, config.batch_max_size, config.batch_max_wait_ms, bulk_lane)
    splitter = build_splitter(config, embedder)
    default_settings = CollectionSettings(passages=splitter.resolve(PassageConfig()).as_config())
    provider = build_store_provider(config)
    registry = CollectionRegistry(provider, embedder.fingerprint, default_settings)
    registry.load_all()
    service = SearchService(embedder, registry, config.limits, explainer, splitter)
    if config.seed_demo:
        seed_demo(service)
    return service


def build_store_provider(config: ServerConfig):
    """Where the collections live: the data directory, or a Milvus (pymilvus imported only then)."""
    if config.store == "milvus":
        from semsearch_server.index.milvus_store import MilvusStoreProvider

        token = config.milvus_token
        if token.startswith("@"):
            token = Path(token[1:]).read_text().strip()
        return MilvusStoreProvider(config.milvus_uri, token, config.milvus_prefix)
    return LocalStoreProvider(config.data_dir, config.snapshot_every)


def build_splitter(config: ServerConfig, embedder) -> PassageSplitter:
    """The passage splitter of the model the embedder runs (its own tokenizer, nothing heavier)."""
    from semsearch_server.embedding.sentence_transformer import default_model_path

    model_path = getattr(embedder, "model_path", None) or config.model or default_model_path()
    return PassageSplitter.for_model(model_path, embedder.max_seq_length)


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
        service.create_collection(DEMO_COLLECTION, CollectionSettings())
    except AlreadyExists:
        pass
    store = service.registry.get(DEMO_COLLECTION)
    if store.count() == 0:
        service.upsert(DEMO_COLLECTION, [Document(i, t, m) for i, t, m in DEMO_DOCUMENTS])
        log.info("seeded collection %r with %d demo documents", DEMO_COLLECTION, len(DEMO_DOCUMENTS))
