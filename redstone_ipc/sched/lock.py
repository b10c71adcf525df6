"""Taking a lock back after a sleep, whatever signal handlers raise meanwhile.

A blocking call that sleeps with a lock released takes it back afterwards,
usually in a ``finally`` block, to undo its bookkeeping (counts of threads
inside the call, registered waiters). A contended ``threading.Lock`` can be
interrupted by a signal: a Python handler that raises (KeyboardInterrupt)
makes ``acquire()`` raise *without* the lock, the bookkeeping is skipped for
good (fds never closed, a leader flag left set: later calls hang), and the
code after it may release a lock that another thread holds.

:func:`acquire_deferring` takes the lock anyway and hands the handler's
exception back, to be raised once the bookkeeping is done;
:class:`relocked` does that around a ``with`` block; :class:`Condition` is a
``threading.Condition`` whose ``wait`` takes its lock back the same way.
"""

from __future__ import annotations

import threading
from operator import methodcaller
from types import TracebackType

__all__ = ["acquire_deferring", "relocked", "Condition"]


_acquire = methodcaller("acquire")


def acquire_deferring(lock: threading.Lock) -> BaseException | None:
    """Take ``lock``, even if signal handlers raise while this waits for it.

    Returns the first exception a handler raised meanwhile (None if none):
    the caller raises it when it is done with the lock.
    """
    # A handler's exception comes either from inside acquire() (interrupted
    # while waiting: not taken) or just after it returned (taken): Python
    # runs handlers when a call returns. ``got`` tells the two apart, because
    # it is filled in C, by extend, before control is back in Python. A plain
    # retry would deadlock on a lock this thread already holds.
    deferred: BaseException | None = None
    got: list[bool] = []
    while not got:
        try:
            got.extend(map(_acquire, (lock,)))
        except BaseException as exc:  # KeyboardInterrupt, or any handler's
            if deferred is None:
                deferred = exc
    return deferred


class relocked:
    """``with relocked(lock): ...`` in a ``finally`` block: the body always
    runs with ``lock`` held; a handler's exception raised while taking it is
    raised after the block (unless the block itself raises)."""

    __slots__ = ("_lock", "_deferred")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._deferred: BaseException | None = None

    def __enter__(self) -> None:
        self._deferred = acquire_deferring(self._lock)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
        if self._deferred is not None and exc_type is None:
            raise self._deferred


class Condition(threading.Condition):
    """A ``threading.Condition`` over a plain Lock whose ``wait`` always
    returns (or raises) with the lock held: a handler's exception raised
    while it takes the lock back is raised once it holds it."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self._plain = lock
        self._deferred = threading.local()

    # threading.Condition.wait calls this (in a finally) to take the lock back;
    # the base class's version is a plain, interruptible lock.acquire().
    def _acquire_restore(self, state: object) -> None:
        exc = acquire_deferring(self._plain)
        if exc is not None:
            self._deferred.exc = exc

    def wait(self, timeout: float | None = None) -> bool:
        try:
            return super().wait(timeout)
        finally:
            exc = getattr(self._deferred, "exc", None)
            if exc is not None:
                self._deferred.exc = None
                raise exc
