"""Turns: one multi-syscall write at a time, for threads and asyncio tasks alike.

A ``write`` longer than a pipe's free space takes several syscalls. Holding a
turn across them keeps its bytes contiguous with respect to the other writes
made through the same object in this process. Threads sleep in
``Lock.acquire`` (a futex, with a timeout); tasks queue a future that
``release`` resolves, from whichever thread releases, and then try again.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

__all__ = ["Turn", "resolve"]

_Entry = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def resolve(future: asyncio.Future[None]) -> None:
    """Wake whoever awaits ``future`` (unless it was cancelled meanwhile)."""
    if not future.done():
        future.set_result(None)


class Turn:
    """A lock that threads wait for with a deadline and asyncio tasks await."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: collections.deque[_Entry] = collections.deque()

    def acquire(self, deadline: float | None) -> bool:
        """Take the turn; False if the (monotonic) deadline passes first."""
        if deadline is None:
            return self._lock.acquire()
        if self._lock.acquire(blocking=False):
            return True
        remaining = deadline - time.monotonic()
        return remaining > 0 and self._lock.acquire(timeout=remaining)

    def try_acquire(self) -> bool:
        """Take the turn if it is free, without waiting."""
        return self._lock.acquire(blocking=False)

    async def acquire_async(self) -> None:
        """Take the turn from a task; cancellable while it waits."""
        loop = asyncio.get_running_loop()
        while True:
            # Queue first, then try: a release() between a failed try and
            # the queueing would otherwise be missed, and the task never woken.
            entry: _Entry = (loop, loop.create_future())
            self._tasks.append(entry)
            if self._lock.acquire(blocking=False):
                self._discard(entry)
                return
            try:
                await entry[1]
            finally:
                self._discard(entry)

    def _discard(self, entry: _Entry) -> None:
        try:
            self._tasks.remove(entry)
        except ValueError:
            pass  # release() already took it

    def release(self) -> None:
        """Give the turn back: a waiting thread may take it; every queued task retries."""
        self._lock.release()
        while self._tasks:
            try:
                loop, future = self._tasks.popleft()
            except IndexError:  # another release() emptied it meanwhile
                break
            try:
                loop.call_soon_threadsafe(resolve, future)
            except RuntimeError:  # pragma: no cover - that loop is closed
                pass
