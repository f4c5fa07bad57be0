"""The current call's deadline, carried to code that cannot see the gRPC context (the embedding batcher).

The transport sets it around each call (``transport/deadlines.py``); code below reads ``remaining()``.
The core may also say what else ends the caller's wait (``give_up_if``: a write whose disk filled while it
waited for its vectors), and code that waits long calls ``check_give_up()`` while it waits.
A thread the call hands work to does not inherit it (contextvars are per thread unless copied), so the
absence of a deadline means "unknown", never "expired".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("semsearch_caller_deadline", default=None)
_give_up: ContextVar[Callable[[], None] | None] = ContextVar("semsearch_caller_gives_up", default=None)
# How often a wait that can be given up asks: a fraction of the 2 s in which a full disk is said.
GIVE_UP_POLL_SECONDS = 0.05


@contextmanager
def caller_deadline(seconds_remaining: float | None) -> Iterator[None]:
    """Within the block, the caller gives up after seconds_remaining (None: no deadline)."""
    token = _deadline.set(None if seconds_remaining is None else time.monotonic() + seconds_remaining)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds until the caller's deadline (<= 0 once it passed), or None when there is none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def give_up_if(check: Callable[[], None]) -> Iterator[None]:
    """Within the block, waits end as soon as check() raises (its exception is what the caller gets)."""
    token = _give_up.set(check)
    try:
        yield
    finally:
        _give_up.reset(token)


def can_give_up() -> bool:
    """Whether the current call has a give_up_if check (its waits should be ones that can end early)."""
    return _give_up.get() is not None


def check_give_up() -> None:
    """Raises what the current call's give_up_if check raises (nothing without one)."""
    check = _give_up.get()
    if check is not None:
        check()
