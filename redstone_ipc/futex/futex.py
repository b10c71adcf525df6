"""Futex: sleep on a 32-bit word in shared memory; wake its sleepers.

The seed (``ipc/futex/futex.rs``) sketches a futex table in the kernel. Its
``wait`` reads the word *outside* the table lock and then sleeps *holding*
the lock: a waker that changes the word between the read and the enqueue is
missed (a lost wake-up), and while one thread sleeps nobody else can wait or
wake at all. Its ``wake`` returns ``count`` whether or not anyone was there
to wake. Linux's ``futex(2)`` does what the seed meant: the compare and the
enqueue happen atomically under the kernel's hash-bucket lock, the lock is
never held while sleeping, and ``FUTEX_WAKE`` returns the number of threads
it really woke. So :class:`Futex` is a thin, checked front end to the real
system call (``redstone_ipc.linux.futex``), on words of a
:class:`~redstone_ipc.shm.shm.Mapping`.

How to use it: keep a condition in shared memory, summarised by a 32-bit
word. A waiter reads the word, checks the condition, and if it must wait
calls ``Futex.wait(m, off, value_it_read)``; the kernel puts it to sleep only
if the word still holds that value. A waker first changes the word, then
calls ``Futex.wake(m, off, n)``. Whatever the interleaving, the waiter either
sees the new value (WouldBlock, or its own check) or is asleep in time to be
woken. Wake-ups may be spurious: always re-check in a loop.

The futex is keyed by the shared page (memfd inode + offset), not by the
virtual address, so processes that map the region at different addresses
still meet on the same word.
"""

from __future__ import annotations

import ctypes
from errno import EAGAIN, EINTR

from ..linux.futex import (
    _NR_FUTEX,
    FUTEX_WAIT,
    FUTEX_WAKE,
    WAKE_ALL,
    _check_signals,
    _error,
    _syscall,
    futex_wait,
)
from ..errors import InvalidAddress, NotMapped, WouldBlock
from ..shm.shm import Mapping
from .block import SharedBlock, check_mapping

__all__ = ["Futex", "FutexWord", "WAKE_ALL"]

_c_void_p = ctypes.c_void_p
_get_errno = ctypes.get_errno


def _checked_address(mapping: Mapping, offset: int) -> ctypes.c_void_p:
    """The word's address as a c_void_p, checked once per (mapping, offset).

    The cache lives on the mapping, which empties it when it closes: a
    cached address is never used stale, and the hot path needs no class or
    ``closed`` check (a foreign object has no cache and lands here).
    """
    check_mapping(mapping)
    addr = _c_void_p(mapping.word_address(offset))  # NotMapped, InvalidAddress
    mapping.futex_addresses[offset] = addr
    if mapping.closed:  # closed by another thread meanwhile: its clear() may have run first
        mapping.futex_addresses.pop(offset, None)
        raise NotMapped("the mapping was unmapped")
    return addr


class Futex:
    """Wait and wake on u32 words of a Mapping. Only static methods.

    Neither operation writes the word, so both work on read-only mappings.
    """

    __slots__ = ()

    @staticmethod
    def wait(mapping: Mapping, offset: int, expected: int, timeout: float | None = None) -> None:
        """Sleep while the u32 at ``offset`` of ``mapping`` holds ``expected``.

        Returns after a wake-up (which may be spurious: re-check); raises
        WouldBlock at once if the word does not hold ``expected``.
        ``timeout`` is in seconds, None (the default) waits for ever, 0 or
        less only checks; when it runs out the wait raises TimedOut (a
        ``TimeoutError``).
        """
        # Contract:
        # - WouldBlock at once if the word != expected (the kernel compares
        #   and enqueues atomically with respect to wake: nothing is lost);
        # - TimedOut when ``timeout`` elapses;
        # - InvalidAddress if ``mapping`` is not a Mapping, or ``offset`` is
        #   misaligned or outside it; NotMapped if it was unmapped;
        # - ValueError if ``expected`` is not a u32;
        # - a signal runs its Python handler; an exception from the handler
        #   (KeyboardInterrupt...) propagates, else the wait resumes with the
        #   time that is left;
        # - the mapping cannot be unmapped while this waits (pinned).
        try:
            addr = mapping.futex_addresses[offset]  # emptied when the mapping closes
        except (AttributeError, KeyError, TypeError):
            addr = _checked_address(mapping, offset)  # checks, or raises the right error
        if not 0 <= expected <= 0xFFFFFFFF:
            raise ValueError(f"expected must be a u32, not {expected!r}")
        sleepers = mapping.futex_sleepers  # close() refuses while we sleep, naming the offset
        sleepers.append(offset)  # (list append/remove: atomic, cheaper than a memoryview)
        try:
            if not mapping._closing:  # (close() adds itself there, then looks at sleepers)
                if timeout is None:
                    # The common case, inlined: one syscall, no extra frames.
                    if _syscall(_NR_FUTEX, addr, FUTEX_WAIT, expected, None) != 0:
                        err = _get_errno()
                        if err != EINTR:
                            raise _error(err, addr)
                        _check_signals()  # run handlers; their exceptions propagate
                        futex_wait(addr, expected, None)  # then the general loop
                else:
                    futex_wait(addr, expected, timeout)
                return
        except InvalidAddress:
            _raise_if_closed(mapping)
            raise
        finally:
            sleepers.remove(offset)
        # A close() was under way: NotMapped if it unmapped; if it failed, wait.
        mapping._closed_meanwhile()
        Futex.wait(mapping, offset, expected, timeout)

    @staticmethod
    def wake(mapping: Mapping, offset: int, count: int = 1) -> int:
        """Wake up to ``count`` waiters of the word; return how many were woken.

        ``WAKE_ALL`` (or any count >= it) wakes every waiter.
        """
        # Contract: returns the kernel's real count (0 if nobody waited);
        # count == 0 wakes nobody; ValueError if count < 0; InvalidAddress /
        # NotMapped as for wait. Does not write the word: change it first.
        try:
            addr = mapping.futex_addresses[offset]
        except (AttributeError, KeyError, TypeError):
            addr = _checked_address(mapping, offset)
        # As little as possible before the syscall: the other side waits for
        # it, and across CPUs even small costs here show in the round trip.
        if 0 < count < 0x7FFFFFFF:  # (WAKE_ALL)
            woken = _syscall(_NR_FUTEX, addr, 1, count)  # 1: FUTEX_WAKE
            if woken >= 0:
                return woken
            error = _error(_get_errno(), addr)
            _raise_if_closed(mapping)
            raise error
        try:
            return _wake_unusual(addr, count)
        except InvalidAddress:
            _raise_if_closed(mapping)
            raise

    @staticmethod
    def word(mapping: Mapping, offset: int) -> FutexWord:
        """A :class:`FutexWord` bound to the u32 at ``offset``: checked once, pinned."""
        return FutexWord(mapping, offset)


def _raise_if_closed(mapping: Mapping) -> None:
    """After EFAULT: NotMapped if another thread closed the mapping meanwhile
    (an address checked a moment ago), rather than InvalidAddress."""
    if mapping.closed:
        raise NotMapped("the mapping was unmapped") from None


def _wake_unusual(addr: ctypes.c_void_p, count: int) -> int:
    """``wake`` for counts off the fast path: 0, negative, WAKE_ALL and above."""
    if count == 0:
        return 0  # the kernel would wake one for 0
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    woken = _syscall(_NR_FUTEX, addr, FUTEX_WAKE, WAKE_ALL)
    if woken < 0:
        raise _error(_get_errno(), addr)
    return woken


class FutexWord:
    """One futex word, checked and pinned once: the fast form of :class:`Futex`.

    ``Futex.wait(m, off, v)`` validates the mapping and the offset and pins
    the mapping on every call; that is a few hundred nanoseconds, which
    matters in a loop that hands a word back and forth. A FutexWord does it
    once, when built, and keeps the mapping pinned until :meth:`close`, so
    its :meth:`wait` and :meth:`wake` are one syscall plus a couple of checks.
    Same contracts as :meth:`Futex.wait` and :meth:`Futex.wake`; NotMapped
    after close.
    """

    __slots__ = ("_block", "_addr", "_value", "__weakref__")

    def __init__(self, mapping: Mapping, offset: int) -> None:
        self._block = SharedBlock(mapping, offset, 4, writable=False, owner="a FutexWord")
        self._addr: ctypes.c_void_p | None = _c_void_p(self._block.address)
        self._value = self._block.view().cast("I")  # the word, read without ctypes

    @property
    def address(self) -> int:
        """The word's address in this process."""
        return self._block.address

    def wait(self, expected: int, timeout: float | None = None) -> bool:
        """Sleep while the word holds ``expected``; False if it did not.

        The one contract that differs from :meth:`Futex.wait`: a word that
        no longer holds ``expected`` returns False instead of raising
        WouldBlock. In a hand-off loop the other side often changes the word
        first, and an exception there costs more than the syscall. True
        means the thread slept and was woken (possibly spuriously: re-check).
        ``timeout`` as for :meth:`Futex.wait`: seconds, None (the default)
        for ever; when it runs out, TimedOut (a ``TimeoutError``).
        """
        # After close, _addr is None: the kernel sees NULL and says EFAULT,
        # turned into NotMapped below. No check on the way in.
        if timeout is None and 0 <= expected <= 0xFFFFFFFF:
            if _syscall(_NR_FUTEX, self._addr, 0, expected, None) == 0:  # 0: FUTEX_WAIT
                return True
            # Nearly every failure is EAGAIN: the other side moved the word
            # first. The word itself says so, for less than ctypes.get_errno()
            # (bench/bench_futex.py: across CPUs, costs this small still
            # show up in the round trip).
            try:
                if self._value[0] != expected:
                    return False  # (after an EINTR too: handlers run on return)
            except ValueError:  # released: closed (now, or by another thread meanwhile)
                raise NotMapped("the futex word was closed") from None
            err = _get_errno()
            if err == EAGAIN:
                return False
            if err != EINTR:
                raise self._error(err)
            _check_signals()  # run handlers; their exceptions propagate
        addr = self._addr
        if addr is None:
            raise NotMapped("the futex word was closed")
        if not 0 <= expected <= 0xFFFFFFFF:
            raise ValueError(f"expected must be a u32, not {expected!r}")
        try:
            futex_wait(addr, expected, timeout)
        except WouldBlock:
            return False
        return True

    def wake(self, count: int = 1) -> int:
        """Wake up to ``count`` waiters; the number woken (see :meth:`Futex.wake`)."""
        if 0 < count < 0x7FFFFFFF:  # (WAKE_ALL)
            woken = _syscall(_NR_FUTEX, self._addr, 1, count)  # 1: FUTEX_WAKE
            if woken >= 0:
                return woken
            raise self._error(_get_errno())
        if self._addr is None:
            raise NotMapped("the futex word was closed")
        return _wake_unusual(self._addr, count)

    def _error(self, err: int) -> Exception:
        if self._addr is None:
            return NotMapped("the futex word was closed")
        return _error(err, self._addr)

    @property
    def closed(self) -> bool:
        return self._addr is None

    def close(self) -> None:
        """Unpin the mapping; the word is unusable afterwards. Idempotent."""
        self._addr = None
        self._value.release()
        self._block.close()

    def __enter__(self) -> FutexWord:
        """``with Futex.word(m, 0) as word:``: closed on exit (NotMapped if it
        already is)."""
        if self._addr is None:
            raise NotMapped("the futex word was closed")
        return self

    def __repr__(self) -> str:
        if self._addr is None:
            return "<FutexWord closed>"
        return f"<FutexWord at {self._block.address:#x}>"

    def __exit__(self, *exc_info: object) -> None:
        self.close()
