"""Builds the concrete objects behind the service from the configuration (heavy imports live here)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from semsearch.demo import DEMO_COLLECTION, DEMO_DOCUMENTS

from semsearch_server.config import ServerConfig
from semsearch_server.core.registry import CollectionRegistry
from semsearch_server.core.service import SearchService
from semsearch_server.domain import CollectionSettings, Document, PassageConfig
from semsearch_server.embedding.batching import MicroBatchingEmbedder
from semsearch_server.embedding.passages import PassageSplitter
from semsearch_server.errors import AlreadyExists, Unavailable
from semsearch_server.index.local_provider import LocalStoreProvider

log = logging.getLogger(__name__)

# A first start's background work yields to serving (benchmarks/first_start.py, 2-core machine, SciFact
# import and one searcher). The ONNX Runtime export and the attention export, made while OpenVINO serves,
# run 10 steps nicer; the batches on OpenVINO between the two switches 3 steps nicer than the queries on
# its single-query twin. With neither, Search from SERVING to the last switch ran at 0.67-0.89x the plain
# loop's speed (12.8 ms a twin query under back-to-back batches against 3.9 ms alone); with both, six
# runs: Search 0.98-1.41x (median 1.23x), ingest 1.40-1.82x, the last switch 9.8-10.9 s after SERVING.
# The batches at 10 steps cut ingest to 0.86x; the exports at 10 alone did not help Search (0.77-0.80x).
# The conversion to OpenVINO, before the first switch, keeps the caller's priority: until it is done
# there is no faster engine, and delaying it only lengthens the slowest phase.
FIRST_START_BUILD_NICENESS = 10
FIRST_START_BATCH_NICENESS = 3


@contextmanager
def start_up_phase(name: str) -> Iterator[None]:
    """Logs how long one phase of the start-up took ("start-up: <name> in 1.23s")."""
    started = time.monotonic()
    yield
    log.info("start-up: %s in %.2fs", name, time.monotonic() - started)


def build_embedder(config: ServerConfig):
    """The configured backend's embedder, and the ModelReference behind it (torch loaded only if needed).

    On a first start with the "auto" backend (the model not yet described in the cache, so torch is
    loaded already) the embedder is a SwitchingEmbedder serving on torch: `build_service` builds the
    fast engines in the background and switches to them (switching.py).
    """
    from semsearch_server.embedding.factory import build_embedder as build_backend
    from semsearch_server.embedding.reference import ModelReference
    from semsearch_server.embedding.sentence_transformer import default_model_path
    from semsearch_server.embedding.switching import Interim, SwitchingEmbedder

    model_path = config.model or default_model_path()
    with start_up_phase("model description"):
        reference = ModelReference(model_path, config.model_cache_dir)
    log.info("model %s: %s", model_path, reference.fingerprint.short())
    if config.backend == "auto" and reference.torch_loaded:
        log.info("first start: serving on torch while the fast engines are built in the background")
        torch_engine = build_backend(model_path, "torch", cache_dir=config.model_cache_dir,
                                     threads=config.threads or None, reference=reference)  # fmt: skip
        return SwitchingEmbedder(Interim(torch_engine, torch_engine, config.batch_max_size)), reference
    with start_up_phase("embedding backends"):
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
    finish_first_start = None
    if embedder is None:
        from semsearch_server.embedding.switching import SwitchingEmbedder, SwitchingExplainer

        embedder, reference = build_embedder(config)
        if isinstance(embedder, SwitchingEmbedder):
            explainer = SwitchingExplainer(_serving_explainer(embedder.inner, reference, config))
            finish_first_start = _first_start_finisher(embedder, explainer, reference, config)
        else:
            explainer = _serving_explainer(embedder, reference, config)
            if reference.torch_loaded and embedder is not reference.torch:
                _settle_first_start(reference, config)
    if observe is not None:
        embedder = observe(embedder)
    # With two engines (routing.py), an upsert on the batch engine need not hold up searches; None asks
    # the embedder on each call, as a first start switches engines while serving.
    embedder = MicroBatchingEmbedder(embedder, config.batch_max_size, config.batch_max_wait_ms, bulk_lane=None)
    splitter = build_splitter(config, embedder)
    default_settings = CollectionSettings(passages=splitter.resolve(PassageConfig()).as_config())

    def open_collections() -> CollectionRegistry:
        registry = CollectionRegistry(build_store_provider(config), embedder.fingerprint, default_settings)
        registry.load_all()
        return registry

    with start_up_phase("collections"):
        registry = until_reachable(open_collections)
    service = SearchService(embedder, registry, config.limits, explainer, splitter)
    if config.seed_demo:
        seed_demo(service)
    if finish_first_start is not None:
        threading.Thread(target=finish_first_start, name="first-start-engines", daemon=True).start()
    return service


def until_reachable(open_collections: Callable[[], CollectionRegistry], first_wait: float = 1.0) -> CollectionRegistry:
    """Opens the collections, retrying while their store is unreachable (a Milvus that is not up yet).

    The port is already open and health says NOT_SERVING meanwhile, so an orchestrator sees a replica
    that is alive but not ready, rather than one that crashed.
    """
    wait = first_wait
    while True:
        try:
            return open_collections()
        except Unavailable as exc:
            log.warning("collections unavailable (%s); NOT_SERVING, retrying in %.0fs", exc, wait)
            time.sleep(wait)
            wait = min(30.0, wait * 2)


def build_store_provider(config: ServerConfig):
    """Where the collections live: the data directory, or a Milvus (pymilvus imported only then)."""
    if config.store == "milvus":
        from semsearch_server.index.milvus_provider import MilvusStoreProvider

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


def _first_start_finisher(switching, explainer, reference, config: ServerConfig) -> Callable[[], None]:
    """What a first start does after SERVING: builds and checks the fast engines (exports, agreement
    with torch), switches the embedder and the explainer to them, then settles (`_settle`).

    The first engine that agrees is switched to at once; when it is OpenVINO, ONNX Runtime (the
    engine for single queries, whose fused export takes as long again) is built after that, while
    OpenVINO serves, and joins it in a second switch (benchmarks/first_start.py: under a SciFact import
    on the shared 2-core machine, the one switch there was came 42 s after SERVING; OpenVINO alone now
    comes 7-12 s after it). Until then small requests do not queue behind the bulk ones (`Interim`): torch
    answers them beside, then OpenVINO compiled for single queries. Meanwhile the batches and the exports
    still to make run at a lower priority than those queries (`FIRST_START_BUILD_NICENESS`).
    """
    from semsearch_server.embedding.factory import build_embedder as build_backend
    from semsearch_server.embedding.factory import latency_engine, routed_to, single_query_twin
    from semsearch_server.embedding.onnx_backend import builds_yield_to_serving
    from semsearch_server.embedding.switching import Interim

    def switch(engine, started: float) -> None:
        serving_explainer = _serving_explainer(engine, reference, config)
        switching.switch_to(engine)
        explainer.switch_to(serving_explainer)
        log.info(
            "first start: switched to %s after %.2fs in the background",
            engine.fingerprint.backend,
            time.monotonic() - started,
        )

    def finish() -> None:
        started = time.monotonic()
        try:
            engine = build_backend(
                reference.model_path,
                config.backend,
                cache_dir=config.model_cache_dir,
                threads=config.threads or None,
                reference=reference,
                small_max_texts_while_busy=config.batch_max_size,
                latency_engine=False,
            )
        except Exception as exc:  # noqa: BLE001 - torch keeps serving, exactly
            log.warning("first start: staying on torch: the fast engines failed (%s: %s)", type(exc).__name__, exc)
            return
        if engine is reference.torch:
            log.warning("first start: staying on torch (no faster engine agrees with it)")
            return
        if engine.fingerprint.backend == "openvino":
            # Batches on OpenVINO now; small requests beside them on torch, then on OpenVINO compiled for
            # single queries (torch beside a batch took 30-50 ms a query on 2 cores), until ONNX Runtime
            # takes them.
            batches = _recompiled(engine, FIRST_START_BATCH_NICENESS)
            if batches is not engine:
                engine = None  # one batch model in memory while ONNX Runtime is exported: compiled again below
            interim = Interim(batches, reference.torch, config.batch_max_size)
            switch(interim, started)
            twin = single_query_twin(batches, reference, config.model_cache_dir)
            if twin is not None:
                interim.take_small_requests_on(twin)
                log.info("first start: single queries on openvino after %.2fs", time.monotonic() - started)
            with builds_yield_to_serving(FIRST_START_BUILD_NICENESS):
                small = latency_engine(reference, config.model_cache_dir, config.threads or None, "openvino")
            engine = routed_to(engine or _recompiled(batches, 0), small, config.batch_max_size)
        switch(engine, started)
        interim = batches = twin = None  # gone before _settle hands the freed memory back
        with builds_yield_to_serving(FIRST_START_BUILD_NICENESS):
            _settle(reference, config)

    return finish


def _recompiled(engine, niceness: int):
    """`engine` compiled again on threads `niceness` steps nicer (OpenVinoEmbedder.recompiled); `engine` itself
    if it cannot be (not OpenVINO, or the compile fails). A first start's batches run between its switches on
    such a copy, FIRST_START_BATCH_NICENESS nicer, so that the queries' engine beside it gets a core when it
    needs one; at the last switch on one compiled again at 0, for the server's life."""
    recompile = getattr(engine, "recompiled", None)
    if recompile is None:
        return engine
    try:
        return recompile(niceness)
    except Exception as exc:  # noqa: BLE001 - the engine as it is serves the batches
        log.warning(
            "first start: openvino not compiled again %d steps nicer (%s: %s); the batches stay where they run",
            niceness,
            type(exc).__name__,
            exc,
        )
        return engine


def _settle_first_start(reference, config: ServerConfig) -> None:
    """`_settle` in the background, so that SERVING is not delayed."""
    threading.Thread(target=_settle, args=(reference, config), name="first-start-settle", daemon=True).start()


def _settle(reference, config: ServerConfig) -> None:
    """A first start loaded torch for the exports and the agreement check, which serving does not need.

    The attention export is made while torch is loaded anyway, so that no later Explain with
    attention needs torch; then the torch model is released and the freed heap handed back.
    """
    from semsearch_server.embedding.onnx_backend import attention_onnx_dir

    started = time.monotonic()
    try:
        attention_onnx_dir(reference, config.model_cache_dir)
        log.info("attention export ready in %.2fs (background, first start)", time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - attention will run on the torch model instead
        log.warning("attention export failed (%s: %s); attention will load the torch model", type(exc).__name__, exc)
    reference.release_torch()
    # Start-up froze what it had allocated (app.py); the torch model is among it.
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    gc.collect()
    return_free_memory()
    if frozen:
        gc.freeze()
    log.info("the torch model is released (needed for the first start's exports and checks only)")


def return_free_memory() -> None:
    """Hands the C heap's free pages back to the system (glibc keeps them otherwise): after a first
    start, the exports and the torch model leave hundreds of MB free but resident."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:  # not glibc: nothing to hand back this way
        pass


def _build_explainer(embedder):
    """An Explainer on a loaded torch embedder's model."""
    try:
        from semsearch_server.embedding.explain import Explainer
    except ImportError:
        log.warning("Explain is unavailable: semsearch_server.embedding.explain could not be imported")
        return None
    return Explainer(embedder.model, embedder.model_path)


def _serving_explainer(embedder, reference, config: ServerConfig):
    """Explain on the engine that answers single queries when it is ONNX Runtime (exact, fast, no torch),
    attention on its ONNX export (made the first time it is asked for); otherwise on the torch model,
    loaded on the first Explain."""
    from semsearch_server.embedding.explain import Explainer
    from semsearch_server.embedding.onnx_backend import OnnxAttention, OnnxEmbedder
    from semsearch_server.embedding.reference import ModelReference

    def attention() -> OnnxAttention:
        had_torch = reference.torch_loaded
        try:
            return OnnxAttention(reference, config.model_cache_dir, threads=config.threads or None)
        finally:
            if not had_torch and reference.torch_loaded:
                reference.release_torch()  # the export needed it; serving attention does not

    engine = getattr(embedder, "small", embedder)
    if isinstance(engine, OnnxEmbedder):
        explainer = Explainer.on_runtime(
            engine, reference.model_path, reference.module_kinds, reference.fingerprint.pooling, attention
        )
        explainer.vectors_match_search = True
        return explainer
    if isinstance(reference, ModelReference):
        return _LazyExplainer(lambda: _build_explainer(reference.torch))
    return _build_explainer(reference)


class _LazyExplainer:
    """Builds its explainer on the first call, so that a server that never explains never loads torch."""

    vectors_match_search = False

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._explainer: Any = None
        self._lock = threading.Lock()

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._explainer is None:
                self._explainer = self._build()
        return self._explainer.explain(*args, **kwargs)


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
