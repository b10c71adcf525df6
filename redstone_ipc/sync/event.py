"""Event: a flag in shared memory that processes can wait for.

The same contract as :class:`threading.Event`, across processes: ``set()``
raises the flag and wakes every waiter, ``clear()`` lowers it, ``wait()``
sleeps (in the kernel) until the flag is up.

One u32 word::

    bit 0      SET       the flag
    bit 1      WAITERS   someone sleeps, or is about to: set() must wake
    bits 2..31 generation, bumped by every set() that raises the flag

``set()`` makes a system call only when the WAITERS bit says someone may be
asleep, so setting an event nobody waits for costs one atomic operation.
The generation lets a waiter notice a ``set()`` that was undone by a
``clear()`` before it got to run: like ``threading.Event.wait``, it then
still returns True, instead of missing the pulse and sleeping on.

``Event.create(mapping, offset, set=False)`` initialises; ``Event(mapping,
offset)`` attaches (zero-filled memory is a cleared Event). It needs a
writable mapping, waiters included (they publish the WAITERS bit):
PermissionDenied otherwise.
"""

from __future__ import annotations

import time

from ..errors import TimedOut, WouldBlock
from ..futex.block import SharedPrimitive, time_left
from ..linux.atomic import cas_u32, fetch_and_u32, load_u32, store_u32
from ..linux.futex import WAKE_ALL, futex_wait, futex_wake
from ..shm.shm import Mapping

__all__ = ["Event"]

_SET = 1
_WAITERS = 2
_GEN = 4  # one generation step
_MASK = 0xFFFFFFFF


class Event(SharedPrimitive):
    """A set/clear flag at ``offset`` of a shared ``mapping``.

    >>> with Event.create(m, 128) as ready:   # in another process: Event(m, 128)
    ...     ready.set()
    ...     ready.wait(timeout=5)
    True

    ``Event(mapping, offset)`` attaches to an initialised Event (contract:
    InvalidAddress if not a Mapping / misaligned / outside, NotMapped,
    PermissionDenied if read-only; pins the mapping until ``close()``).
    ``with`` closes it on exit: a flag has nothing to hold for a block.
    """

    SIZE = 8  # bytes it occupies (the word + 4 reserved), a multiple of ALIGN
    ALIGN = 4
    _OWNER = "an Event"

    __slots__ = ()

    @classmethod
    def create(cls, mapping: Mapping, offset: int, set: bool = False) -> Event:  # noqa: A002
        """Initialise the bytes (cleared, or set) and attach. Before sharing it."""
        self = cls(mapping, offset)
        store_u32(self._live(), _SET if set else 0)
        store_u32(self._block.address + 4, 0)
        return self

    def is_set(self) -> bool:
        """Whether the flag is up."""
        return bool(load_u32(self._live()) & _SET)

    def set(self) -> None:
        """Raise the flag; wake every waiter (no syscall if nobody waits)."""
        # Contract: afterwards is_set() until someone clear()s; every wait()
        # in progress returns True.
        word = self._live()
        old = load_u32(word)
        while True:
            if old & _SET:
                return  # already up: waiters (if any) were woken by that set()
            new = ((old & ~_WAITERS) + _GEN) & _MASK | _SET
            ok, old = cas_u32(word, old, new)
            if ok:
                break
        if old & _WAITERS:
            futex_wake(word, WAKE_ALL)

    def clear(self) -> None:
        """Lower the flag."""
        fetch_and_u32(self._live(), ~_SET)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until the flag is up; True, or False if ``timeout`` ran out.

        As ``threading.Event.wait``: ``timeout`` is in seconds, None (the
        default) waits for ever, 0 or less only looks; when the time runs out
        it returns False rather than raising TimedOut.
        """
        # Contract: True as soon as the flag is seen up, or a set() happened
        # while waiting (even if clear()ed since); False only after a
        # finite timeout. A signal handler's exception propagates.
        word = self._live()
        value = load_u32(word)
        if value & _SET:
            return True
        generation = value >> 2
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if value & _SET or value >> 2 != generation:
                return True
            wait_for = time_left(deadline)
            if wait_for is not None and wait_for <= 0:
                return False
            if not value & _WAITERS:
                ok, value = cas_u32(word, value, value | _WAITERS)
                if not ok:
                    continue
                value |= _WAITERS
            try:
                futex_wait(word, value, wait_for)
            except (WouldBlock, TimedOut):
                pass
            value = load_u32(word)

    def _state(self) -> str:
        return " set" if self.is_set() else " clear"
