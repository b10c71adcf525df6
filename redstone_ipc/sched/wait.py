"""WaitQueue: sleep until a condition on shared memory holds, across processes.

The seed's ``sched::wait::WaitQueue`` is what a Port's receiver sleeps on
until a message arrives. Here it is a *sequence counter* — one u32 in shared
memory — plus the kernel's futex wait queue for that word:

* a waiter reads the counter, **then** evaluates its predicate, and if the
  predicate is false sleeps with ``futex_wait(counter, value_read)``;
* a waker first makes the predicate true (writes the shared data), **then**
  bumps the counter, then wakes.

If the waker bumps between the waiter's read and its sleep, the kernel sees
that the counter no longer holds the value read and does not let the waiter
sleep (WouldBlock): it loops and re-evaluates the predicate. If the bump
came before the read, the predicate already sees the new data. Either way no
wake-up is lost, with no lock around the predicate. (The counter is 32 bits:
only 2**32 wakes between one waiter's read and its sleep could fool it.)

The queue itself is just the counter, so waiting never writes: a process
with a read-only mapping (a consumer of a buffer that only the producer may
write) can wait; waking needs a writable mapping (PermissionDenied
otherwise). Because waiters are not counted, every wake makes one system
call; it returns how many sleepers the kernel really woke.

``WaitQueue.create(mapping, offset)`` initialises; ``WaitQueue(mapping,
offset)`` attaches (zero-filled memory is a valid queue).
"""

from __future__ import annotations

import ctypes
import time
from typing import Callable, TypeVar

from ..errors import PermissionDenied, TimedOut, WouldBlock
from ..futex.block import SharedPrimitive, time_left
from ..linux.atomic import fetch_add_u32, load_u32, store_u32
from ..linux.futex import WAKE_ALL, futex_wait, futex_wake
from ..shm.shm import Mapping

__all__ = ["WaitQueue"]

T = TypeVar("T")


class WaitQueue(SharedPrimitive):
    """A cross-process wait queue at ``offset`` of a shared ``mapping``.

    ``WaitQueue(mapping, offset)`` attaches; read-only mappings may wait (not
    wake). Contract: InvalidAddress (not a Mapping / misaligned / outside),
    NotMapped. Pins the mapping until ``close()``; ``with`` closes it on
    exit. Its first word (``_word``) is the sequence counter.

    >>> with WaitQueue(m, 8) as queue:
    ...     queue.wait_until(lambda: m.load_u32(16) != 0, timeout=5)
    """

    SIZE = 8  # bytes it occupies (the counter + 4 reserved), a multiple of ALIGN
    ALIGN = 4
    _OWNER = "a WaitQueue"
    _WRITABLE = False  # waiting never writes

    __slots__ = ()

    @classmethod
    def create(cls, mapping: Mapping, offset: int) -> WaitQueue:
        """Initialise the bytes and attach. Before sharing it."""
        self = cls(mapping, offset)
        seq = self._writable_seq()
        store_u32(self._block.address + 4, 0)
        store_u32(seq, 0)
        return self

    def _writable_seq(self) -> ctypes.c_void_p:
        seq = self._live()
        if not self._block.writable:
            raise PermissionDenied("waking a WaitQueue needs a writable mapping")
        return seq

    @property
    def sequence(self) -> int:
        """The counter now: it changes with every wake."""
        return load_u32(self._live())

    def wait_until(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Sleep until ``predicate()`` is true; return its (truthy) result.

        ``predicate`` reads shared memory and must not block. ``timeout`` is
        in seconds, None (the default) waits for ever, 0 or less evaluates
        the predicate once; when the time runs out it raises TimedOut (a
        ``TimeoutError``).
        """
        # Contract: returns the first truthy predicate() value; raises
        # TimedOut if the timeout ends first (the predicate is evaluated one
        # last time at the deadline); predicate exceptions and signal-handler
        # exceptions propagate. No lost wake-up: see the module docstring.
        seq = self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            observed = load_u32(seq)  # read the counter BEFORE the predicate
            result = predicate()
            if result:
                return result
            wait_for = time_left(deadline)
            if wait_for is not None and wait_for <= 0:
                raise TimedOut("the WaitQueue condition did not become true in time")
            try:
                futex_wait(seq, observed, wait_for)
            except (WouldBlock, TimedOut):
                pass  # changed meanwhile, or time is up: re-check either way

    def wake(self, count: int) -> int:
        """Bump the counter and wake up to ``count`` sleepers; how many woke."""
        # Contract: call after making the predicate true. PermissionDenied on
        # a read-only mapping. Returns the kernel's real count.
        seq = self._writable_seq()
        fetch_add_u32(seq, 1)
        return futex_wake(seq, count)

    def wake_one(self) -> int:
        """Wake one sleeper (after making its predicate true); 0 or 1."""
        return self.wake(1)

    def wake_all(self) -> int:
        """Wake every sleeper; how many woke."""
        return self.wake(WAKE_ALL)

    def _state(self) -> str:
        return f" seq={self.sequence}"
