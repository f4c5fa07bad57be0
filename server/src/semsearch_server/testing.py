"""Running a real `python -m semsearch_server` process, for tests and benchmarks (restarts, kills, load)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from semsearch import SearchClient, SemsearchError

_LISTENING = re.compile(r"listening on [^ ]+:(\d+)")
# A first start serves on torch while it builds the fast engines (wiring.py); these end that phase.
_FIRST_START = "first start: serving on torch"
_FIRST_START_DONE = ("the torch model is released", "first start: staying on torch")


class ServerProcess:
    """A real `python -m semsearch_server` process: for restarts, SIGKILL and SIGTERM."""

    def __init__(self, data_dir: Path, *extra: str, env: dict | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = data_dir.parent / f"server-{uuid.uuid4().hex[:6]}.log"

    def start(self, wait_serving: bool = True, timeout: float = 180, wait_engines: bool = True) -> ServerProcess:
        """Starts the process and waits for its port (and, by default, for SERVING).

        With `wait_engines` (and `wait_serving`), a first start is also awaited until it serves on the
        engines a restart would use (`wait_first_start`), so that what a test or benchmark measures
        does not depend on whether the model cache was filled already.
        """
        if getattr(self, "log", None):
            self.log.close()
        self.log = open(self.log_path, "w")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semsearch_server", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(self.data_dir), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.port:
            match = _LISTENING.search(self.log_path.read_text())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        if wait_serving:
            self.wait_serving(deadline - time.monotonic())
            if wait_engines:
                self.wait_first_start(max(deadline - time.monotonic(), 0) + 600)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs):
        return SearchClient(self.address, timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_serving(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        with SearchClient(self.address, timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    if c.health() == "SERVING":
                        return
                except SemsearchError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not SERVING after {timeout}s:\n{self.output()}")

    def wait_first_start(self, timeout: float = 600) -> None:
        """Waits until a first start has switched to its fast engines (or stayed on torch); at once otherwise."""
        deadline = time.monotonic() + timeout
        while _FIRST_START in (log := self.output()) and not any(done in log for done in _FIRST_START_DONE):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"first start not finished after {timeout}s:\n{log}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.port = 0

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM: the server drains and exits; returns its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.port = 0
        return code

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Kills the process if it still runs (cleanup after a test; use terminate() to drain)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if getattr(self, "log", None):
            self.log.close()


def unexpected_log_lines(log: str) -> list[str]:
    """Lines of a server's output that a successful run should not print: warnings, errors, tracebacks,
    anything that is not a log line, and the INFO narration of the third parties logs.py keeps quiet."""
    from semsearch_server.logs import CHATTY_AT_INFO

    out = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if line.strip() and (match is None or match["level"] != "INFO" or match["logger"] in CHATTY_AT_INFO):
            out.append(line)
    return out


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): ")
