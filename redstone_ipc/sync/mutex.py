"""Mutex: a robust, futex-based lock in shared memory, for many processes.

The lock is one u32 word, the layout the Linux kernel understands for robust
futexes (``redstone_ipc.linux.robust``)::

    bit 31  FUTEX_WAITERS     someone sleeps (or is about to) on the word
    bit 30  FUTEX_OWNER_DIED  the kernel found the owner dead
    bit 29  NOT_ROBUST        the owner is not on a robust list (fallback)
    0..28   owner TID         0 = unlocked

* **Uncontended** acquire and release touch no system call: one
  compare-and-swap ``0 -> tid`` to take it, one exchange ``-> 0`` to give it
  back (plus a few stores in this thread's robust list).
* **Contended**: a waiter sets FUTEX_WAITERS and sleeps in ``futex_wait``
  until the word changes; the owner sees FUTEX_WAITERS when it releases and
  wakes one sleeper. Nobody spins.
* **Robust**: while it holds the lock, the owner's entry (which lives inside
  the Mutex's own shared bytes) is on its thread's kernel robust list. If the
  owner dies — SIGKILL included — the kernel sets FUTEX_OWNER_DIED and wakes a
  waiter; the next :meth:`Mutex.acquire` takes the lock over and reports it in
  :attr:`Mutex.owner_died`, because the data the lock protects may be
  half-updated and need repair. That acquisition is an ordinary one
  otherwise: releasing it makes the lock normal again.

Layout: :attr:`Mutex.SIZE` (64) bytes at an 8-aligned offset: the word at +0,
and the robust-list entry further in (where depends on the C library's
``futex_offset``; glibc: +24..+40). Never put anything else there.

``Mutex.create(mapping, offset)`` initialises the bytes (unlocked); do it
once, before other processes use them. ``Mutex(mapping, offset)`` attaches to
bytes that are already initialised (a zero-filled region is an unlocked
Mutex too). Every process that maps the region attaches its own ``Mutex``.

Rules: the thread that acquired releases (RuntimeError otherwise); the lock
is not reentrant (acquiring it twice from one thread raises RuntimeError
rather than deadlocking); do not use it from signal handlers; processes that
share it must be in the same PID namespace (the word holds TIDs).
"""

from __future__ import annotations

import ctypes
import time

from ..errors import NotMapped, TimedOut, WouldBlock
from ..futex.block import SharedPrimitive, acquire_timeout, time_left
from ..linux.atomic import cas_u32, exchange_u32, load_u32, store_u32
from ..linux.futex import futex_wait, futex_wake
from ..linux.robust import (
    ENTRY_OFFSET,
    ENTRY_ROOM,
    FUTEX_OWNER_DIED,
    FUTEX_WAITERS,
    LIVENESS_SLICE,
    NOT_ROBUST,
    OWNER_MASK,
    RobustList,
    current,
    thread_alive,
)
from ..shm.shm import Mapping

__all__ = ["Mutex"]

_monotonic = time.monotonic


class Mutex(SharedPrimitive):
    """A robust mutual-exclusion lock at ``offset`` of a shared ``mapping``.

    >>> m = shm.map()
    >>> lock = Mutex.create(m, 0)          # once, by whoever sets the region up
    >>> with lock:                         # in any process: Mutex(m, 0)
    ...     if lock.owner_died:
    ...         repair_the_shared_data()
    ...     update_the_shared_data()
    """

    SIZE = ENTRY_ROOM  # bytes it occupies (64), a multiple of ALIGN
    ALIGN = 8  # its offset must be a multiple of this
    _OWNER = "a Mutex"

    __slots__ = ("_entry", "owner_died")

    def __init__(self, mapping: Mapping, offset: int) -> None:
        """Attach to an initialised Mutex. PermissionDenied on a read-only mapping."""
        # Contract: InvalidAddress if ``mapping`` is not a Mapping or the
        # block is misaligned/outside it; NotMapped if unmapped. Pins the
        # mapping until close().
        super().__init__(mapping, offset)
        address = self._block.address
        # Where this process links the robust-list entry (0: no robust list).
        self._entry = address + ENTRY_OFFSET if ENTRY_OFFSET is not None else 0
        #: True if the latest acquisition took the lock over from a dead owner.
        self.owner_died = False

    @classmethod
    def create(cls, mapping: Mapping, offset: int) -> Mutex:
        """Initialise the bytes as an unlocked Mutex and attach to it.

        Only before other processes use it: this overwrites the lock.
        """
        self = cls(mapping, offset)
        view = self._block.view()
        view[4:] = bytes(len(view) - 4)
        store_u32(self._live(), 0)
        return self

    # -- locking -----------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; True once held, False if it could not be had in time.

        The signature and the result of ``threading.Lock.acquire``:
        ``blocking=False`` only tries (a bool: ``acquire(5)`` is a TypeError,
        not five seconds); otherwise ``timeout`` is in seconds,
        None (the default) waits for ever, and 0 or less only tries. When the
        time runs out it returns False rather than raising TimedOut, as the
        standard library does.
        """
        # Contract: True => this thread owns it and ``owner_died`` says
        # whether the previous owner died holding it. False => not acquired,
        # nothing changed (only after a finite timeout, or not blocking).
        # ValueError for blocking=False with a timeout (as threading does);
        # TypeError for a blocking that is not a bool: acquire(5) means
        # acquire(timeout=5) in older code, and would now block for ever.
        # RuntimeError if this thread already holds it. Sleeps in the kernel
        # while contended. NotMapped after close(). A signal handler's
        # exception propagates (the lock is then not held).
        if blocking is not True:
            timeout = acquire_timeout(blocking, timeout)  # ValueError, TypeError
        word = self._word
        if word is None:
            raise NotMapped("the Mutex was closed")
        rl = current()
        if rl.enabled:
            entry = self._entry
            rl.begin(entry)  # list_op_pending: covers death between CAS and link
            ok, old = cas_u32(word, 0, rl.tid)
            if ok:
                rl.link(entry)
                rl.end()
                self.owner_died = False
                return True
        else:
            ok, old = cas_u32(word, 0, rl.tid | NOT_ROBUST)
            if ok:
                self.owner_died = False
                return True
        return self._acquire_contended(word, old, timeout, rl)

    def _acquire_contended(
        self, word: ctypes.c_void_p, old: int, timeout: float | None, rl: RobustList
    ) -> bool:
        tid = rl.tid
        me = tid if rl.enabled else tid | NOT_ROBUST
        deadline = None if timeout is None else _monotonic() + timeout
        died = False
        try:
            while True:
                if old & OWNER_MASK == 0:
                    # Free, or its owner died (the kernel cleared the TID and
                    # set OWNER_DIED). We came through contention, so others
                    # may sleep: keep FUTEX_WAITERS so our release wakes them.
                    ok, seen = cas_u32(word, old, me | FUTEX_WAITERS)
                    if ok:
                        died = bool(old & FUTEX_OWNER_DIED)
                        break
                    old = seen
                    continue
                owner = old & OWNER_MASK
                if owner == tid:
                    raise RuntimeError("Mutex is not reentrant: this thread already holds it")
                wait_for = time_left(deadline)
                if wait_for is not None and wait_for <= 0:
                    return False
                if not old & FUTEX_WAITERS:
                    # Tell the owner to wake us; only then is sleeping safe.
                    ok, seen = cas_u32(word, old, old | FUTEX_WAITERS)
                    if not ok:
                        old = seen
                        continue
                    old |= FUTEX_WAITERS
                polling = bool(old & NOT_ROBUST)
                if polling and (wait_for is None or wait_for > LIVENESS_SLICE):
                    # The owner is on no robust list: the kernel will not tell
                    # us if it dies, so look at it now and then.
                    wait_for = LIVENESS_SLICE
                try:
                    futex_wait(word, old, wait_for)
                except WouldBlock:
                    pass
                except TimedOut:
                    if polling and not thread_alive(owner):
                        ok, seen = cas_u32(word, old, me | FUTEX_WAITERS)
                        if ok:
                            died = True
                            break
                        old = seen
                        continue
                old = load_u32(word)
            if rl.enabled:
                rl.link(self._entry)
        finally:
            if rl.enabled:
                rl.end()
        self.owner_died = died
        return True

    def release(self) -> None:
        """Give the lock back, waking one waiter if any sleeps."""
        # Contract: RuntimeError unless this thread holds it. The entry leaves
        # the robust list *before* the word is released (otherwise the next
        # owner could relink it while it is still on our list).
        word = self._word
        if word is None:
            raise NotMapped("the Mutex was closed")
        rl = current()
        value = load_u32(word)
        if value & OWNER_MASK != rl.tid or value & FUTEX_OWNER_DIED:
            raise RuntimeError("release of a Mutex that this thread does not hold")
        if not value & NOT_ROBUST:
            entry = self._entry
            rl.begin(entry)  # a death from here on is cleaned up by the kernel
            rl.unlink(entry)
            if exchange_u32(word, 0) & FUTEX_WAITERS:
                futex_wake(word, 1)
            rl.end()
        elif exchange_u32(word, 0) & FUTEX_WAITERS:
            futex_wake(word, 1)

    def locked(self) -> bool:
        """Whether some thread (in any process) holds it right now."""
        return load_u32(self._live()) & OWNER_MASK != 0

    def owned(self) -> bool:
        """Whether the calling thread holds it."""
        value = load_u32(self._live())
        return value & OWNER_MASK == current().tid and not value & FUTEX_OWNER_DIED

    def __enter__(self) -> Mutex:
        """``with lock:`` holds the lock for the block (waiting for ever), as
        with ``threading.Lock``. It does not close the Mutex: ``close()`` does,
        or ``with contextlib.closing(Mutex(m, 0)) as lock:``."""
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Detach: unpin the mapping. RuntimeError if this thread holds it."""
        if self._word is not None and self.owned():
            raise RuntimeError("close() of a Mutex this thread holds: release it first")
        super().close()

    def _state(self) -> str:
        owner = load_u32(self._live()) & OWNER_MASK
        return f" held by tid {owner}" if owner else " unlocked"
