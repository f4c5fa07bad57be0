"""The OpenVINO Embedder: the reference model converted once to OpenVINO IR, run on the CPU."""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
from pathlib import Path

import numpy as np

from semsearch_server.embedding.onnx_backend import (
    ONNX_FILE,
    RuntimeEmbedder,
    balanced_batches,
    cached_artifact,
    last_hidden_state_module,
    mean_pool_normalize,
    on_nicer_thread,
    onnx_export_dir,
    transformer_input_names,
)
from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder

log = logging.getLogger(__name__)

# OpenVINO reports usage to Google Analytics by default: `import openvino` and every conversion fork
# a process that posts an event and count runs in ~/intel/stats. A server that must run offline
# should neither phone home nor fork while gRPC's threads run, so the telemetry package is kept from
# importing; OpenVINO then uses its own no-op stub. Only this module imports openvino, so this runs
# first (unless the package was already imported by someone else, which is left alone).
sys.modules.setdefault("openvino_telemetry", None)

IR_FILES = ("model.xml", "model.bin")
# How the IR was made, recorded in the cache manifest: from the torch model (the default), or from the
# ONNX export when OpenVINO's PyTorch frontend cannot convert the model.
FROM_TORCH = "openvino.convert_model(torch module)"
FROM_ONNX = "openvino.convert_model(onnx export)"
# How long a call waits for a request to report itself finished before waiting on one directly.
REPORT_WAIT_SECONDS = 1.0


def default_precision() -> str:
    """'bf16' where the CPU computes in bfloat16 natively (what OpenVINO would pick itself), else 'f32'."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "f32"


class OpenVinoEmbedder(RuntimeEmbedder):
    """Embeds with the OpenVINO runtime on the CPU.

    The IR is cached under `cache_dir/openvino/<weights sha256>-<versions>/` (`artifact_dir`), converted
    from the torch model (`_convert`).

    Args:
        reference: the torch embedder of the same model (kept as `.reference`).
        cache_dir: where exports are cached.
        threads: inference threads; None lets OpenVINO use every core.
        precision: the inference precision hint, 'bf16' or 'f32'; None means `default_precision()`.
            bf16 is faster and agrees with torch to cosine ~0.99996 on this model; the precision
            actually used is read back from the compiled model into `.precision`.
        batch_size: texts per forward pass. 64 measured fastest here for groups of 512-1024 STS
            sentences (bf16: 1036/s against 1000/s at 32 and 935/s at 128).
        hint: OpenVINO's performance hint: "THROUGHPUT" (streams, below), or "LATENCY" (one stream: what
            a first start answers single queries with beside the throughput model, `single_query_twin`).
        niceness: how much lower than the caller's the priority of the threads the model infers on is
            (Linux; 0 elsewhere): a first start's batches yield so to its queries (`recompiled`).

    The model is compiled for throughput: OpenVINO splits the threads into streams (here two of
    one thread each) and a call keeps one batch in flight per stream. Two one-thread streams
    embedded 2,000 STS sentences 1.1-1.2x faster than one two-thread stream (1224-1274 against
    1037-1126/s). A group that fits in one batch per stream is cut so that the streams finish
    together (`balanced_batches`): on groups of 8-32 short queries 1.04-1.17x faster than equal counts.
    A larger group runs its batches longest first, each on whichever stream frees first: handing
    them out in turn, shortest first, left one stream idle for the last (longest) batch or two of
    every 1,024-text UpsertStream group (a timeline showed the streams busy 90-99 % of a call), and
    this order embedded groups of 1,024 STS sentences 1.04x faster (1,285 against 1,231 texts/s,
    seven alternating rounds, every round faster); a whole UpsertStream of 2,000, 1.016x (1,348
    against 1,328 docs/s, nine alternating rounds), since the server's own work fills some of the gap.
    """

    backend = "openvino"

    def __init__(
        self,
        reference: SentenceTransformerEmbedder,
        cache_dir: str | Path,
        threads: int | None = None,
        precision: str | None = None,
        batch_size: int = 64,
        hint: str = "THROUGHPUT",
        niceness: int = 0,
    ) -> None:
        import openvino as ov

        self.model_dir = cached_artifact(
            cache_dir,
            "openvino",
            reference.fingerprint,
            IR_FILES,
            lambda tmp: _convert(reference, cache_dir, tmp),
            recipes=(FROM_TORCH, FROM_ONNX),
        )
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": precision or default_precision(),
            "PERFORMANCE_HINT": hint,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._cache_dir = cache_dir
        self._threads, self._hint = threads, hint  # with the base's _batch_size: what recompiled() repeats
        core = ov.Core()
        # OpenVINO's own cache of the compiled model (keyed by the IR, the device, the configuration and
        # its version): a restart imports it instead of compiling, 0.35 against 0.8-1.0 s here.
        core.set_property({"CACHE_DIR": str(Path(cache_dir) / "openvino-compiled")})
        # The streams' threads are made by compile_model and inherit the priority of the thread that calls it.
        compiled = on_nicer_thread(
            niceness, lambda: core.compile_model(str(self.model_dir / IR_FILES[0]), "CPU", config)
        )
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.streams = max(1, int(compiled.get_property("NUM_STREAMS")))
        log.info(
            "OpenVINO compiled %s with inference precision %s, %d stream(s) of %s thread(s)",
            self.model_dir,
            self.precision,
            self.streams,
            compiled.get_property("INFERENCE_NUM_THREADS"),
        )
        # One request per stream, reused: the base class runs one encode() at a time under its lock.
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)]
        # Each request reports its slot here when it finishes (from OpenVINO's thread).
        self._finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot, request in enumerate(self._requests):
            request.set_callback(self._finished.put, slot)
        super().__init__(reference, [p.get_any_name() for p in compiled.inputs], batch_size)

    def single_query_twin(self) -> OpenVinoEmbedder:
        """The same IR compiled for one query at a time on one thread, to run beside this model's batches
        (its lock lets one call run at a time): what a first start answers searches with until ONNX
        Runtime, faster still for them, is built (wiring.py)."""
        return OpenVinoEmbedder(
            self.reference, self._cache_dir, threads=1, precision=self.precision, batch_size=8, hint="LATENCY"
        )

    def recompiled(self, niceness: int) -> OpenVinoEmbedder:
        """This model compiled again (from OpenVINO's cache: 0.3-0.4 s), inferring on threads `niceness` steps
        nicer than the caller (0: at its priority): a first start's batches run on such a copy while its
        queries run on `single_query_twin` beside them, and on one at the normal priority for good.

        With the batches' two streams at the queries' priority, a query on the one-thread twin waited for a
        core: under back-to-back batches of 16 abstracts its p50 was 12.8 ms against 3.9 ms alone; with the
        streams 10 steps nicer, 4.1 ms (the batches alone ran as fast: 112 docs/s either way; beside
        back-to-back queries 22 against 56 docs/s). A thread cannot be made less nice again without
        privilege, hence a new compile for good rather than the same model's threads raised again.
        """
        return OpenVinoEmbedder(
            self.reference,
            self._cache_dir,
            threads=self._threads,
            precision=self.precision,
            batch_size=self._batch_size,
            hint=self._hint,
            niceness=niceness,
        )

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        if len(lengths) <= self.streams * self._batch_size:
            # One round: one batch per stream, cut so that the streams finish together.
            return balanced_batches(lengths, self.streams)
        # Longest first: whichever stream frees first takes the next, so the last ones are short.
        return super()._batches(lengths)[::-1]

    def _embed_batches(self, encodings: list, batches: list[list[int]], out: np.ndarray) -> None:
        in_flight: dict[int, tuple[list[int], dict[str, np.ndarray]]] = {}
        free = list(range(len(self._requests)))
        try:
            for rows in batches:
                while not free:
                    free += self._collect_next(in_flight, out)
                slot = free.pop()
                inputs = self._pad(rows, encodings)
                # Shared, not copied (a copy holds the GIL); in_flight keeps the arrays alive until collected.
                self._requests[slot].start_async(inputs, share_inputs=True)
                in_flight[slot] = (rows, inputs)
            while in_flight:
                self._collect_next(in_flight, out)
        finally:
            # After a failure no request may still be running when the lock is released. Reports
            # left over are drained; one that still arrives late is skipped as stale by the next call.
            for slot in in_flight:
                with contextlib.suppress(Exception):
                    self._requests[slot].wait()
            with contextlib.suppress(queue.Empty):
                while True:
                    self._finished.get_nowait()

    def _collect_next(self, in_flight: dict, out: np.ndarray) -> list[int]:
        """Collects the next request to finish; returns its slot, free again (none for a stale report)."""
        try:
            slot = self._finished.get(timeout=REPORT_WAIT_SECONDS)
        except queue.Empty:
            # No report (a long batch, or a failure that skipped the callback): wait on one directly;
            # _collect's wait() returns when it is done, or raises its error. Its late report is stale.
            slot = next(iter(in_flight))
        if slot not in in_flight:
            return []
        self._collect(slot, *in_flight.pop(slot), out)
        return [slot]

    def _collect(self, slot: int, rows: list[int], inputs: dict[str, np.ndarray], out: np.ndarray) -> None:
        request = self._requests[slot]
        request.wait()
        # mean_pool_normalize copies: the output tensor's memory is reused by the next inference.
        out[rows] = mean_pool_normalize(request.get_output_tensor(0).data, inputs["attention_mask"])


def _convert(reference: SentenceTransformerEmbedder, cache_dir: str | Path, target: Path) -> dict:
    """Writes the IR of the reference model's transformer (output: last_hidden_state) into `target`.

    Converted from the torch module by OpenVINO's PyTorch frontend, which keeps each attention as one
    ScaledDotProductAttention operator that the CPU plugin runs as a fused kernel. The IR converted
    from the ONNX export spells attention out in ~10 operators per layer (MatMul, Softmax, masking
    with IsNaN/Select): measured here, model only, this one embeds groups of 1-16 STS sentences
    7-12 % faster (larger groups 0-4 %, where the matrix products dominate) at the same vectors
    (cosine >= 0.99996), and a first start needs no ONNX export for OpenVINO (16.7 -> ~11.5 s).
    Should the frontend fail on some model, the ONNX route is used.
    """
    import openvino as ov

    try:
        model, recipe = _from_torch(reference), FROM_TORCH
    except Exception as exc:  # noqa: BLE001 - the ONNX route converts what the frontend cannot
        log.warning(
            "OpenVINO converts the ONNX export: converting the torch model failed (%s: %s)", type(exc).__name__, exc
        )
        source = onnx_export_dir(reference, cache_dir) / ONNX_FILE
        model, recipe = ov.convert_model(str(source)), FROM_ONNX
    log.info("saving OpenVINO IR at %s (one-off, %s)", target, recipe)
    # Weights stay float32 in the IR; the precision is chosen when compiling.
    ov.save_model(model, str(target / IR_FILES[0]), compress_to_fp16=False)
    return {"recipe": recipe, "openvino": ov.get_version()}


def _from_torch(reference: SentenceTransformerEmbedder):
    import warnings

    import openvino as ov
    import torch

    transformer = reference.model[0].auto_model
    names = transformer_input_names(transformer)
    # The trace runs on a padded batch so that nothing decided from the example (a mask that is all
    # ones can be dropped by the attention code) is baked into the graph.
    ids = torch.full((2, 16), int(transformer.config.vocab_size) // 2, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    ids[mask == 0] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about shape-dependent Python branches in the model code; what matters
        # is checked after loading: the vectors must agree with torch's, padded batches included.
        warnings.simplefilter("ignore")
        return ov.convert_model(
            last_hidden_state_module(transformer),
            example_input=tuple(example[name] for name in names),
            input=[(name, ov.PartialShape([-1, -1]), ov.Type.i64) for name in names],
        )
