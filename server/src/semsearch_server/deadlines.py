"""The current call's deadline, carried to code that cannot see the gRPC context (the embedding batcher).

The transport sets it around each call (``transport/deadlines.py``); code below reads ``remaining()``.
A thread the call hands work to does not inherit it (contextvars are per thread unless copied), so the
absence of a deadline means "unknown", never "expired".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("semsearch_caller_deadline", default=None)


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
