"""The onnxruntime Embedder, and what it shares with the OpenVINO one.

Both run the model's transformer exported to ONNX, tokenise with the fast `tokenizers` tokenizer and
mean-pool in numpy. The export is made offline from the local torch model the first time and cached
under `cache_dir/onnx/<weights sha256>-<versions>/` (`artifact_dir`); every later start, of this server
or of another on the same machine and cache, reuses it after checking its hash.
torch is needed only to make the export (the torch reference embedder is loaded anyway).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from semsearch_server.embedding.base import FingerprintDescribed, ModelFingerprint
from semsearch_server.embedding.sentence_transformer import SentenceTransformerEmbedder
from semsearch_server.files import sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")

# onnxruntime's wheels (1.32 here, on Linux) queue usage events for Microsoft's telemetry from the
# first session: a device id and an event database under ~/.cache/Microsoft/DeveloperTools/. A server
# meant to run offline keeps that off unless its operator set the variable. It must be set before
# onnxruntime creates its environment; only this module imports onnxruntime, lazily, after this line.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# Bumped whenever the export or the manifest changes, so that old caches are rebuilt, not misread.
EXPORT_FORMAT = 1
ONNX_FILE = "model.onnx"
# Largest difference in last_hidden_state allowed between the fused and the traced graph.
FUSED_TOLERANCE = 1e-3
MANIFEST_FILE = "manifest.json"
ATTENTION_FILE = "attention.onnx"
# Largest difference in an attention probability allowed between the export and torch's eager model.
ATTENTION_TOLERANCE = 1e-4
# Packages whose versions change what an export or conversion writes (part of each cache entry's name).
_ARTIFACT_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "openvino")


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors under the attention mask (special tokens included), L2-normalised.

    This is what sentence-transformers' Pooling(mean) + Normalize do.
    """
    mask = attention_mask[..., None].astype(np.float32)
    summed = (hidden.astype(np.float32) * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.ascontiguousarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` grouped shortest first into batches that pad little.

    A batch is padded to its longest member, so a batch ends at `batch_size` items or when the
    next (longer) item would make the padded token count exceed 1.25x the real one plus 64 tokens
    (a few short queries are not worth separate calls; a 256-token text among short ones is).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    batch: list[int] = []
    real = 0
    for i in order:
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[i] > 1.25 * (real + lengths[i]) + 64):
            batches.append(batch)
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        batches.append(batch)
    return batches


def balanced_batches(lengths: list[int], parts: int) -> list[list[int]]:
    """Indices of `lengths` cut, shortest first, into at most `parts` batches of about equal padded cost.

    For engines that run `parts` batches at once (OpenVINO streams): the call lasts as long as its
    costliest batch, and a batch costs its size times its longest member. Cutting the sorted texts
    into equal counts would leave the longest texts together in the last batch while the others
    idle; here the cut points minimise the largest batch's padded token count (binary search on
    that bound, each probe a greedy pass from the longest text down).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]

    def cuts(bound: int) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        end = len(ordered)
        while end > 0:
            start = end - 1  # the longest remaining text opens a batch and sets its width
            while start > 0 and (end - start + 1) * ordered[end - 1] <= bound:
                start -= 1
            spans.append((start, end))
            end = start
        return spans

    if not ordered:
        return []
    low, high = ordered[-1], len(ordered) * ordered[-1]
    while low < high:
        middle = (low + high) // 2
        if len(cuts(middle)) <= parts:
            high = middle
        else:
            low = middle + 1
    return [order[start:end] for start, end in reversed(cuts(low))]


def artifact_key(fingerprint: ModelFingerprint) -> str:
    """The name of an engine's cache entry: the model's weights and the versions of what builds and runs it.

    `<weights sha256>-<12 hex digits over EXPORT_FORMAT and the exporting/running packages' versions>`,
    so that servers of other versions sharing one machine-wide cache keep entries of their own instead
    of rebuilding each other's.
    """
    versions = {"format": EXPORT_FORMAT}
    for package in _ARTIFACT_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:12]
    return f"{fingerprint.weights_sha256}-{digest}"


def artifact_dir(cache_dir: str | Path, kind: str, fingerprint: ModelFingerprint) -> Path:
    """Where `cached_artifact` keeps the `kind` engine files of the model `fingerprint` describes."""
    return Path(cache_dir) / kind / artifact_key(fingerprint)


# How much lower than its caller's the priority of a build is (`builds_yield_to_serving`): 0 builds at the
# caller's priority, as a start-up that waits for its engines does.
_BUILD_NICENESS: contextvars.ContextVar[int] = contextvars.ContextVar("build_niceness", default=0)


@contextlib.contextmanager
def builds_yield_to_serving(niceness: int) -> Iterator[None]:
    """Within this block, the cache entries this thread builds (`cached_artifact`) are made on a thread
    `niceness` steps nicer than this one: what a first start builds while it serves.

    Only the build runs there (the export or conversion, written to files); compiling and loading the
    result stays on the calling thread, so that no thread an engine serves with inherits the lower priority.
    """
    token = _BUILD_NICENESS.set(niceness)
    try:
        yield
    finally:
        _BUILD_NICENESS.reset(token)


def on_nicer_thread(niceness: int, call: Callable[[], T]) -> T:
    """`call()` on a new thread `niceness` steps nicer than this one (its result or its exception here), so
    that the work, and the threads it creates (which inherit the priority), yield the CPU to the rest of
    the process. Linux only, where a thread's priority is its own; elsewhere, or with 0, `call` runs here.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return call()
    outcome: dict[str, Any] = {}

    def run() -> None:
        thread = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
        except OSError as exc:  # a sandbox without setpriority: the work runs at the caller's priority
            log.debug("running at the caller's priority (%s)", exc)
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="nicer", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def cached_artifact(
    cache_dir: str | Path,
    kind: str,
    fingerprint: ModelFingerprint,
    files: tuple[str, ...],
    build: Callable[[Path], dict],
    recipes: tuple[str, ...] = (),
) -> Path:
    """`artifact_dir(cache_dir, kind, fingerprint)`, holding `files`, built by `build` if missing or corrupt.

    `build(tmp_dir)` writes `files` into tmp_dir and returns extra manifest fields. The manifest
    records each file's sha256; a directory whose files no longer match is rebuilt, never used. With
    `recipes`, `build` must record one of them as the manifest's "recipe", and a directory made another
    way (an older version's conversion) is rebuilt too. A new directory is built beside the final one
    and renamed into place, so a crash never leaves a half-written entry behind. The cache is meant to
    be shared by every server of the machine: one build of an entry runs at a time (a file lock beside
    it), and a server that waited for another's build uses its result.
    """
    final = artifact_dir(cache_dir, kind, fingerprint)
    root = final.parent
    if _usable(final, kind, fingerprint, files, recipes):
        log.info("engine cache: reused %s %s", kind, final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f".{final.name}.lock", f"{kind} {final}") as waited:
        if waited and _usable(final, kind, fingerprint, files, recipes):
            log.info("engine cache: reused %s %s (built by another process meanwhile)", kind, final)
            return final
        _remove_dir(final)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            extra = on_nicer_thread(_BUILD_NICENESS.get(), lambda: build(tmp))
            manifest = {
                "format": EXPORT_FORMAT,
                "weights_sha256": fingerprint.weights_sha256,
                "files": {name: sha256_file(tmp / name) for name in files},
                **extra,
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
            _fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process (one without the lock: an older version) finished first: use its copy if sound.
                if _cache_problem(final, fingerprint, files, recipes) is not None:
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    log.info("engine cache: built %s %s in %.2fs", kind, final, time.monotonic() - started)
    return final


def _usable(final: Path, kind: str, fingerprint: ModelFingerprint, files: tuple[str, ...], recipes) -> bool:
    if not final.is_dir():
        return False
    problem = _cache_problem(final, fingerprint, files, recipes)
    if problem is not None:
        log.warning("%s cache %s is unusable (%s); rebuilding it", kind, final, problem)
    return problem is None


@contextlib.contextmanager
def _build_lock(path: Path, what: str) -> Iterator[bool]:
    """An exclusive lock on `path` (flock: released by the kernel if the holder dies); yields whether it had to wait."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builds stay safe (rename, loser discards), only redundant
        yield False
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            log.info("engine cache: waiting for another process's build of %s", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_tree(directory: Path) -> None:
    """Makes a finished build durable before it is renamed into place (a crash then leaves it whole or absent)."""
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cache_problem(
    directory: Path, fingerprint: ModelFingerprint, files: tuple[str, ...], recipes: tuple[str, ...] = ()
) -> str | None:
    """Why a cache directory cannot be used, or None if it can."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"manifest unreadable: {exc}"
    if manifest.get("format") != EXPORT_FORMAT:
        return f"format {manifest.get('format')!r}, expected {EXPORT_FORMAT}"
    if manifest.get("weights_sha256") != fingerprint.weights_sha256:
        return "made from other weights"
    if recipes and manifest.get("recipe") not in recipes:
        return f"made by {manifest.get('recipe', 'an older version')!r}, expected one of {list(recipes)}"
    for name in files:
        expected = manifest.get("files", {}).get(name)
        try:
            actual = sha256_file(directory / name)
        except OSError as exc:
            return f"{name} unreadable: {exc}"
        if actual != expected:
            return f"{name} does not match its recorded sha256"
    return None


def _remove_dir(directory: Path) -> None:
    # Rename first so that a concurrent reader never sees a directory that is half deleted.
    doomed = directory.with_name(f".doomed-{directory.name}-{os.getpid()}")
    try:
        os.rename(directory, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def onnx_export_dir(reference: SentenceTransformerEmbedder, cache_dir: str | Path) -> Path:
    """The cached plain ONNX export of the reference model's transformer (output: last_hidden_state).

    Standard ONNX operators only, so that other runtimes (OpenVINO) can convert it.
    """
    return cached_artifact(
        cache_dir,
        "onnx",
        reference.fingerprint,
        (ONNX_FILE,),
        lambda tmp: _export_onnx(reference, tmp / ONNX_FILE),
    )


def fused_onnx_dir(reference: SentenceTransformerEmbedder, cache_dir: str | Path) -> Path:
    """The cached ONNX Runtime export: attention, layer norms and GELU fused into single kernels.

    A one-query call of a small model is bound by the number of kernels more than by arithmetic:
    the plain export runs ~250 nodes, the fused one 46 for all-MiniLM-L6-v2, and answers a query
    ~0.6 ms sooner here (p50 2.6-3.4 against 3.5-4.0 ms) at the same bulk speed. The graph uses
    onnxruntime's contrib operators (com.microsoft domain), so only onnxruntime can run it.
    """
    return cached_artifact(
        cache_dir,
        "onnx-fused",
        reference.fingerprint,
        (ONNX_FILE,),
        lambda tmp: _export_fused(reference, tmp, ONNX_FILE),
    )


def last_hidden_state_module(transformer):
    """The torch module the exporters trace: `transformer`, returning its last_hidden_state."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    return LastHiddenState().eval()


def transformer_input_names(transformer) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(transformer.forward).parameters:
        names.append("token_type_ids")
    return names


def _export_onnx(reference: SentenceTransformerEmbedder, target: Path) -> dict:
    import torch

    transformer = reference.model[0].auto_model
    input_names = transformer_input_names(transformer)
    log.info("exporting %s to ONNX at %s (one-off)", reference.fingerprint.model_name, target)
    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in input_names)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=int(transformer.config.max_position_embeddings))
    with torch.no_grad():
        torch.onnx.export(
            last_hidden_state_module(transformer),
            example,
            str(target),
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_shapes={name: {0: batch, 1: seq} for name in input_names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "inputs": input_names,
    }


def _export_fused(reference: SentenceTransformerEmbedder, tmp: Path, name: str) -> dict:
    import copy
    import warnings

    import onnxruntime
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    # onnxruntime's fusions recognise the attention of the eager implementation as traced by the
    # TorchScript exporter; the sdpa attention and dynamo=True graphs stay unfused. A copy, so
    # that the reference model (Explain, the agreement check) keeps its own attention.
    transformer = copy.deepcopy(reference.model[0].auto_model).eval()
    transformer.set_attn_implementation("eager")
    input_names = transformer_input_names(transformer)
    traced = tmp / "traced.onnx"
    log.info("exporting %s to fused ONNX at %s (one-off)", reference.fingerprint.model_name, tmp / name)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and generic indexing caveats;
        # what matters is checked after loading: the vectors must agree with torch's.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            last_hidden_state_module(transformer),
            tuple(torch.ones(2, 16, dtype=torch.long) for _ in input_names),
            str(traced),
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*input_names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    config = transformer.config
    optimized = optimize_model(
        str(traced),
        model_type="bert",
        num_heads=int(getattr(config, "num_attention_heads", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0)),
        opt_level=1,
    )
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    optimized.save_model_to_file(str(tmp / name))
    # The fusions match graph patterns written for BERT; on another architecture a wrong match
    # must not reach the cache. Both graphs run on the same padded batch and must agree.
    difference = _largest_difference(traced, tmp / name, input_names, int(config.vocab_size))
    if not difference <= FUSED_TOLERANCE:
        raise ValueError(f"the fused graph differs from the traced one by up to {difference:.2e}")
    traced.unlink()
    log.info("fused operators: %s", fused or "none (the graph stays as exported)")
    return {
        "exporter": "torch.onnx.export(dynamo=False) + onnxruntime.transformers.optimize_model(bert)",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "inputs": input_names,
        "fused": fused,
    }


def attention_onnx_dir(reference: SentenceTransformerEmbedder, cache_dir: str | Path) -> Path:
    """The cached ONNX export of the model's self-attention probabilities, for Explain's attention view.

    Output `attentions`, float32 (layers, batch, heads, seq, seq), traced from an eager-attention copy
    of the transformer (the default sdpa attention returns no probabilities). Checked against torch's
    eager probabilities on a padded batch before it is cached.
    """
    return cached_artifact(
        cache_dir,
        "onnx-attention",
        reference.fingerprint,
        (ATTENTION_FILE,),
        lambda tmp: _export_attention(reference, tmp / ATTENTION_FILE),
    )


def _export_attention(reference: SentenceTransformerEmbedder, target: Path) -> dict:
    import copy
    import warnings

    import onnxruntime
    import torch

    transformer = copy.deepcopy(reference.model[0].auto_model).eval()
    transformer.set_attn_implementation("eager")
    input_names = transformer_input_names(transformer)

    class Attentions(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            output = self.transformer(**dict(zip(input_names, inputs, strict=True)), output_attentions=True)
            return torch.stack(output.attentions)

    module = Attentions().eval()
    log.info("exporting %s's attention to ONNX at %s (one-off)", reference.fingerprint.model_name, target)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracing caveats
        torch.onnx.export(
            module,
            tuple(torch.ones(2, 16, dtype=torch.long) for _ in input_names),
            str(target),
            input_names=input_names,
            output_names=["attentions"],
            dynamic_axes={
                **{name: {0: "batch", 1: "seq"} for name in input_names},
                "attentions": {1: "batch", 3: "seq", 4: "seq"},
            },
            opset_version=17,
            dynamo=False,
        )
        # The export must give torch's probabilities, padded rows included.
        inputs = _check_batch(input_names, int(transformer.config.vocab_size))
        expected = module(*(torch.from_numpy(inputs[name]) for name in input_names)).numpy()
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)[0]
    real = (
        inputs["attention_mask"].astype(bool)[None, :, None, :, None]
        & inputs["attention_mask"].astype(bool)[None, :, None, None, :]
    )
    real = np.broadcast_to(real, got.shape)
    difference = float(np.abs(got[real] - expected[real]).max())
    if not difference <= ATTENTION_TOLERANCE:
        raise ValueError(f"the attention export differs from torch's by up to {difference:.2e}")
    return {"exporter": "torch.onnx.export(dynamo=False), eager attention", "torch": torch.__version__}


def _check_batch(input_names: list[str], vocab_size: int) -> dict[str, np.ndarray]:
    """A padded batch of random tokens (rows of 24, 17 and 5 real tokens) for comparing two graphs."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab_size, size=(3, 24), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 17:] = 0  # a padded row, as length-sorted batches have
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: inputs[name] for name in input_names}


class OnnxAttention:
    """The model's self-attention probabilities, from the cached attention export on onnxruntime.

    Args:
        reference: the model (its torch model is loaded only to make the export, the first time).
        cache_dir: where exports are cached.
        threads: intra-op threads; None lets onnxruntime use every core.
    """

    def __init__(
        self, reference: SentenceTransformerEmbedder, cache_dir: str | Path, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.model_dir = attention_onnx_dir(reference, cache_dir)
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self._session = ort.InferenceSession(
            str(self.model_dir / ATTENTION_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._lock = threading.Lock()

    def probabilities(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """float32 (layers, batch, heads, seq, seq) for int64 (batch, seq) ids padded with mask 0."""
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        with self._lock:
            return self._session.run(None, {name: inputs[name] for name in self._input_names})[0]


def _largest_difference(first: Path, second: Path, input_names: list[str], vocab_size: int) -> float:
    """Largest absolute difference of last_hidden_state between two graphs on one padded batch."""
    import onnxruntime

    inputs = _check_batch(input_names, vocab_size)
    mask = inputs["attention_mask"]
    outputs = []
    for path in (first, second):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, inputs)[0])
    real = mask.astype(bool)  # padded positions are masked out of the pooling either way
    return float(np.abs(outputs[0][real] - outputs[1][real]).max())


class RuntimeEmbedder(FingerprintDescribed):
    """Shared part of the exported-model embedders: tokenising, length-sorted batching and pooling.

    Subclasses set `backend` and implement `_forward(inputs) -> last_hidden_state` for one padded batch,
    or override `_embed_batches` to run several batches at once (OpenVINO's streams).

    Attributes:
        reference: the torch SentenceTransformerEmbedder this one was made from and checked against.
    """

    backend = "runtime"

    def __init__(
        self,
        reference: SentenceTransformerEmbedder,
        input_names: list[str],
        batch_size: int = 32,
    ) -> None:
        from tokenizers import Tokenizer

        if reference.fingerprint.pooling != "mean":
            raise ValueError(f"only mean pooling is supported, the model uses {reference.fingerprint.pooling!r}")
        self.reference = reference
        self._fingerprint = dataclasses.replace(reference.fingerprint, backend=self.backend)
        self._input_names = input_names
        self._batch_size = batch_size
        # Copies of the model's own fast tokenizer, configured once and never changed afterwards so
        # that many threads can use them at once. The file pads to 128: padding is done per batch here.
        spec = reference.tokenizer_spec
        self._tokenizer = Tokenizer.from_str(spec)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_seq_length)
        self._counting_tokenizer = Tokenizer.from_str(spec)
        self._counting_tokenizer.no_padding()
        self._counting_tokenizer.no_truncation()
        # One forward pass at a time: a pass already uses every thread it was given.
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeds texts, shortest first in batches of similar lengths (`length_batches`), in input order."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        batches = self._batches([len(e.ids) for e in encodings])
        with self._lock:
            self._embed_batches(encodings, batches, out)
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        return length_batches(lengths, self._batch_size)

    def _embed_batches(self, encodings: list, batches: list[list[int]], out: np.ndarray) -> None:
        """Writes the vectors of each batch of `encodings` (row indices) into `out`, under the lock."""
        for rows in batches:
            inputs = self._pad(rows, encodings)
            out[rows] = mean_pool_normalize(self._forward(inputs), inputs["attention_mask"])

    def _pad(self, rows: list[int], encodings: list) -> dict[str, np.ndarray]:
        return _pad([encodings[i] for i in rows], self._input_names)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._counting_tokenizer.encode_batch(list(texts))]

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def _pad(encodings: list, input_names: list[str]) -> dict[str, np.ndarray]:
    """int64 arrays padded with zeros (the [PAD] id, mask 0) to the longest encoding of the batch."""
    width = max(len(e.ids) for e in encodings)
    fields = {
        "input_ids": "ids",
        "attention_mask": "attention_mask",
        "token_type_ids": "type_ids",
    }
    arrays = {}
    for name in input_names:
        array = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            values = getattr(encoding, fields[name])
            array[row, : len(values)] = values
        arrays[name] = array
    return arrays


class OnnxEmbedder(RuntimeEmbedder):
    """Embeds with onnxruntime on the CPU, from the cached fused export of the reference model
    (`fused_onnx_dir`), or from the plain export if the fused one cannot be built or does not agree.

    Args:
        reference: the torch embedder of the same model (exported on first use, kept as `.reference`).
        cache_dir: where exports are cached.
        threads: intra-op threads; None lets onnxruntime use every core.
        batch_size: texts per forward pass.
        spin: let intra-op threads spin-wait between the operators of a run instead of sleeping,
            and stop spinning when the run returns ("session.force_spinning_stop"). On a one-query
            call this saves a thread wake-up per operator: p50 3.4-3.8 against 4.2-4.6 ms here (plain
            graph), at the same CPU time per query. Spinning that outlives the run (onnxruntime's
            default) was as fast but burned ~40 % more CPU, starving the other engine, gRPC's threads
            and anything else on a shared 2-core box, so it is never used.
    """

    backend = "onnx"

    def __init__(
        self,
        reference: SentenceTransformerEmbedder,
        cache_dir: str | Path,
        threads: int | None = None,
        batch_size: int = 32,
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        try:
            self.model_dir = fused_onnx_dir(reference, cache_dir)
        except Exception as exc:  # noqa: BLE001 - the plain export is as exact, only slower per query
            log.warning("onnxruntime runs the plain export: the fused one failed (%s: %s)", type(exc).__name__, exc)
            self.model_dir = onnx_export_dir(reference, cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self._session = ort.InferenceSession(
            str(self.model_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        super().__init__(reference, [i.name for i in self._session.get_inputs()], batch_size)

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, inputs)[0]

    def token_states(self, texts: list[str]) -> list[tuple[Any, np.ndarray]]:
        """Each text's tokens (a `tokenizers.Encoding`, truncated at the window, the rest in its
        `overflowing`) and their final-layer vectors, float32 (tokens, dim), padding left out.

        Up to `batch_size` texts run as one padded forward pass (Explain's query and document: one
        call costs ~0.7x two calls of one text here), so mean-pooling a text's vectors gives the
        vector `encode` gives it, to float rounding of the padded batch (~1e-7).
        """
        encodings = self._tokenizer.encode_batch(list(texts))
        out: list[tuple[Any, np.ndarray]] = []
        for begin in range(0, len(encodings), self._batch_size):
            batch = encodings[begin : begin + self._batch_size]
            inputs = _pad(batch, self._input_names)
            with self._lock:
                hidden = self._forward(inputs)
            # Copies: the session may reuse its output buffer.
            out += [(encoding, np.array(hidden[row, : len(encoding.ids)])) for row, encoding in enumerate(batch)]
        return out

    def id_to_token(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(token_id)
