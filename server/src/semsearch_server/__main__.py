"""semsearch-server: read config, wire the parts, serve until SIGTERM/SIGINT, drain, exit 0 (SIGHUP: reload keys)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from semsearch_server.config import ConfigError, ServerConfig, load_config
from semsearch_server.logs import quiet_third_parties


def configure_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler], force=True)
    quiet_third_parties()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["migrate"]:  # `semsearch-server migrate ...`: copy local collections into Milvus
        from semsearch_server.migrate import main as migrate

        return migrate(argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # faiss runs a search on OpenMP threads that, by default, spin for a while after each call: on 2
    # cores they took the CPU from the ONNX Runtime pass of the next query. A lone search went from
    # p50 29 to 8.3 ms (CPU per search 14 -> 5 ms) with idle OpenMP threads sleeping instead, on a
    # loaded machine; batch searches and index builds keep their threads. Read once, when faiss
    # loads its OpenMP runtime, which happens after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"semsearch-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    log = logging.getLogger("semsearch_server")
    log.info("configuration: %s", json.dumps(config.describe(), sort_keys=True))

    from semsearch_server.app import Application

    app = Application(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # SIGHUP re-reads the API key file; in a thread of its own, so the handler never waits on a lock
    # (the log's) that the interrupted main thread might hold.
    signal.signal(
        signal.SIGHUP,
        lambda *_: threading.Thread(target=app.reload_api_keys, name="reload-api-keys", daemon=True).start(),
    )
    try:
        app.start()
    except ConfigError as exc:
        log.error("%s", exc)
        app.stop(grace=0)
        return 2
    except OSError as exc:
        log.error("%s", exc)
        app.stop(grace=0)
        return 1
    try:
        app.load()
    except Exception:
        log.exception("start-up failed")
        app.stop(grace=0)
        return 1
    stop.wait()
    log.info("signal received: draining (grace %.0fs)", config.grace_seconds)
    app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
