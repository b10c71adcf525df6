"""One record over an AF_UNIX SOCK_SEQPACKET socket, with fds and credentials.

``socket.recv_fds`` ignores its flags, so received fds would not be
close-on-exec; this module calls ``recvmsg`` with ``MSG_CMSG_CLOEXEC`` and
parses the ancillary data itself. A short ancillary buffer makes the kernel
close the extra fds and set ``MSG_CTRUNC``: callers must treat that as an
error (``Record.ctrunc``).
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct
import threading

__all__ = [
    "MAX_FDS",
    "ANCBUF_SIZE",
    "Record",
    "recv_raw",
    "detach",
    "COPY_LIMIT",
    "make_record",
    "send_record",
    "close_fds",
    "seqpacket_pair",
    "peer_hung_up",
]

MAX_FDS = 253  # SCM_MAX_FD: the kernel's limit of fds in one message
CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
ANCBUF_SIZE = socket.CMSG_SPACE(4 * MAX_FDS) + socket.CMSG_SPACE(CRED.size)
# Plain ints: the socket module's flag enums cost microseconds per operation.
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
SCM_CREDENTIALS = int(socket.SCM_CREDENTIALS)
TRUNCATED = _MSG_TRUNC | _MSG_CTRUNC  # msg_flags that mean data or fds were lost
_MSG_PEEK = int(socket.MSG_PEEK)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)


class Record:
    """What one recvmsg returned. ``fds`` are owned by whoever holds this."""

    __slots__ = ("data", "fds", "creds", "truncated", "ctrunc")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.fds: list[int] = []
        self.creds: tuple[int, int, int] | None = None
        self.truncated = False  # MSG_TRUNC: the record was longer than the buffer
        self.ctrunc = False  # MSG_CTRUNC: fds were lost (the kernel closed them)


# Records up to this size are copied out of the reusable receive buffer; a
# larger one keeps the buffer (no copy) and the next receive makes a new one.
COPY_LIMIT = 16 * 1024
_buffers = threading.local()  # one receive buffer per thread: no lock needed


def recv_raw(
    sock: socket.socket, bufsize: int, flags: int = 0
) -> tuple[memoryview, int, list, int]:
    """One ``recvmsg_into`` into this thread's reusable receive buffer.

    Returns (buffer, nbytes, ancdata, msg_flags). The buffer is reused by the
    next call in this thread: keep bytes with :func:`detach`. Allocating
    ``bufsize`` bytes per call, as ``recvmsg`` does, costs more than the
    syscall itself.
    """
    slot = getattr(_buffers, "slot", None)
    if slot is None or slot[0] != bufsize:
        buf = getattr(_buffers, "buf", None)
        if buf is None or len(buf) < bufsize:
            buf = _buffers.buf = memoryview(bytearray(bufsize))
        slot = _buffers.slot = (bufsize, (buf[:bufsize],), buf)
    nbytes, ancdata, msg_flags, _ = sock.recvmsg_into(slot[1], ANCBUF_SIZE, flags | _RECV_FLAGS)
    return slot[2], nbytes, ancdata, msg_flags


def detach(buf: memoryview, start: int, stop: int) -> bytes | memoryview:
    """Bytes ``[start:stop)`` of the receive buffer, safe to keep.

    Small ranges are copied; a large one takes the buffer itself (no copy)
    and the thread's next receive allocates a new one.
    """
    if stop - start <= COPY_LIMIT:
        return buf[start:stop].tobytes()
    _buffers.buf = _buffers.slot = None
    return buf[start:stop]


def make_record(buf: memoryview, nbytes: int, ancdata: list, msg_flags: int) -> Record:
    """A Record (owning its fds) from what :func:`recv_raw` returned."""
    record = Record(detach(buf, 0, nbytes))
    for level, kind, payload in ancdata:
        if level != _SOL_SOCKET:
            continue
        if kind == _SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            record.fds.extend(fds)
        elif kind == SCM_CREDENTIALS and len(payload) >= CRED.size:
            record.creds = CRED.unpack_from(payload)
    if msg_flags & TRUNCATED:  # (the kernel also echoes MSG_CMSG_CLOEXEC here)
        record.truncated = bool(msg_flags & _MSG_TRUNC)
        record.ctrunc = bool(msg_flags & _MSG_CTRUNC)
    return record


def send_record(
    sock: socket.socket, buffers: list, fds: list[int], flags: int = 0
) -> int:
    """Send ``buffers`` as one record (gathered: no concatenation) with ``fds``."""
    if fds:
        anc = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds))]
        return sock.sendmsg(buffers, anc, flags)
    return sock.sendmsg(buffers, (), flags)


def close_fds(fds: list[int]) -> None:
    """Close every fd, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected, close-on-exec SOCK_SEQPACKET pair that reports credentials."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return a, b


def peer_hung_up(sock: socket.socket) -> bool:
    """After a zero-length read: True if it was end of stream (the peer gone).

    recvmsg reports an empty record and end of stream alike. It was a record
    if the peer is still there, or if more records are queued behind it
    (POLLHUP is raised as soon as the peer goes, queued records or not).
    """
    try:
        following = sock.recv(1, _MSG_PEEK | _MSG_DONTWAIT)
    except BlockingIOError:
        return False  # nothing queued and the peer still there
    except OSError:
        return True  # ECONNRESET and the like: the peer is gone
    if following:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    events = poller.poll(0)
    return bool(events and events[0][1] & (select.POLLHUP | select.POLLRDHUP))
