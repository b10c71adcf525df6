"""The blocking read and write paths: one system call, and ``poll`` when it would block.

Waiting is ``poll(2)`` (``_PipeEndObject._wait``): the thread sleeps in the
kernel, it never spins, and closing the handle wakes it. Every call keeps
the end entered while it runs, so the fd cannot be closed under it.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING, Callable, TypeVar, Union

from ..errors import PeerClosed, TimedOut
from ._deadline import deadline as _deadline
from ._kernel import max_capacity

if TYPE_CHECKING:
    from ._end import _PipeEndObject, _PipeWriterObject

__all__ = [
    "Buffer",
    "READ_CAP",
    "byte_view",
    "peer_closed",
    "read",
    "readinto",
    "recv",
    "send_some",
    "write",
]

Buffer = Union[bytes, bytearray, memoryview]
_A = TypeVar("_A")
_R = TypeVar("_R")

# A read returns at most what the pipe holds, about its capacity at most:
# capping ``n`` keeps read(1 << 30) from allocating 1 GiB.
READ_CAP = max(max_capacity(), 1 << 16)

_NOSIGNAL = socket.MSG_NOSIGNAL


def recv(sock: socket.socket, n: int) -> bytes:
    """One ``recv``; BlockingIOError if nothing is there yet, ``b''`` at end of stream."""
    try:
        return sock.recv(n)
    except ConnectionResetError:
        # Reported once if the writer's socket was released with bytes queued
        # for *it*: received writers are checked to hold none, so only a
        # hand-made pair gets here. It is the end of the stream all the same.
        return b""


def _recv_into(sock: socket.socket, buffer: Buffer) -> int:
    try:
        return sock.recv_into(buffer)  # a read-only buffer: TypeError
    except ConnectionResetError:
        return 0


def read(obj: _PipeEndObject, n: int, timeout: float | None) -> bytes:
    if n < 0:
        raise ValueError(f"cannot read {n} bytes")
    return _read_waiting(obj, recv, min(n, READ_CAP), timeout)


def readinto(obj: _PipeEndObject, buffer: Buffer, timeout: float | None) -> int:
    return _read_waiting(obj, _recv_into, buffer, timeout)


def _read_waiting(
    obj: _PipeEndObject, read: Callable[[socket.socket, _A], _R], arg: _A, timeout: float | None
) -> _R:
    """``read(sock, arg)`` once the pipe has a byte (or its end of stream) for it.

    TimedOut if nothing arrived within ``timeout``.
    """
    deadline = _deadline(timeout)
    fd = obj._enter()
    try:
        while True:
            try:
                return read(obj.sock, arg)
            except BlockingIOError:
                pass
            if not obj._wait([(fd, select.POLLIN)], deadline):
                raise TimedOut(f"no bytes arrived within {timeout}s")
    finally:
        obj._leave()


def write(obj: _PipeWriterObject, data: Buffer, timeout: float | None) -> int:
    """All of ``data`` unless the deadline passes: then the count written, or
    TimedOut if none. The turn keeps it contiguous with this process's writes."""
    view = byte_view(data)
    total = view.nbytes
    deadline = _deadline(timeout)
    fd = obj._enter()
    try:
        if not obj._turn.acquire(deadline):
            raise TimedOut(f"another write kept this pipe end busy for {timeout}s")
        written = 0
        try:
            obj._check_open()
            while written < total:
                written += send_some(obj.sock, view, written)
                if written < total and not obj._wait([(fd, select.POLLOUT)], deadline):
                    if written:
                        return written
                    raise TimedOut(f"the pipe stayed full for {timeout}s")
            return written
        finally:
            obj._turn.release()
    finally:
        obj._leave()


def send_some(sock: socket.socket, view: memoryview, written: int) -> int:
    """One ``send`` of ``view[written:]``: the bytes sent, 0 if the pipe is full.

    PeerClosed (with ``written``) once every reader is gone; ``MSG_NOSIGNAL``
    keeps the kernel from raising SIGPIPE.
    """
    try:
        return sock.send(view[written:] if written else view, _NOSIGNAL)
    except BlockingIOError:
        return 0
    except (BrokenPipeError, ConnectionResetError):
        raise peer_closed(written) from None


def byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError("pipe data must be a contiguous buffer")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def peer_closed(written: int) -> PeerClosed:
    exc = PeerClosed("every reader of the pipe is gone")
    exc.written = written  # type: ignore[attr-defined]
    return exc
