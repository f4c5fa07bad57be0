"""Health that follows the store: NOT_SERVING while the store the collections live on cannot be reached.

A replica on Milvus can answer nothing while Milvus is down: every call would be UNAVAILABLE. Reporting
SERVING meanwhile keeps a load balancer sending it traffic, so `StoreHealth` flips the health status:

- to NOT_SERVING at once when a call fails with StoreUnreachable (the servicer reports it on its error
  path, `unreachable`), or when the probe fails;
- back to SERVING on the probe's first success.

The probe is one cheap store request (Milvus: list the collections) with a short timeout, every
`interval` seconds on a thread of its own, and at once after a call reported the store unreachable. It is
never on a request's path: a request that succeeds pays nothing, one that fails pays a comparison and an
Event.set. A store without a probe (the local store: its files are on this machine) gets no thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.0


class StoreHealth:
    """Keeps `report(serving)` in step with whether the store answers.

    Args:
        ping: one cheap store request that raises when the store does not answer within its argument,
            a timeout in seconds; None: a store that is always there (nothing runs).
        report: sets the health status (True: SERVING); called on every change, from any thread.
    """

    def __init__(
        self,
        ping: Callable[[float], None] | None,
        report: Callable[[bool], None],
        interval: float = PROBE_INTERVAL_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self._ping = ping
        self._report = report
        self.interval = interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._reachable = True
        # Bumped by every failure a call reports: a probe that started before it must not undo it.
        self._failures = 0
        self._down_since = 0.0
        self._thread: threading.Thread | None = None

    @property
    def reachable(self) -> bool:
        return self._reachable

    def start(self) -> None:
        if self._ping is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="store-health", daemon=True)
        self._thread.start()

    def unreachable(self, reason: object) -> None:
        """A call found the store unreachable: NOT_SERVING now, and the probe runs at once to confirm it."""
        if self._ping is None:
            return
        with self._lock:
            self._failures += 1
            changed = self._set(False, reason)
        if changed:
            self._wake.set()

    def stop(self) -> None:
        """No more changes of the status from here on (the caller sets it as it drains)."""
        with self._lock:
            self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5.0)
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped:
                return
            failures = self._failures
            try:
                self._ping(self.timeout)
            except Exception as exc:  # noqa: BLE001 - whatever the store says, it cannot serve now
                with self._lock:
                    self._set(False, exc)
                continue
            with self._lock:
                if self._failures == failures:
                    self._set(True, None)

    def _set(self, reachable: bool, reason: object) -> bool:
        """Under the lock: records the state and reports a change; True when it changed."""
        if self._stopped or reachable == self._reachable:
            return False
        self._reachable = reachable
        if reachable:
            log.info("the store answers again after %.1fs: SERVING", time.monotonic() - self._down_since)
        else:
            self._down_since = time.monotonic()
            log.warning("the store is unreachable (%s): NOT_SERVING until it answers", reason)
        self._report(reachable)
        return True
