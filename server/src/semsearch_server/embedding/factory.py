"""Chooses and builds the embedding backend, checking that it agrees with torch.

The torch SentenceTransformerEmbedder is the reference every other backend is checked against and
the source of their exports. Behind a `ModelReference` it is loaded only when needed: a restart with
the exports and the agreement verdicts cached (`cache_dir/agreement/`) serves without torch. The
embedder returned by `build_embedder` reaches it through `torch_reference(embedder)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from semsearch_server.embedding.base import Embedder
from semsearch_server.embedding.reference import ModelReference
from semsearch_server.embedding.routing import SMALL_REQUEST_TEXTS_WHILE_BUSY
from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder

log = logging.getLogger(__name__)

# Bumped whenever the verdict file or its key changes.
VERDICT_FORMAT = 1
# Packages whose versions can change what a backend or the torch reference computes.
_VERDICT_PACKAGES = ("torch", "transformers", "sentence-transformers", "tokenizers", "onnxruntime", "openvino")

BACKENDS = ("auto", "torch", "onnx", "openvino")
MIN_COSINE = 0.9999

# Sentences every non-torch backend must embed like torch does: short and long, punctuation,
# digits, accents, other scripts, emoji, empty, and one far past the 256-token window.
CHECK_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Hi",
    "",
    "   ",
    "?!",
    "The quick brown fox jumps over the lazy dog.",
    "Three dogs are running through a field of tall grass near the river.",
    "How do I reset my password if I no longer have access to my e-mail account?",
    "Stock markets fell sharply on Monday after the central bank raised interest rates by 0.75%.",
    "ERROR 42: connection refused (errno=111) at 2024-03-01T12:00:00Z",
    "def encode(texts: list[str]) -> np.ndarray: return model(texts)",
    "Naïve café owners in Zürich serve crème brûlée.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "مرحبا بالعالم",
    "I love this! 😀🎉👍",
    "C'est la vie, n'est-ce pas ?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "!!! ??? ... --- ***",
    "https://example.com/search?q=semantic+search&lang=en",
    "A child is riding a horse on the beach at sunset while gulls circle overhead.",
    (
        "The committee postponed its decision until more evidence about the long-term "
        "environmental effects of the proposed dam could be gathered and reviewed."
    ),
    "Why is the sky blue?",
    "Rayleigh scattering makes shorter wavelengths of sunlight scatter more in the atmosphere.",
    "UPPER CASE SENTENCE WITH SHOUTING",
    "tabs\tand\nnewlines\r\ninside",
    "1 2 3 4 5 6 7 8 9 10",
    "A cat sits on the mat. " * 6,
    "Semantic search finds documents by meaning rather than by exact keywords. " * 3,
    "word " * 300,
    " ".join(f"token{i}" for i in range(400)),
)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend could not be loaded or does not agree with torch."""


def build_embedder(
    model_path: str,
    backend: str = "auto",
    *,
    cache_dir: str | Path,
    threads: int | None = None,
    model_name: str | None = None,
    reference: SentenceTransformerEmbedder | ModelReference | None = None,
    openvino_precision: str | None = None,
    small_max_texts_while_busy: int = SMALL_REQUEST_TEXTS_WHILE_BUSY,
    latency_engine: bool = True,
) -> Embedder:
    """Builds the embedder for `backend` ("auto", "torch", "onnx" or "openvino").

    "auto" tries OpenVINO (bf16 where the CPU has it, then f32), then onnxruntime, then torch, and
    keeps the first that loads and agrees with torch on CHECK_SENTENCES to cosine >= MIN_COSINE;
    each one passed over is logged as a warning with the reason. The verdict of each check is cached
    under `cache_dir/agreement/` keyed by everything that decides it (`_verdict_key`), so a restart
    neither re-runs the check nor loads torch for it. When "auto" picks OpenVINO, ONNX
    Runtime (if it agrees too) answers requests of a few texts, where it is faster (routing.py).
    An explicit backend that fails to load or to agree raises BackendUnavailable instead.

    Args:
        model_path: a directory holding a sentence-transformers model.
        backend: which runtime to use.
        cache_dir: where ONNX exports and OpenVINO IR are cached (keyed by the weights' sha256).
        threads: inference threads for onnxruntime/OpenVINO; for torch, torch.set_num_threads
            (process-wide). None leaves each runtime's default (all cores).
        model_name: the name to report in the fingerprint; defaults to the directory's name.
        reference: an already loaded torch embedder of `model_path` to use instead of loading
            another copy of the model, or a ModelReference (loads torch only if needed); None
            makes a ModelReference.
        openvino_precision: OpenVINO's inference precision, "bf16" or "f32"; None means bf16 where
            the CPU supports it (then "auto" also tries f32 before onnx). bf16 passes the agreement
            check here (cosine >= 0.99997) but swaps ~0.5% of top-10 results among near-ties.
        small_max_texts_while_busy: with two engines, the largest request ONNX Runtime takes while
            OpenVINO is busy (routing.py); the server passes its largest micro-batch group.
        latency_engine: False returns the OpenVINO engine "auto" picked alone; `with_latency_engine`
            adds ONNX Runtime later (a first start switches to the first fast engine sooner so).

    Returns:
        The embedder; `torch_reference(embedder)` gives the torch embedder behind it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if reference is None:
        reference = ModelReference(model_path, cache_dir, model_name=model_name)
    if backend == "torch":
        return _use_torch(_torch_of(reference), threads)

    expected = _ReferenceVectors(reference)
    # Runtimes that failed to load: their other variants would fail the same way.
    broken: set[str] = set()
    for name, runtime, build in _candidates(backend, reference, cache_dir, threads, openvino_precision):
        if runtime in broken:
            continue
        try:
            started = time.monotonic()
            embedder = build()
            log.info("start-up: %s loaded in %.2fs", name, time.monotonic() - started)
            problem = checked_agreement(name, embedder, expected, cache_dir)
        except Exception as exc:
            problem = f"failed to load: {type(exc).__name__}: {exc}"
            broken.add(runtime)
            if backend != "auto":
                raise BackendUnavailable(f"embedding backend {name} {problem}") from exc
        if problem is None:
            log.info("embedding backend: %s (%s)", name, embedder.fingerprint.short())
            if backend == "auto" and runtime == "openvino" and latency_engine:
                return with_latency_engine(
                    embedder, reference, cache_dir, threads, small_max_texts_while_busy, expected
                )
            return embedder
        if backend != "auto":
            raise BackendUnavailable(f"embedding backend {name} {problem}")
        log.warning("embedding backend %s not used: %s", name, problem)
    log.warning("embedding backend: falling back to torch")
    return _use_torch(_torch_of(reference), threads)


def torch_reference(embedder: Embedder) -> SentenceTransformerEmbedder:
    """The torch SentenceTransformerEmbedder behind an embedder from build_embedder (loaded if it was not).

    Looks through wrappers that expose `.inner` (MicroBatchingEmbedder) and backends that expose
    `.reference` (OnnxEmbedder, OpenVinoEmbedder); a torch embedder is its own reference.
    """
    while not isinstance(embedder, SentenceTransformerEmbedder):
        if isinstance(embedder, ModelReference):
            return embedder.torch
        if hasattr(embedder, "reference"):
            embedder = embedder.reference
        elif hasattr(embedder, "inner"):
            embedder = embedder.inner
        else:
            raise TypeError(f"{type(embedder).__name__} has no torch reference")
    return embedder


def agreement_problem(embedder: Embedder, expected: np.ndarray) -> str | None:
    """Why `embedder` does not reproduce the torch vectors `expected` of CHECK_SENTENCES, or None."""
    got = embedder.encode(list(CHECK_SENTENCES))
    if got.shape != expected.shape or got.dtype != np.float32:
        return f"returned {got.dtype} {got.shape}, expected float32 {expected.shape}"
    cosines = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    worst = int(np.argmin(cosines))
    if not cosines[worst] >= MIN_COSINE:  # also catches NaN
        return (
            f"disagrees with torch: cosine {cosines[worst]:.6f} < {MIN_COSINE} "
            f"on check sentence {worst} ({CHECK_SENTENCES[worst][:40]!r})"
        )
    return None


def checked_agreement(
    name: str, embedder: Embedder, expected: Callable[[], np.ndarray], cache_dir: str | Path
) -> str | None:
    """`agreement_problem(embedder, expected())`, or its cached verdict when nothing that decides it changed.

    The verdict (None or the problem) is kept in `cache_dir/agreement/<weights sha256>/<name>.json`
    with its key. A disagreement is cached like an agreement; a failure to load never gets here.
    """
    key = _verdict_key(name, embedder)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    file = Path(cache_dir) / "agreement" / embedder.fingerprint.weights_sha256 / f"{slug}.json"
    try:
        cached = json.loads(file.read_text())
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key:
        problem = cached.get("problem")
        log.info("start-up: %s agreement with torch: cached verdict (%s)", name, problem or "agrees")
        return problem
    started = time.monotonic()
    problem = agreement_problem(embedder, expected())
    log.info("start-up: %s agreement with torch checked in %.2fs", name, time.monotonic() - started)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verdict-", dir=file.parent)
        with os.fdopen(fd, "w") as out:
            json.dump({"key": key, "problem": problem}, out, indent=2)
        os.replace(tmp, file)
    except OSError as exc:  # the next start checks again
        log.warning("could not cache the agreement verdict at %s: %s", file, exc)
    return problem


def _verdict_key(name: str, embedder: Embedder) -> dict:
    """Everything the agreement check's outcome depends on: the check itself, the model, the artifact
    the backend runs (its manifest: file hashes, recipe, exporter versions), the backend's precision,
    the installed runtime and reference packages, and the CPU (bf16 kernels differ between CPUs)."""
    model_dir = getattr(embedder, "model_dir", None)
    try:
        manifest = json.loads((Path(model_dir) / "manifest.json").read_text()) if model_dir else None
    except (OSError, ValueError):
        manifest = None
    versions = {}
    for package in _VERDICT_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    check = json.dumps([MIN_COSINE, CHECK_SENTENCES], ensure_ascii=False)
    return {
        "format": VERDICT_FORMAT,
        "backend": name,
        "weights_sha256": embedder.fingerprint.weights_sha256,
        "check": hashlib.sha256(check.encode()).hexdigest(),
        "artifact": manifest,
        "precision": getattr(embedder, "precision", None),
        "packages": versions,
        "cpu": _cpu_description(),
    }


def _cpu_description() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return hashlib.sha256(line.encode()).hexdigest()[:16] + ":" + line.split(":", 1)[1].strip()[:60]
    except OSError:
        pass
    import platform

    return f"{platform.machine()} {platform.processor()}"


class _ReferenceVectors:
    """torch's vectors of CHECK_SENTENCES, computed (loading torch) on the first call only.

    Kept per reference for as long as it lives, so that a first start's two switches (OpenVINO, then
    ONNX Runtime beside it) encode the check sentences with torch once.
    """

    _computed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, reference: SentenceTransformerEmbedder | ModelReference) -> None:
        self._reference = reference

    def __call__(self) -> np.ndarray:
        vectors = self._computed.get(self._reference)
        if vectors is None:
            started = time.monotonic()
            vectors = self._computed[self._reference] = _reference_vectors(_torch_of(self._reference))
            log.info("start-up: torch vectors of the check sentences in %.2fs", time.monotonic() - started)
        return vectors


def _torch_of(reference: SentenceTransformerEmbedder | ModelReference) -> SentenceTransformerEmbedder:
    return reference.torch if isinstance(reference, ModelReference) else reference


def _reference_vectors(reference: SentenceTransformerEmbedder) -> np.ndarray:
    """torch's vectors of CHECK_SENTENCES, encoded in groups of similar length.

    Encoded in one call, every sentence would be padded to the 256-token window: ~7x slower.
    """
    from semsearch_server.embedding.onnx_backend import length_batches

    expected = np.zeros((len(CHECK_SENTENCES), reference.dimension), dtype=np.float32)
    lengths = [min(n, reference.max_seq_length) for n in reference.token_counts(list(CHECK_SENTENCES))]
    for rows in length_batches(lengths, batch_size=32):
        expected[rows] = reference.encode_beside([CHECK_SENTENCES[i] for i in rows])
    return expected


def _candidates(
    backend: str,
    reference: SentenceTransformerEmbedder | ModelReference,
    cache_dir: str | Path,
    threads: int | None,
    openvino_precision: str | None,
) -> Iterator[tuple[str, str, Callable[[], Embedder]]]:
    """(name, runtime, zero-argument builder) triples to try, fastest first; imports each runtime only when tried."""

    def openvino(precision: str | None):
        def build():
            from semsearch_server.embedding.openvino_backend import OpenVinoEmbedder

            return OpenVinoEmbedder(reference, cache_dir, threads=threads, precision=precision)

        return build

    def onnx():
        from semsearch_server.embedding.onnx_backend import OnnxEmbedder

        return OnnxEmbedder(reference, cache_dir, threads=threads)

    if backend in ("auto", "openvino"):
        yield "openvino", "openvino", openvino(openvino_precision)
    if backend == "auto" and openvino_precision is None:
        # bf16 is OpenVINO's default where the CPU supports it; f32 is the exact fallback.
        yield "openvino (f32)", "openvino", openvino("f32")
    if backend in ("auto", "onnx"):
        yield "onnx", "onnx", onnx


def with_latency_engine(
    bulk: Embedder,
    reference: SentenceTransformerEmbedder | ModelReference,
    cache_dir: str | Path,
    threads: int | None,
    small_max_texts_while_busy: int = SMALL_REQUEST_TEXTS_WHILE_BUSY,
    expected: Callable[[], np.ndarray] | None = None,
) -> Embedder:
    """`bulk` with ONNX Runtime answering single queries, if it loads and agrees with torch; else `bulk`.

    `expected` (torch's vectors of CHECK_SENTENCES, computed on first call) is shared with the check
    of `bulk` when given, so that torch encodes them once.
    """
    small = latency_engine(reference, cache_dir, threads, bulk.fingerprint.backend, expected)
    return routed_to(bulk, small, small_max_texts_while_busy)


def latency_engine(
    reference: SentenceTransformerEmbedder | ModelReference,
    cache_dir: str | Path,
    threads: int | None,
    bulk_backend: str,
    expected: Callable[[], np.ndarray] | None = None,
) -> Embedder | None:
    """ONNX Runtime for single queries beside a `bulk_backend` engine, if it loads and agrees with torch."""
    from semsearch_server.embedding.onnx_backend import OnnxEmbedder

    if expected is None:
        expected = _ReferenceVectors(reference)
    try:
        started = time.monotonic()
        small = OnnxEmbedder(reference, cache_dir, threads=threads)
        log.info("start-up: onnx loaded in %.2fs", time.monotonic() - started)
        problem = checked_agreement("onnx", small, expected, cache_dir)
    except Exception as exc:  # noqa: BLE001 - the batch engine alone still serves
        problem = f"failed to load: {type(exc).__name__}: {exc}"
    if problem is not None:
        log.warning("single queries stay on %s: onnx %s", bulk_backend, problem)
        return None
    return small


def routed_to(
    bulk: Embedder, small: Embedder | None, small_max_texts_while_busy: int = SMALL_REQUEST_TEXTS_WHILE_BUSY
) -> Embedder:
    """`bulk` with `small` answering single queries (`SizeRoutedEmbedder`); `bulk` alone without it."""
    from semsearch_server.embedding.routing import SizeRoutedEmbedder

    if small is None:
        return bulk
    routed = SizeRoutedEmbedder(bulk, small, small_max_texts_while_busy=small_max_texts_while_busy)
    log.info("embedding backend: %s", routed.fingerprint.backend)
    return routed


def single_query_twin(
    bulk: Embedder, reference: SentenceTransformerEmbedder | ModelReference, cache_dir: str | Path
) -> Embedder | None:
    """An OpenVINO `bulk`'s model compiled for single queries (`OpenVinoEmbedder.single_query_twin`), checked
    against torch like every engine; None if `bulk` is not OpenVINO or the twin fails to load or to agree."""
    twin_of = getattr(bulk, "single_query_twin", None)
    if twin_of is None:
        return None
    try:
        started = time.monotonic()
        twin = twin_of()
        log.info("start-up: openvino (single queries) loaded in %.2fs", time.monotonic() - started)
        problem = checked_agreement("openvino (single queries)", twin, _ReferenceVectors(reference), cache_dir)
    except Exception as exc:  # noqa: BLE001 - torch keeps answering them
        problem = f"failed to load: {type(exc).__name__}: {exc}"
    if problem is not None:
        log.warning("single queries stay on torch until onnx is built: openvino (single queries) %s", problem)
        return None
    return twin


def _use_torch(reference: SentenceTransformerEmbedder, threads: int | None) -> SentenceTransformerEmbedder:
    if threads:
        import torch

        torch.set_num_threads(threads)
    return reference
