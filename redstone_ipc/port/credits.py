"""Capacity in messages, shared by every process, surviving SIGKILL at any instant.

Credits
-------
The room left in a queue is the count of an ``EFD_SEMAPHORE`` eventfd that
starts at ``capacity``. A sender takes one credit with a non-blocking
``read`` (it either takes exactly one or fails with EAGAIN: no lock, no
race between senders of different processes), then sends the record. The
receiver gives the credit back with one ``write`` when it hands a message
to its caller. A sender that finds no credit either raises QueueFull or
sleeps in ``poll`` on the eventfd (readable = a credit is there) together
with the sending socket (POLLHUP = the receiver is gone). About 0.2 us per
syscall; no shared memory, no ctypes.

The hole, and how it is closed
------------------------------
A sender killed (SIGKILL) after taking a credit and before its ``sendmsg``
took effect holds a credit that nobody will give back: the queue would
shrink for good. Counting what *should* be there is easy for the receiver:

    lost = capacity - credits in the eventfd - messages queued

but only at an instant when no live sender is between "took a credit" and
"sent" (or gave it back): otherwise its credit looks lost too, and handing
it out again would make the queue hold capacity + 1 for good. So senders
mark that window with a **window lock**: a ``flock(LOCK_SH)`` on a memfd,
taken before reading the credit and dropped after ``sendmsg`` returned (or
the credit was given back). The kernel drops the lock of a killed process by
itself — that is the whole point of using flock. The receiver repairs under
``flock(LOCK_EX | LOCK_NB)`` on its own open file description of the same
memfd: while it holds it no sender is inside the window, so after draining
the socket into its own queue the count above is exact, and exactly the lost
credits are written back. Never more: with a raw sender that sends without a
credit, ``lost`` comes out negative and nothing is written.

Why flock and not the alternatives:

* a grace period ("if the count stays low for a while, top it up") cannot
  tell a dead sender from a live one that was descheduled, stopped
  (SIGSTOP), or held up by another thread holding the GIL inside its
  window; topping up then makes the queue too large forever;
* one token fd per credit (whose loss the kernel signals by POLLHUP) costs
  an SCM_RIGHTS round per message, several microseconds;
* the window lock costs two ``flock`` calls per send (about 0.4 us, measured
  in ``bench/bench_port.py``), nothing on the receiving side, and needs no
  timing assumption at all.

Locks are per *open file description*, so every process opens its own one
(``/proc/self/fd/N`` reopened; after ``fork`` the child reopens too, since
it would otherwise share the parent's lock), and threads of one process
share it through a depth count kept by the caller (:class:`WindowLock` is
not reentrant by itself). The receiver uses a second description for LOCK_EX,
so that its own sending threads hold it off like anyone else's.

When repairs run
----------------
Never on the message path. A sender that finds no credit writes 1 to the
port's **repair-request eventfd** (and raises QueueFull, or goes to sleep
waiting for a credit). The receiver polls that eventfd together with its
socket, so a request wakes even a receiver blocked on an empty queue, and it
repairs at its next receive. Repairs are rate-limited
(:data:`REPAIR_INTERVAL`) so a queue that is simply full (a slow receiver)
does not pay for them; if a live sender is inside its window the repair is
retried after a short back-off (:data:`RETRY_MIN`..:data:`RETRY_MAX`), never
waited for: a sender stopped inside its window (SIGSTOP) delays repairs, it
cannot wedge the receiver.

Channels use credits without the window lock: each direction has exactly
one sender, and if that process dies the channel is closed anyway.
"""

from __future__ import annotations

import fcntl
import os
import stat

from ..linux import eventfd

__all__ = ["WindowLock", "restore", "REPAIR_INTERVAL", "RETRY_MIN", "RETRY_MAX"]

REPAIR_INTERVAL = 0.010  # s: at most one repair per interval (a full queue is not a broken one)
RETRY_MIN = 0.001  # s: first retry when a sender was inside its window
RETRY_MAX = 0.100  # s: retries back off up to this


class WindowLock:
    """The lock senders hold while they own a credit they have not sent yet.

    ``fd`` is this process's own open file description of the lock memfd;
    it is also what a transfer sends (the receiving process reopens it).
    """

    __slots__ = ("fd", "_exclusive_fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._exclusive_fd = -1  # the receiver's separate description, opened on first repair

    @classmethod
    def create(cls) -> WindowLock:
        """A new lock (an empty memfd: only its inode matters)."""
        return cls(os.memfd_create("redstone-port-window", os.MFD_CLOEXEC))

    @staticmethod
    def valid(fd: int) -> bool:
        """Whether a received fd can be a window lock (a regular file: a memfd)."""
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            return False

    @classmethod
    def adopt(cls, fd: int) -> WindowLock:
        """A lock for this process from a received ``fd`` (not closed here)."""
        return cls(_reopen(fd))

    # Senders enter the window with flock(fd, LOCK_SH | LOCK_NB) and leave it
    # with LOCK_UN; Mailbox._try_send does both inline (hot path).

    # -- the receiver --------------------------------------------------------

    def try_exclusive(self) -> bool:
        """Take the lock exclusively if no sender (here or elsewhere) is in its window."""
        if self._exclusive_fd < 0:
            self._exclusive_fd = _reopen(self.fd)
        try:
            fcntl.flock(self._exclusive_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release_exclusive(self) -> None:
        fcntl.flock(self._exclusive_fd, fcntl.LOCK_UN)

    # -- lifecycle -----------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: get descriptions of our own (the inherited ones are
        the parent's: unlocking them would unlock the parent)."""
        inherited = self.fd
        self.fd = _reopen(inherited)
        os.close(inherited)
        if self._exclusive_fd >= 0:
            os.close(self._exclusive_fd)
            self._exclusive_fd = -1

    def close(self) -> None:
        os.close(self.fd)
        if self._exclusive_fd >= 0:
            os.close(self._exclusive_fd)
            self._exclusive_fd = -1


def _reopen(fd: int) -> int:
    """A new open file description of the file behind ``fd``."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def restore(credit_fd: int, capacity: int, queued: int) -> int:
    """Write back the credits that are missing; how many (never negative).

    Call only while holding the window lock exclusively, with every message
    sent so far counted in ``queued``.
    """
    lost = capacity - eventfd.count(credit_fd) - queued
    if lost <= 0:
        return 0
    eventfd.give(credit_fd, lost)
    return lost
