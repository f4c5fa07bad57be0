"""StoreHealth: NOT_SERVING while the store does not answer, SERVING on the probe's first success."""

from __future__ import annotations

import threading
import time

from semsearch_server.errors import StoreUnreachable
from semsearch_server.store_health import StoreHealth


class FakeStore:
    def __init__(self) -> None:
        self.up = True
        self.pings = 0
        self.started = threading.Event()  # set by every ping once it has begun

    def ping(self, timeout: float) -> None:
        self.pings += 1
        self.started.set()
        if not self.up:
            raise StoreUnreachable("Milvus is unreachable (ping): connection refused")


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_probe_follows_the_store_and_reports_changes_only():
    store, reports = FakeStore(), []
    health = StoreHealth(store.ping, reports.append, interval=0.05, timeout=0.05)
    health.start()
    try:
        wait_for(lambda: store.pings >= 3)
        assert reports == []  # reachable from the start: nothing to change
        store.up = False
        wait_for(lambda: reports == [False])
        pings = store.pings
        wait_for(lambda: store.pings >= pings + 3)
        assert reports == [False]  # still down: reported once
        store.up = True
        wait_for(lambda: reports == [False, True])
    finally:
        health.stop()


def test_a_failed_call_flips_at_once_and_wakes_the_probe():
    store, reports = FakeStore(), []
    health = StoreHealth(store.ping, reports.append, interval=60.0, timeout=0.05)
    health.start()
    try:
        store.up = False
        started = time.monotonic()
        health.unreachable(StoreUnreachable("Milvus is unreachable (search)"))
        assert reports == [False]  # before the call's answer leaves the server
        wait_for(lambda: store.pings >= 1)  # not after the 60 s interval
        assert time.monotonic() - started < 5
        store.up = True
        health.unreachable(StoreUnreachable("again"))  # already down: no report, no extra wake-up
        assert reports == [False]
    finally:
        health.stop()


def test_a_probe_that_began_before_a_failure_does_not_undo_it():
    reports: list[bool] = []
    release = threading.Event()
    pinging = threading.Event()

    def slow_ping(timeout: float) -> None:
        pinging.set()
        release.wait(5)

    health = StoreHealth(slow_ping, reports.append, interval=0.01, timeout=0.05)
    health.start()
    try:
        assert pinging.wait(5)
        health.unreachable("a call failed while the probe was on its way")
        release.set()  # that probe succeeds, but began before the failure
        time.sleep(0.05)
        assert reports[0] is False
        # Later probes (begun after the failure) do bring it back.
        wait_for(lambda: reports[-1] is True)
    finally:
        release.set()
        health.stop()


def test_stopped_it_changes_nothing_and_a_local_store_runs_no_thread():
    store, reports = FakeStore(), []
    health = StoreHealth(store.ping, reports.append, interval=0.01)
    health.start()
    health.stop()
    store.up = False
    health.unreachable("after stop")
    assert reports == []
    before = {t.name for t in threading.enumerate()}
    local = StoreHealth(None, reports.append)
    local.start()
    local.unreachable("cannot happen on local files")
    assert "store-health" not in {t.name for t in threading.enumerate()} - before
    assert reports == []
