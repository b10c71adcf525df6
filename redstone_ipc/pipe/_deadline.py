"""Deadlines: a ``timeout`` turned into an instant, and what is left of it for ``poll(2)``."""

from __future__ import annotations

import math
import time

from ..core.timeout import seconds

__all__ = ["deadline", "poll_ms"]

_POLL_MS_MAX = 2**31 - 1  # poll(2) takes a C int of milliseconds


def deadline(timeout: float | None) -> float | None:
    """The monotonic instant a wait must end (None: never).

    The package's rule for ``timeout`` (``core/timeout.py``): None or
    infinity for ever, 0 or less only tries, NaN is a ValueError.
    """
    timeout = seconds(timeout)
    if timeout is None:
        return None
    return time.monotonic() + timeout


def poll_ms(deadline: float | None) -> int | None:
    """Milliseconds to poll, -1 for ever; None once the deadline has passed.

    Rounded up, so a poll never returns just before the deadline and makes
    the caller loop (spin) through the last fraction of a millisecond.
    """
    if deadline is None:
        return -1
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    return min(math.ceil(remaining * 1000), _POLL_MS_MAX)
