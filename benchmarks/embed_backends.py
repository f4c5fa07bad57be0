"""Model-only comparison of the embedding backends on real sentences (STS benchmark train split).

For each backend: sentences/s encoding N sentences, one-query latency p50, cosine agreement with a
hand-written sentence-transformers torch loop (batch 32, the baseline), and top-10 agreement of a
small exact search; with ratios to the baseline. Repeats are interleaved across backends and
reported as medians, because the machine is shared and noisy.

    python benchmarks/embed_backends.py [--data-dir ../shared/data/stsbenchmark] [-n 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA_DIR, sts_sentences

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def elapsed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def top10(corpus: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ corpus.T), axis=1)[:, :10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="STS Benchmark folder")
    parser.add_argument("-n", type=int, default=2000, help="sentences to encode")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per backend (median)")
    parser.add_argument(
        "--queries",
        type=int,
        default=200,
        help="single-sentence calls for the latency p50",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "semsearch-embed-cache",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    from semsearch_server.embedding.onnx_backend import OnnxEmbedder
    from semsearch_server.embedding.openvino_backend import OpenVinoEmbedder
    from semsearch_server.embedding.sentence_transformer import (
        SentenceTransformerEmbedder,
        default_model_path,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    sentences = sts_sentences(args.data_dir, args.n)
    reference = SentenceTransformerEmbedder(default_model_path())
    model = reference.model

    def torch_loop(texts: list[str]) -> np.ndarray:
        # The baseline: what a plain sentence-transformers user writes.
        with torch.inference_mode():
            return np.vstack(
                [
                    model.encode(
                        texts[i : i + 32],
                        batch_size=32,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    )
                    for i in range(0, len(texts), 32)
                ]
            )

    started = time.perf_counter()
    onnx = OnnxEmbedder(reference, args.cache_dir, threads=args.threads)
    print(f"onnx ready in {time.perf_counter() - started:.1f} s (cache {args.cache_dir})")
    started = time.perf_counter()
    ov_default = OpenVinoEmbedder(reference, args.cache_dir, threads=args.threads)
    print(f"openvino ready in {time.perf_counter() - started:.1f} s, precision {ov_default.precision}")
    backends: dict[str, Callable[[list[str]], np.ndarray]] = {
        "torch loop b32 (baseline)": torch_loop,
        "torch SentenceTransformerEmbedder": reference.encode,
        "onnx fp32 (fused graph)": onnx.encode,
        f"openvino {ov_default.precision}": ov_default.encode,
    }
    if ov_default.precision != "f32":
        backends["openvino f32"] = OpenVinoEmbedder(
            reference, args.cache_dir, threads=args.threads, precision="f32"
        ).encode

    print(f"{len(sentences)} sentences, {torch.get_num_threads()} torch threads, {os.cpu_count()} cpus")
    vectors = {name: encode(sentences) for name, encode in backends.items()}  # also warms up
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.repeats):
        for name, encode in backends.items():
            times[name].append(elapsed(lambda encode=encode: encode(sentences)))

    query_texts = sentences[: args.queries]
    samples: dict[str, list[float]] = {name: [] for name in backends}
    for text in query_texts:  # interleaved too, so a noisy moment hits every backend
        for name, encode in backends.items():
            samples[name].append(elapsed(lambda t=text, encode=encode: encode([t])))
    latency = {name: statistics.median(values) for name, values in samples.items()}

    base_name = next(iter(backends))
    base = vectors[base_name]
    base_top = top10(base, base[: args.queries])
    base_rate = len(sentences) / statistics.median(times[base_name])
    header = (
        f"{'backend':36} {'sent/s':>8} {'x base':>7} {'q p50 ms':>9} {'x base':>7} "
        f"{'cos min':>9} {'cos med':>9} {'top10':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in backends:
        rate = len(sentences) / statistics.median(times[name])
        cosines = np.sum(vectors[name] * base, axis=1)
        top = top10(vectors[name], vectors[name][: args.queries])
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, base_top, strict=True)])
        print(
            f"{name:36} {rate:8.0f} {rate / base_rate:7.2f} {latency[name] * 1000:9.2f} "
            f"{latency[base_name] / latency[name]:7.2f} {cosines.min():9.6f} {np.median(cosines):9.6f} {overlap:6.3f}"
        )
    print("x base: throughput ratio, and latency speed-up (baseline p50 / backend p50); top10: mean overlap")


if __name__ == "__main__":
    main()
