"""The raw ``futex(2)`` system call: sleep on a 32-bit word, wake its sleepers.

``futex_wait(addr, expected)`` asks the kernel: *if the word at addr still
holds expected, put me to sleep until someone wakes this word*. The kernel
does the comparison and the enqueueing atomically with respect to
``futex_wake``, so a waker that changes the word and then wakes can never
slip in between a waiter's check and its sleep: no lost wake-ups. That is the
whole trick, and why user space can keep its fast paths free of syscalls.

Facts this module relies on (see design.md):

* The operations are ``FUTEX_WAIT`` (0) and ``FUTEX_WAKE`` (1) **without**
  ``FUTEX_PRIVATE_FLAG``. A private futex is keyed by (mm, virtual address)
  and only works inside one process; a shared one is keyed by the backing
  page (memfd inode + offset), so it works between processes that map the
  same memory, even at different addresses.
* ``FUTEX_WAIT`` takes a *relative* timeout (measured on CLOCK_MONOTONIC).
* A signal interrupts the sleep with ``EINTR`` even when the handler was
  installed with ``SA_RESTART``. Python's own handlers only run when the
  interpreter regains control, so after ``EINTR`` we run them explicitly
  (``PyErr_CheckSignals``): a handler that raises (``KeyboardInterrupt``)
  propagates out of the wait; otherwise the wait resumes with the time that
  is left, not with the full timeout again.
* ``FUTEX_WAKE`` returns how many sleepers it really woke.
* A return of 0 from ``FUTEX_WAIT`` may be spurious: callers always re-check
  their condition in a loop.

Like the rest of ``redstone_ipc.linux``, this checks nothing about the
address beyond what the kernel reports (``EINVAL`` misaligned, ``EFAULT``
unmapped, both turned into :class:`InvalidAddress`). Checked entry points
are ``redstone_ipc.futex.Futex`` and the primitives in ``redstone_ipc.sync``.

Known window: a signal that arrives after the last check in Python but
before the thread enters the kernel sleep is not seen until the sleep ends
(Python's own blocking calls share it). Use a timeout if that matters.
"""

from __future__ import annotations

import ctypes
import errno
import math
import time

from ..errors import InvalidAddress, TimedOut, WouldBlock
from .libc import SYS, libc

__all__ = ["FUTEX_WAIT", "FUTEX_WAKE", "WAKE_ALL", "futex_wait", "futex_wake"]

FUTEX_WAIT = 0
FUTEX_WAKE = 1
WAKE_ALL = 0x7FFFFFFF  # INT_MAX: "every sleeper" for futex_wake

_NR_FUTEX = SYS["futex"]
_MASK = 0xFFFFFFFF
_MAX_SLEEP = 1e9  # seconds per FUTEX_WAIT (~31 years); longer waits loop

# A private function object, not the shared ``libc.syscall``: no argtypes, so
# the prebuilt c_void_p and small ints pass straight through (each argtypes
# conversion costs ~60 ns per argument on a path that is microseconds long).
# syscall(2) reads every argument as a long; the kernel truncates ``op`` and
# ``val`` to their declared int/u32, so passing C ints is fine.
_syscall = libc["syscall"]
_syscall.restype = ctypes.c_long

_c_void_p = ctypes.c_void_p
_get_errno = ctypes.get_errno
_monotonic = time.monotonic
_byref = ctypes.byref

# Runs pending Python signal handlers now; through PyDLL, so an exception a
# handler raised is re-raised here.
_check_signals = ctypes.pythonapi.PyErr_CheckSignals
_check_signals.argtypes = ()
_check_signals.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _error(err: int, addr: ctypes.c_void_p | int) -> Exception:
    where = addr if isinstance(addr, int) else (addr.value or 0)
    if err == errno.EAGAIN:
        return WouldBlock("the futex word did not hold the expected value")
    if err == errno.ETIMEDOUT:
        return TimedOut("futex wait timed out")
    if err == errno.EINVAL:
        return InvalidAddress(f"futex address {where:#x} is misaligned or invalid")
    if err == errno.EFAULT:
        return InvalidAddress(f"futex address {where:#x} is not mapped")
    return OSError(err, f"futex: {errno.errorcode.get(err, err)}")


def futex_wait(addr: ctypes.c_void_p | int, expected: int, timeout: float | None = None) -> None:
    """Sleep while the u32 at ``addr`` equals ``expected``, until woken.

    Contract: returns after a wake-up (possibly spurious: re-check your
    condition); raises WouldBlock at once if the word != ``expected``,
    TimedOut after ``timeout`` seconds (None: no limit; <= 0: just check),
    InvalidAddress on EINVAL/EFAULT. A signal runs its Python handler; if the
    handler raises, that exception propagates, else the wait goes on with the
    time that remains.
    """
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    expected &= _MASK
    if timeout is None or timeout == math.inf:
        # The hot path: one ctypes call, nothing allocated.
        while _syscall(_NR_FUTEX, addr, FUTEX_WAIT, expected, None) != 0:
            err = _get_errno()
            if err != errno.EINTR:
                raise _error(err, addr)
            _check_signals()
        return
    if timeout != timeout:  # NaN
        raise ValueError("timeout must be a number of seconds or None")
    deadline = _monotonic() + timeout
    ts = _Timespec()
    remaining = timeout
    while True:
        if remaining > 0:
            if remaining > _MAX_SLEEP:
                remaining = _MAX_SLEEP  # keep tv_sec far from overflow; loop for the rest
            sec = int(remaining)
            ts.tv_sec = sec
            ts.tv_nsec = int((remaining - sec) * 1e9)
        else:
            # A zero timeout still lets the kernel compare the word:
            # EAGAIN if it differs, ETIMEDOUT if it matches.
            ts.tv_sec = ts.tv_nsec = 0
        if _syscall(_NR_FUTEX, addr, FUTEX_WAIT, expected, _byref(ts)) == 0:
            return
        err = _get_errno()
        if err == errno.EINTR:
            _check_signals()
        elif err != errno.ETIMEDOUT:
            raise _error(err, addr)
        remaining = deadline - _monotonic()
        if err == errno.ETIMEDOUT and remaining <= 0:
            raise TimedOut("futex wait timed out")


def futex_wake(addr: ctypes.c_void_p | int, count: int = 1) -> int:
    """Wake up to ``count`` sleepers of the word at ``addr``; return how many woke.

    Contract: the result is the kernel's real count (0 when nobody slept);
    ``count`` <= 0 wakes nobody and makes no syscall (the kernel would wake
    one for 0); counts above INT_MAX mean "all"; InvalidAddress on
    EINVAL/EFAULT.
    """
    if count <= 0:
        return 0
    if count > WAKE_ALL:
        count = WAKE_ALL
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    woken = _syscall(_NR_FUTEX, addr, FUTEX_WAKE, count)
    if woken < 0:
        raise _error(_get_errno(), addr)
    return woken
