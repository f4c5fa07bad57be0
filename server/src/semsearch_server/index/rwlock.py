"""A readers-writer lock: many searches at once, a write alone (writers are not starved)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._holding_writers = 0  # readers in read_holding_writers()
        self._upgrading = False  # a holder waits for the readers to leave (upgraded())

    def _admit_reader(self) -> None:
        """Waits for a reader's turn (called holding the condition's lock)."""
        # A waiting writer makes new readers wait (so that writers are not starved), except while a
        # read_holding_writers() section runs: the writer cannot go before it ends anyway.
        while self._writer or self._upgrading or (self._writers_waiting and not self._holding_writers):
            self._cond.wait()
        self._readers += 1

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._admit_reader()
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers <= 1:  # 1: an upgrader may be waiting for the others
                    self._cond.notify_all()

    @contextmanager
    def read_holding_writers(self) -> Iterator[None]:
        """A read during which writers wait but other readers keep coming, even once a writer waits.

        For copying a consistent state (a snapshot's copy of the indexes): writes wait for the copy,
        searches do not. Under plain writer preference, a write arriving during the copy would make
        every later search wait for the copy and then the write.
        """
        with self._cond:
            self._admit_reader()
            self._holding_writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._holding_writers -= 1
                self._cond.notify_all()

    @contextmanager
    def upgraded(self) -> Iterator[None]:
        """Inside read_holding_writers(): alone for a moment (the readers in finish, new ones wait), then
        back to holding writers off, with no writer in between. One caller at a time (two would wait for
        each other): the owner serialises them."""
        with self._cond:
            self._holding_writers -= 1
            self._upgrading = True
            while self._readers > 1:
                self._cond.wait()
            self._upgrading = False
            self._readers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers += 1
                self._holding_writers += 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
