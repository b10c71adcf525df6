"""eventfd(2): a kernel counter that is also a file descriptor.

Ports and channels use eventfds for three things:

* **credits** (``EFD_SEMAPHORE``): the count is the room left in a queue.
  ``take`` is one non-blocking ``read`` that decrements by exactly one (or
  fails with nothing taken); ``give`` is one ``write``. The fd can be polled
  (``POLLIN`` = a credit is there) and passed to other processes, so a sender
  in any process sleeps in the kernel until room frees.
* **requests** (plain counter): "please look at this" from other processes;
  reading returns and clears the whole count.
* **wake-ups** of threads of this process (plain counter, never sent).

Every eventfd here is close-on-exec and non-blocking (the flag lives in the
open file description, so it holds in every process the fd is passed to);
waiting is done with ``poll``, which also watches other fds at the same time.

The count can be read without changing it only through
``/proc/self/fdinfo`` (:func:`count`), which costs a few microseconds: it is
for rare repairs, never for the message path.
"""

from __future__ import annotations

import os

__all__ = [
    "MAX_COUNT",
    "semaphore",
    "counter",
    "take",
    "give",
    "drain",
    "count",
    "adopt",
    "is_eventfd",
]

MAX_COUNT = 0xFFFF_FFFF_FFFF_FFFE  # an eventfd counts up to 2**64 - 2
_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK


def semaphore(initial: int) -> int:
    """A new ``EFD_SEMAPHORE`` eventfd holding ``initial`` (each read takes 1)."""
    fd = os.eventfd(0, _FLAGS | os.EFD_SEMAPHORE)
    if initial:
        os.eventfd_write(fd, initial)  # eventfd()'s own argument is only 32 bits
    return fd


def counter(initial: int = 0) -> int:
    """A new plain eventfd (a read returns the whole count and clears it)."""
    fd = os.eventfd(0, _FLAGS)
    if initial:
        os.eventfd_write(fd, initial)
    return fd


def take(fd: int) -> bool:
    """Take one unit without blocking; False (nothing taken) when the count is 0."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return False
    return True


def give(fd: int, n: int = 1) -> None:
    """Add ``n`` to the count, waking whoever polls the fd."""
    os.eventfd_write(fd, n)


def drain(fd: int) -> int:
    """Read (and so clear) a plain counter; 0 if it was already 0."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def count(fd: int) -> int:
    """The current count, read without consuming it (from /proc/self/fdinfo).

    A few microseconds: for repairs and tests, not for message paths.
    """
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"eventfd-count:"):
                return int(line.split()[1], 16)  # the kernel prints it in hex
    raise ValueError(f"fd {fd} is not an eventfd")


def adopt(fd: int) -> bool:
    """Whether a received ``fd`` is an eventfd; if so, make it non-blocking.

    The credit paths read with O_NONBLOCK. The flag lives in the open file
    description, which the sender chose: a peer that handed over a blocking
    eventfd would otherwise make our first read sleep with no timeout.
    """
    if not is_eventfd(fd):
        return False
    os.set_blocking(fd, False)
    return True


def is_eventfd(fd: int) -> bool:
    """Whether ``fd`` is an eventfd (what /proc/self/fd says it links to)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False
