"""Chooses and builds the embedding backend, checking that it agrees with torch.

Every backend needs the torch SentenceTransformerEmbedder: it is the reference the others are
checked against, the source of their ONNX export and fingerprint, and what Explain runs on. The
embedder returned by `build_embedder` reaches it through `torch_reference(embedder)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from semsearch_server.embedding.base import Embedder
from semsearch_server.embedding.routing import SMALL_REQUEST_TEXTS_WHILE_BUSY
from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder

log = logging.getLogger(__name__)

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
    reference: SentenceTransformerEmbedder | None = None,
    openvino_precision: str | None = None,
    small_max_texts_while_busy: int = SMALL_REQUEST_TEXTS_WHILE_BUSY,
) -> Embedder:
    """Builds the embedder for `backend` ("auto", "torch", "onnx" or "openvino").

    "auto" tries OpenVINO (bf16 where the CPU has it, then f32), then onnxruntime, then torch, and
    keeps the first that loads and agrees with torch on CHECK_SENTENCES to cosine >= MIN_COSINE;
    each one passed over is logged as a warning with the reason. When "auto" picks OpenVINO, ONNX
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
            another copy of the model.
        openvino_precision: OpenVINO's inference precision, "bf16" or "f32"; None means bf16 where
            the CPU supports it (then "auto" also tries f32 before onnx). bf16 passes the agreement
            check here (cosine >= 0.99997) but swaps ~0.5% of top-10 results among near-ties.
        small_max_texts_while_busy: with two engines, the largest request ONNX Runtime takes while
            OpenVINO is busy (routing.py); the server passes its largest micro-batch group.

    Returns:
        The embedder; `torch_reference(embedder)` gives the torch embedder behind it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if reference is None:
        reference = SentenceTransformerEmbedder(model_path, model_name=model_name)
    if backend == "torch":
        return _use_torch(reference, threads)

    expected = _reference_vectors(reference)
    # Runtimes that failed to load: their other variants would fail the same way.
    broken: set[str] = set()
    for name, runtime, build in _candidates(backend, reference, cache_dir, threads, openvino_precision):
        if runtime in broken:
            continue
        try:
            embedder = build()
            problem = agreement_problem(embedder, expected)
        except Exception as exc:
            problem = f"failed to load: {type(exc).__name__}: {exc}"
            broken.add(runtime)
            if backend != "auto":
                raise BackendUnavailable(f"embedding backend {name} {problem}") from exc
        if problem is None:
            log.info("embedding backend: %s (%s)", name, embedder.fingerprint.short())
            if backend == "auto" and runtime == "openvino":
                return _with_latency_engine(
                    embedder, reference, cache_dir, threads, expected, small_max_texts_while_busy
                )
            return embedder
        if backend != "auto":
            raise BackendUnavailable(f"embedding backend {name} {problem}")
        log.warning("embedding backend %s not used: %s", name, problem)
    log.warning("embedding backend: falling back to torch")
    return _use_torch(reference, threads)


def torch_reference(embedder: Embedder) -> SentenceTransformerEmbedder:
    """The torch SentenceTransformerEmbedder behind an embedder from build_embedder (for Explain).

    Looks through wrappers that expose `.inner` (MicroBatchingEmbedder) and backends that expose
    `.reference` (OnnxEmbedder, OpenVinoEmbedder); a torch embedder is its own reference.
    """
    while not isinstance(embedder, SentenceTransformerEmbedder):
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


def _reference_vectors(reference: SentenceTransformerEmbedder) -> np.ndarray:
    """torch's vectors of CHECK_SENTENCES, encoded in groups of similar length.

    Encoded in one call, every sentence would be padded to the 256-token window: ~7x slower.
    """
    from semsearch_server.embedding.onnx_backend import length_batches

    expected = np.zeros((len(CHECK_SENTENCES), reference.dimension), dtype=np.float32)
    lengths = [min(n, reference.max_seq_length) for n in reference.token_counts(list(CHECK_SENTENCES))]
    for rows in length_batches(lengths, batch_size=32):
        expected[rows] = reference.encode([CHECK_SENTENCES[i] for i in rows])
    return expected


def _candidates(
    backend: str,
    reference: SentenceTransformerEmbedder,
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


def _with_latency_engine(
    bulk: Embedder,
    reference: SentenceTransformerEmbedder,
    cache_dir: str | Path,
    threads: int | None,
    expected: np.ndarray,
    small_max_texts_while_busy: int,
) -> Embedder:
    """`bulk` with ONNX Runtime answering single queries, if it loads and agrees with torch."""
    from semsearch_server.embedding.onnx_backend import OnnxEmbedder
    from semsearch_server.embedding.routing import SizeRoutedEmbedder

    try:
        small = OnnxEmbedder(reference, cache_dir, threads=threads)
        problem = agreement_problem(small, expected)
    except Exception as exc:  # noqa: BLE001 - the batch engine alone still serves
        problem = f"failed to load: {type(exc).__name__}: {exc}"
    if problem is not None:
        log.warning("single queries stay on %s: onnx %s", bulk.fingerprint.backend, problem)
        return bulk
    routed = SizeRoutedEmbedder(bulk, small, small_max_texts_while_busy=small_max_texts_while_busy)
    log.info("embedding backend: %s", routed.fingerprint.backend)
    return routed


def _use_torch(reference: SentenceTransformerEmbedder, threads: int | None) -> SentenceTransformerEmbedder:
    if threads:
        import torch

        torch.set_num_threads(threads)
    return reference
