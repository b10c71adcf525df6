"""asyncio: ``read_async`` and ``write_async``, waiting in the running loop.

Tasks wait with ``loop.add_reader``/``add_writer``: no thread per wait. The
end's eventfd (readable once it is closing) is registered beside its socket,
so closing the handle wakes every task too. A deadline bounds each wait
with ``asyncio.wait_for``, so the async forms keep the sync ones' results:
TimedOut when nothing was done in time, the count when some was.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..errors import TimedOut
from ._io import READ_CAP, recv, send_some
from ._turn import resolve

if TYPE_CHECKING:
    from ._end import _PipeEndObject, _PipeWriterObject

__all__ = ["LoopWaits", "read_async", "write_async"]

_Key = tuple[Any, int, bool]  # (loop, fd, writable)


class LoopWaits:
    """The tasks waiting on one end's fds, in any number of event loops.

    asyncio takes one callback per fd and direction, but several tasks may
    wait on the same end: one registration per (loop, fd, direction) wakes
    all of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[_Key, set[asyncio.Future[None]]] = {}

    async def wait(self, keys: list[_Key]) -> None:
        """Return once any of ``keys`` (in the running loop) is ready."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        added = []
        try:
            for key in keys:
                self._add(key, future)
                added.append(key)
            await future
        finally:
            for key in added:
                self._discard(key, future)

    def _add(self, key: _Key, future: asyncio.Future[None]) -> None:
        with self._lock:
            waiters = self._waiting.get(key)
            first = waiters is None
            if waiters is None:
                waiters = self._waiting[key] = set()
            waiters.add(future)
        if first:
            loop, fd, writable = key
            add = loop.add_writer if writable else loop.add_reader
            try:
                add(fd, self._wake, key)
            except BaseException:
                with self._lock:
                    self._waiting.pop(key, None)
                raise

    def _wake(self, key: _Key) -> None:
        # Unregister at once: the fd stays ready until a woken task consumes
        # it, and a registered level-triggered fd would call us every turn.
        with self._lock:
            waiters = self._waiting.pop(key, set())
        _unregister(key)
        for future in waiters:
            resolve(future)

    def _discard(self, key: _Key, future: asyncio.Future[None]) -> None:
        with self._lock:
            waiters = self._waiting.get(key)
            if waiters is None or future not in waiters:
                return
            waiters.discard(future)
            if waiters:
                return
            del self._waiting[key]
        _unregister(key)


def _unregister(key: _Key) -> None:
    loop, fd, writable = key
    (loop.remove_writer if writable else loop.remove_reader)(fd)


async def _wait(obj: _PipeEndObject, fd: int, writable: bool) -> None:
    """Await readiness of ``fd`` in the running loop, or the end's closing."""
    loop = asyncio.get_running_loop()
    await obj.loop_waits.wait([(loop, fd, writable), (loop, obj._wake_fd_get(), False)])
    obj._check_open()


async def read_async(obj: _PipeEndObject, n: int, deadline: float | None, timeout: float | None) -> bytes:
    """Up to ``n`` bytes once at least one is there; ``b''`` at end of stream.

    TimedOut if nothing arrived before ``deadline`` (monotonic; None: never).
    """
    n = min(n, READ_CAP)
    fd = obj._enter()
    try:
        while True:
            try:
                return recv(obj.sock, n)
            except BlockingIOError:
                pass
            if not await _within(_wait(obj, fd, writable=False), deadline):
                raise TimedOut(f"no bytes arrived within {timeout}s")
    finally:
        obj._leave()


async def write_async(obj: _PipeWriterObject, view: memoryview, deadline: float | None,
                      timeout: float | None) -> int:
    """All of ``view``, awaiting room; its length. PeerClosed if every reader is gone.

    Unless ``deadline`` passes: then the count written, or TimedOut if none
    (as the sync ``write``).
    """
    total = view.nbytes
    fd = obj._enter()
    try:
        turn = obj._turn
        if not turn.try_acquire() and not await _within(turn.acquire_async(), deadline):
            raise TimedOut(f"another write kept this pipe end busy for {timeout}s")
        written = 0
        try:
            obj._check_open()
            while written < total:
                written += send_some(obj.sock, view, written)
                if written < total and not await _within(_wait(obj, fd, writable=True), deadline):
                    if written:
                        return written
                    raise TimedOut(f"the pipe stayed full for {timeout}s")
            return written
        finally:
            turn.release()
    finally:
        obj._leave()


async def _within(waiting: Coroutine[Any, Any, None], deadline: float | None) -> bool:
    """Await ``waiting``; False (and ``waiting`` cancelled) if ``deadline`` passes first."""
    if deadline is None:
        await waiting
        return True
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        waiting.close()  # never started: nothing to undo
        return False
    try:
        await asyncio.wait_for(waiting, remaining)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        return False
    return True
