"""Semaphore: a counter of permits in shared memory, for many processes.

The same contract as :class:`threading.Semaphore`, across processes:
``acquire()`` takes a permit, sleeping (in the kernel) while there is none;
``release(n)`` adds ``n`` permits and wakes up to ``n`` sleepers.

Two u32 words::

    +0  count    permits available
    +4  waiters  processes/threads inside the slow path of acquire()

Taking a permit is a compare-and-swap ``count -> count-1`` (no syscall).
A waiter first announces itself in ``waiters``, then re-reads ``count`` and
sleeps on ``count == 0``; a releaser adds to ``count`` first, then reads
``waiters``. Whichever order the two interleave in, either the waiter sees
the new count or the releaser sees the waiter and wakes it: no lost
wake-ups, and no syscall in ``release()`` when nobody waits. (A waiter
killed while asleep leaves ``waiters`` one too high: releases then make a
useless wake syscall, nothing worse.)

``Semaphore(mapping, offset)`` attaches; ``Semaphore(mapping, offset,
value=n)`` or ``Semaphore.create(mapping, offset, n)`` initialises the count
to ``n`` first (before other processes use it). Zero-filled memory is a
semaphore with no permits. A writable mapping is needed: PermissionDenied
otherwise. ``with sem:`` holds a permit; ``close()`` detaches (unpins the
mapping).
"""

from __future__ import annotations

import ctypes
import time

from ..errors import TimedOut, WouldBlock
from ..futex.block import SharedPrimitive, acquire_timeout, time_left
from ..linux.atomic import cas_u32, fetch_add_u32, load_u32, store_u32
from ..linux.futex import futex_wait, futex_wake
from ..shm.shm import Mapping

__all__ = ["Semaphore"]

_U32_MAX = 0xFFFFFFFF


class Semaphore(SharedPrimitive):
    """A counting semaphore at ``offset`` of a shared ``mapping``.

    Its first word (``_word``) is the count, the second the waiters.
    """

    SIZE = 8  # bytes it occupies, a multiple of ALIGN
    ALIGN = 4
    _OWNER = "a Semaphore"

    __slots__ = ("_waiters",)

    def __init__(self, mapping: Mapping, offset: int, value: int | None = None) -> None:
        """Attach; with ``value``, first initialise the count to it."""
        # Contract: InvalidAddress / NotMapped / PermissionDenied as for every
        # primitive; ValueError if value is not in 0..2**32-1. Pins the mapping.
        if value is not None and not 0 <= value <= _U32_MAX:
            raise ValueError(f"semaphore value must be in 0..{_U32_MAX}, not {value}")
        super().__init__(mapping, offset)
        self._waiters = ctypes.c_void_p(self._block.address + 4)
        if value is not None:
            store_u32(self._waiters, 0)
            store_u32(self._live(), value)

    @classmethod
    def create(cls, mapping: Mapping, offset: int, value: int = 1) -> Semaphore:
        """Initialise with ``value`` permits and attach. Before sharing it."""
        return cls(mapping, offset, value)

    @property
    def value(self) -> int:
        """Permits available now (a snapshot)."""
        return load_u32(self._live())

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one permit; True when taken, False if none came in time.

        The signature and the result of ``threading.Semaphore.acquire``:
        ``blocking=False`` only tries (a bool: ``acquire(5)`` is a TypeError,
        not five seconds); otherwise ``timeout`` is in seconds,
        None (the default) waits for ever, and 0 or less only tries. When the
        time runs out it returns False rather than raising TimedOut, as the
        standard library does.
        """
        # Contract: True => the count went down by one on our behalf; False
        # => nothing taken (only after a finite timeout, or not blocking).
        # ValueError for blocking=False with a timeout (as threading does);
        # TypeError for a blocking that is not a bool: acquire(5) means
        # acquire(timeout=5) in older code, and would now block for ever.
        # Sleeps in the kernel while the count is 0. A signal handler's
        # exception propagates (nothing taken).
        if blocking is not True:
            timeout = acquire_timeout(blocking, timeout)  # ValueError, TypeError
        count = self._live()
        value = load_u32(count)
        while value:
            ok, value = cas_u32(count, value, value - 1)
            if ok:
                return True
        if timeout is not None and timeout <= 0:
            return False
        return self._acquire_slow(count, timeout)

    def _acquire_slow(self, count: ctypes.c_void_p, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        fetch_add_u32(self._waiters, 1)  # announce first, then look again
        try:
            while True:
                value = load_u32(count)
                while value:
                    ok, value = cas_u32(count, value, value - 1)
                    if ok:
                        return True
                wait_for = time_left(deadline)
                if wait_for is not None and wait_for <= 0:
                    return False
                try:
                    futex_wait(count, 0, wait_for)
                except (WouldBlock, TimedOut):
                    pass
        finally:
            fetch_add_u32(self._waiters, -1)

    def release(self, n: int = 1) -> None:
        """Add ``n`` permits; wake up to ``n`` waiters (no syscall if none)."""
        # Contract: ValueError if n < 1 or the count would pass 2**32-1 (then
        # nothing changes).
        if n < 1:
            raise ValueError("n must be one or more")
        count = self._live()
        value = load_u32(count)
        while True:
            if value + n > _U32_MAX:
                raise ValueError(f"releasing {n} would overflow the semaphore ({value} permits)")
            ok, value = cas_u32(count, value, value + n)
            if ok:
                break
        if load_u32(self._waiters):
            futex_wake(count, n)

    def __enter__(self) -> Semaphore:
        """``with sem:`` holds a permit for the block (waiting for ever), as
        with ``threading.Semaphore``. It does not close the Semaphore:
        ``close()`` does, or ``with contextlib.closing(Semaphore(m, 0)):``."""
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _state(self) -> str:
        return f" value={self.value}"
