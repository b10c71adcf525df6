"""Condition: wait for a change of shared data, under a shared Mutex.

The same contract as :class:`threading.Condition`, across processes, built
from a :class:`~redstone_ipc.sync.mutex.Mutex` and a sequence counter:

    +0  seq      bumped by every notify that has someone to wake
    +4  waiters  threads between "announce" and "woke up" in wait()

``wait()`` runs with the mutex held: it announces itself (``waiters += 1``)
and reads ``seq`` *while still holding the mutex*, releases the mutex, and
sleeps on ``seq`` keeping that value. ``notify()`` (also under the mutex)
sees the announcement, bumps ``seq`` and wakes. A notify that comes between
the release and the sleep changes ``seq``, so the kernel does not let the
waiter sleep: no lost wake-up. With nobody announced, notify makes no
system call.

If the mutex's previous owner died while the waiter was re-acquiring it,
``mutex.owner_died`` is True after ``wait()`` returns, as after any acquire.

``Condition.create(mapping, offset, mutex)`` initialises; ``Condition(mapping,
offset, mutex)`` attaches. The mutex may live anywhere (any Mapping).
"""

from __future__ import annotations

import ctypes
import time
from typing import Callable, TypeVar

from ..errors import NotMapped, TimedOut, WouldBlock
from ..futex.block import SharedPrimitive, time_left
from ..linux.atomic import fetch_add_u32, load_u32, store_u32
from ..linux.futex import WAKE_ALL, futex_wait, futex_wake
from ..shm.shm import Mapping
from .mutex import Mutex

__all__ = ["Condition"]

T = TypeVar("T")


class Condition(SharedPrimitive):
    """A condition variable at ``offset`` of ``mapping``, used with ``mutex``.

    Its first word (``_word``) is ``seq``, the second ``waiters``.
    ``with cond:`` holds the mutex for the block, as with
    ``threading.Condition``. ``close()`` detaches the Condition only: the
    mutex stays open (``contextlib.closing`` closes it in a ``with``).
    """

    SIZE = 8
    ALIGN = 4
    _OWNER = "a Condition"

    __slots__ = ("_waiters", "mutex")

    def __init__(self, mapping: Mapping, offset: int, mutex: Mutex) -> None:
        """Attach. PermissionDenied on a read-only mapping."""
        if not isinstance(mutex, Mutex):
            raise TypeError(f"a Condition needs a redstone_ipc Mutex, not {type(mutex).__name__}")
        super().__init__(mapping, offset)
        self._waiters = ctypes.c_void_p(self._block.address + 4)
        self.mutex = mutex

    @classmethod
    def create(cls, mapping: Mapping, offset: int, mutex: Mutex) -> Condition:
        """Initialise the bytes and attach. Before sharing it."""
        self = cls(mapping, offset, mutex)
        store_u32(self._waiters, 0)
        store_u32(self._live(), 0)
        return self

    def _held(self) -> ctypes.c_void_p:
        seq = self._live()
        if not self.mutex.owned():
            raise RuntimeError("the Condition's mutex must be held by this thread")
        return seq

    def __enter__(self) -> Condition:
        """Hold the mutex for the block (waiting for ever); it stays open."""
        self.mutex.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.mutex.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the mutex, sleep until notified, re-acquire; False on timeout.

        As ``threading.Condition.wait``: ``timeout`` is in seconds, None (the
        default) waits for ever; when the time runs out it returns False
        rather than raising TimedOut.
        """
        # Contract: the mutex must be held (RuntimeError) and is held again
        # when this returns or raises (a signal handler's exception is raised
        # once it is held again). True after a notify (or a spurious wake-up:
        # callers re-check their predicate, see wait_for), False if
        # ``timeout`` ran out.
        seq = self._held()
        fetch_add_u32(self._waiters, 1)
        observed = load_u32(seq)
        self.mutex.release()
        try:
            futex_wait(seq, observed, timeout)
            notified = True
        except WouldBlock:
            notified = True  # a notify came between release and sleep
        except TimedOut:
            notified = False
        finally:
            fetch_add_u32(self._waiters, -1)
            _relock(self.mutex)
        return notified

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true; its last value (falsy on timeout).

        As ``threading.Condition.wait_for``: ``timeout`` in seconds, None (the
        default) waits for ever; on timeout the predicate's falsy value is
        returned, no exception raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            remaining = time_left(deadline)
            if remaining is not None and remaining <= 0:
                break
            self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> int:
        """Wake up to ``n`` waiters (mutex held); how many the kernel woke."""
        seq = self._held()
        if n <= 0 or not load_u32(self._waiters):
            return 0
        fetch_add_u32(seq, 1)
        return futex_wake(seq, n)

    def notify_all(self) -> int:
        """Wake every waiter (mutex held); how many woke."""
        return self.notify(WAKE_ALL)


def _relock(mutex: Mutex) -> None:
    """Take ``mutex`` back for ``wait()``, even if a signal handler raises while
    this sleeps for it: wait() holds the mutex when it raises too (the
    caller's ``with`` releases it), so the handler's exception is raised
    only once the mutex is held again."""
    deferred: BaseException | None = None
    while True:
        try:
            mutex.acquire()
            break
        except NotMapped:
            raise  # closed meanwhile: it cannot be taken back
        except BaseException as exc:  # a signal handler's (KeyboardInterrupt...)
            if deferred is None:
                deferred = exc
            if mutex.owned():
                break  # it was raised just after the lock was taken
    if deferred is not None:
        raise deferred
