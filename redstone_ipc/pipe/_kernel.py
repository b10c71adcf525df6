"""The kernel object under a pipe: a connected ``AF_UNIX`` stream socketpair,
each end shut down in the direction it must never go.

Why not a Linux pipe: any holder of a pipe fd can reopen ``/proc/self/fd/N``
with another access mode (pipes and FIFOs are opened through their inode),
so a process given only the read end can write, and the other way round.
A socket cannot be opened through ``/proc`` at all (ENXIO), and a
``shutdown`` cannot be undone, so the kernel itself keeps each end one-way:

* the reader's socket is shut for writing: ``send`` and ``write`` fail with
  EPIPE, whatever the caller does with the fd;
* the writer's socket is shut for reading, and nothing can ever be queued
  for it to read (its peer cannot send): ``recv`` returns end of stream.

What the socket changes, and how this package keeps a pipe's promises:

* Capacity is the writer's ``SO_SNDBUF``: a budget in bytes of kernel
  memory, charged with each write's bookkeeping too, where a pipe counts
  payload. It is set to exactly the capacity asked (the value given to
  ``setsockopt`` is doubled by the kernel, so half of it is given), and
  recorded on the reader's socket as well, for ``reader.capacity``.
* Atomic writes: ``unix_stream_sendmsg`` queues a send in pieces of at most
  ``SO_SNDBUF / 2 - 64`` bytes, each piece whole and in one go; with a budget
  of at least :data:`ATOMIC_SNDBUF` a write of :data:`PIPE_BUF` bytes is one
  piece: it is never split, nor interleaved with other writers' bytes, in
  any process (``tests/test_pipe.py`` checks it with several writer
  processes at the smallest capacity).
* A write into a socket whose reader is gone raises SIGPIPE like a pipe, but
  ``send`` takes ``MSG_NOSIGNAL``: no signal, only EPIPE.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import stat
import struct
import termios

from ..errors import CapacityError, ProtocolError

__all__ = [
    "PIPE_BUF",
    "ATOMIC_SNDBUF",
    "DEFAULT_CAPACITY",
    "MIN_CAPACITY",
    "max_capacity",
    "granted_capacity",
    "socket_pair",
    "capacity_of",
    "adopt",
]

PIPE_BUF: int = select.PIPE_BUF  # 4096 on Linux
"""Writes of at most this many bytes are atomic, even between processes."""

# unix_stream_sendmsg: ``size = min(size, (sk_sndbuf >> 1) - 64)`` per piece.
ATOMIC_SNDBUF = 2 * (PIPE_BUF + 64)

DEFAULT_CAPACITY = 1 << 16  # what a Linux pipe holds by default
_GRANULE = 4096
MIN_CAPACITY = 3 * _GRANULE  # the first multiple of the granule >= ATOMIC_SNDBUF

_WMEM_MAX_FILE = "/proc/sys/net/core/wmem_max"
_FIONREAD = struct.Struct("i")


def max_capacity() -> int:
    """The largest capacity anyone may ask for: twice ``net.core.wmem_max``.

    Privileged processes could exceed it (``SO_SNDBUFFORCE``); they are held
    to it too, so that a program behaves the same whoever runs it.
    """
    try:
        with open(_WMEM_MAX_FILE, "rb") as f:
            wmem_max = int(f.read())
    except (OSError, ValueError):  # pragma: no cover - /proc always has it on Linux
        wmem_max = 212992
    return max(2 * wmem_max // _GRANULE * _GRANULE, MIN_CAPACITY)


def granted_capacity(capacity: int | None) -> int:
    """The capacity a pipe gets when ``capacity`` is asked: rounded up to a
    multiple of 4 KiB, at least :data:`MIN_CAPACITY`. CapacityError if it is
    not a positive int or exceeds :func:`max_capacity`."""
    if capacity is None:
        return DEFAULT_CAPACITY
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
        raise CapacityError(f"a pipe capacity must be a positive int, not {capacity!r}")
    limit = max_capacity()
    if capacity > limit:
        raise CapacityError(
            f"a pipe capacity of {capacity} bytes exceeds the system limit of {limit} "
            f"(twice {_WMEM_MAX_FILE})"
        )
    return max(-(-capacity // _GRANULE) * _GRANULE, MIN_CAPACITY)


def socket_pair(capacity: int) -> tuple[socket.socket, socket.socket]:
    """A new pipe's ``(reader, writer)`` sockets: non-blocking, close-on-exec,
    shut down one way each, with ``capacity`` (from :func:`granted_capacity`)."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for sock in (reader, writer):
            sock.setblocking(False)
            # Half: the kernel doubles it. The reader never sends: its budget
            # only records the capacity, for reader.capacity.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, capacity // 2)
        # Before either fd can leave this process, so no holder ever sees the
        # pair open both ways.
        reader.shutdown(socket.SHUT_WR)
        writer.shutdown(socket.SHUT_RD)
        granted = capacity_of(writer)
        if granted != capacity:
            raise CapacityError(
                f"the kernel granted {granted} bytes for a capacity of {capacity}: "
                f"{_WMEM_MAX_FILE} is too small"
            )
    except BaseException:
        reader.close()
        writer.close()
        raise
    return reader, writer


def capacity_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def adopt(fd: int, reading: bool) -> socket.socket:
    """A socket object owning ``fd``, once ``fd`` is checked to be a pipe's
    read end (``reading``) or write end, switched to non-blocking.

    ProtocolError otherwise, with ``fd`` left open for the caller to close.
    """
    name = "PIPE_READER" if reading else "PIPE_WRITER"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise ProtocolError(f"a {name} handle arrived with an unusable fd: {e}") from None
    if not stat.S_ISSOCK(mode):
        raise ProtocolError(f"a {name} handle arrived with an fd that is not a socket")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ProtocolError(f"a {name} handle arrived with an unusable socket: {e}") from None
    try:
        problem = _check_end(sock, reading)
        if problem is None:
            sock.setblocking(False)  # also drops any default timeout (socket.setdefaulttimeout)
            return sock
    except OSError as e:
        problem = f"an unusable socket ({e})"
    except BaseException:
        sock.detach()
        raise
    sock.detach()
    raise ProtocolError(f"a {name} handle arrived with {problem}")


def _check_end(sock: socket.socket, reading: bool) -> str | None:
    """What is wrong with ``sock`` as a pipe end; None if nothing."""
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        return f"a socket of the wrong kind ({sock.family!r}, {sock.type!r})"
    try:
        sock.getpeername()
    except OSError:
        return "a socket that is not connected"
    if reading:
        # The only way to see SEND_SHUTDOWN from user space: an empty send
        # fails with EPIPE before the kernel looks at anything else, and
        # otherwise queues nothing.
        try:
            sock.send(b"", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BrokenPipeError:
            return None
        return "a socket that is not shut down for writing: its holders could write"
    # A writer: shut down for reading (poll reports RDHUP), and, checked after
    # that, since nothing can be queued for it any more, nothing to read.
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    if not any(events & select.POLLRDHUP for _, events in poller.poll(0)):
        return "a socket that is not shut down for reading: its holders could read"
    queued = _FIONREAD.unpack(fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(_FIONREAD.size)))[0]
    if queued:
        return f"a socket that holds {queued} bytes its holders could read"
    sndbuf = capacity_of(sock)
    if sndbuf < ATOMIC_SNDBUF:
        return f"a send buffer of {sndbuf} bytes, too small for atomic {PIPE_BUF}-byte writes"
    return None
