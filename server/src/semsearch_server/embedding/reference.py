"""The model as the exported runtimes need it, without torch unless something really needs torch.

Serving with ONNX Runtime or OpenVINO needs the model's fingerprint and its fast tokenizer, not
torch: importing torch and sentence-transformers and loading the weights took seconds of every start
and ~400 MB of the server's memory. `ModelReference` reads what the runtimes need from a small cache
(`cache_dir/model-info/<weights sha256>.json`), written from the loaded torch model the first time,
and loads torch only when something asks for it: an export, the agreement check when its verdict is
not cached, the torch backend, or Explain's attention view.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from semsearch_server.embedding.base import FingerprintDescribed, ModelFingerprint
from semsearch_server.embedding.sentence_transformer import (
    SentenceTransformerEmbedder,
    _model_display_name,
    hash_model_dir,
)

log = logging.getLogger(__name__)

# Bumped whenever the cached fields change, so that an old file is rewritten, not misread.
INFO_FORMAT = 1


class ModelReference(FingerprintDescribed):
    """The fingerprint and tokenizer of a sentence-transformers model, and its torch embedder on first use.

    Offers what RuntimeEmbedder and the factory use of a SentenceTransformerEmbedder (`fingerprint`,
    `tokenizer_spec`, `model`, `model_path`, `encode`); only `model`, `encode` and `torch` load torch.

    Args:
        model_path: a directory holding a sentence-transformers model.
        cache_dir: where the model description is cached (beside the exports).
        model_name: the name to report in the fingerprint; defaults to the directory's name.
        loaded: an already loaded torch embedder of `model_path` (no second copy is loaded).

    Attributes:
        model_path: as given.
        module_kinds: class names of the model's modules in order ("Transformer", "Pooling", ...).
        model_normalizes: whether the model's last module normalises (the service always does).
        tokenizer_spec: the fast tokenizer as the torch model configures it (tokenizers JSON).
    """

    backend = "torch"

    def __init__(
        self,
        model_path: str,
        cache_dir: str | Path,
        model_name: str | None = None,
        loaded: SentenceTransformerEmbedder | None = None,
    ) -> None:
        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"model path {model_path!r} is not a directory")
        self.model_path = str(path)
        self._model_name = model_name
        self._torch = loaded
        self._torch_lock = threading.Lock()
        info_file = Path(cache_dir) / "model-info" / "unknown.json"
        if loaded is not None:
            info = _describe(loaded)
        else:
            weights = hash_model_dir(path)
            info_file = info_file.with_name(f"{weights}.json")
            info = _read_info(info_file, weights)
            if info is None:
                info = _describe(self._load_torch("describing the model for the first time"))
                _write_info(info_file, info)
        self._fingerprint = ModelFingerprint.from_dict(
            {**info["fingerprint"], "model_name": model_name or _model_display_name(path), "backend": self.backend}
        )
        self.module_kinds: list[str] = list(info["module_kinds"])
        self.model_normalizes = bool(info["model_normalizes"])
        self.tokenizer_spec: str = info["tokenizer"]

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self._fingerprint

    @property
    def torch_loaded(self) -> bool:
        return self._torch is not None

    @property
    def torch(self) -> SentenceTransformerEmbedder:
        """The torch embedder of the model, loaded on first use."""
        return self._load_torch("asked for")

    @property
    def model(self):
        """The sentence-transformers model (loads torch)."""
        return self.torch.model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.torch.encode(texts)

    def token_counts(self, texts: list[str]) -> list[int]:
        return self.torch.token_counts(texts)

    def release_torch(self) -> None:
        """Drops the torch model (after a first start's exports and checks); `torch` loads it again if asked."""
        with self._torch_lock:
            self._torch = None

    def _load_torch(self, why: str) -> SentenceTransformerEmbedder:
        with self._torch_lock:
            if self._torch is None:
                started = time.monotonic()
                self._torch = SentenceTransformerEmbedder(self.model_path, model_name=self._model_name)
                log.info("torch model loaded in %.2fs (%s)", time.monotonic() - started, why)
            return self._torch


def _describe(embedder: SentenceTransformerEmbedder) -> dict:
    fingerprint = embedder.fingerprint.to_dict()
    fingerprint.pop("backend")
    fingerprint.pop("model_name")
    return {
        "format": INFO_FORMAT,
        "fingerprint": fingerprint,
        "module_kinds": [type(module).__name__ for module in embedder.model],
        "model_normalizes": bool(embedder.model_normalizes),
        "tokenizer": embedder.tokenizer_spec,
    }


def _read_info(file: Path, weights_sha256: str) -> dict | None:
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("model description %s is unreadable (%s); describing the model again", file, exc)
        return None
    if info.get("format") != INFO_FORMAT or info.get("fingerprint", {}).get("weights_sha256") != weights_sha256:
        return None
    return info


def _write_info(file: Path, info: dict) -> None:
    """Writes beside and renames, so a crash or a concurrent start never leaves half a file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".info-", dir=file.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(info, out)
        os.replace(tmp, file)
    except OSError as exc:  # a read-only cache costs the next start a torch load, nothing more
        log.warning("could not cache the model description at %s: %s", file, exc)
