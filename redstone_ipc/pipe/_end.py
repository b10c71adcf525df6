"""A pipe end as a kernel object: one socket, closed only once no thread uses it.

Closing must be safe while other threads use the fd: were it closed under a
thread sleeping in poll(), the number could be reused by an unrelated open()
and that thread would read someone else's file. So operations *enter* the
object (counting users), ``_destroy`` only marks it closing and wakes the
sleepers through an eventfd, and the last user out closes the fd. The
eventfd is made on the first wait, so ends that never block cost one fd.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import weakref
from typing import ClassVar

from ..core.object import KernelObject, ObjectType, Rights
from ..errors import InvalidHandle, ProtocolError
from ..sched.lock import acquire_deferring
from ._async import LoopWaits
from ._deadline import poll_ms
from ._kernel import adopt
from ._turn import Turn

__all__ = ["_PipeEndObject", "_PipeReaderObject", "_PipeWriterObject"]

# Every live end, so a forked child can reset the locks and waiters it inherited.
_LIVE: weakref.WeakSet[_PipeEndObject] = weakref.WeakSet()


class _PipeEndObject(KernelObject):
    """One end of a pipe: a non-blocking, close-on-exec socket (see ``_kernel``)."""

    _READING: ClassVar[bool]  # which end a received fd must be

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.fd = sock.fileno()
        self._lock = threading.Lock()  # guards the three fields below
        self._users = 0
        self._closing = False
        self._wake_fd: int | None = None  # eventfd, readable once closing
        self.loop_waits = LoopWaits()
        _LIVE.add(self)

    # -- transfer ---------------------------------------------------------------

    def transfer_fds(self, rights: Rights) -> list[int]:
        return [self.fd]

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _PipeEndObject:
        if len(fds) != 1:
            raise ProtocolError(f"a {cls.TYPE.name} handle carries 1 fd, got {len(fds)}")
        return cls(adopt(fds[0], cls._READING))

    # -- use and close ----------------------------------------------------------

    def _enter(self) -> int:
        """Count a user in; the fd stays open until it leaves. InvalidHandle if closing."""
        with self._lock:
            if self._closing:
                raise InvalidHandle("the pipe end was closed")
            self._users += 1
        return self.fd

    def _leave(self) -> None:
        # In the finally of every call: a signal handler's exception while this
        # waits for the lock must not skip the count (the fd would never be
        # closed); it is raised once the count is done and the fd closed.
        deferred = acquire_deferring(self._lock)
        self._users -= 1
        last = self._closing and self._users <= 0
        self._lock.release()
        if last:
            self._close_fds()
        if deferred is not None:
            raise deferred

    def _destroy(self) -> None:
        with self._lock:
            self._closing = True
            if self._wake_fd is not None:
                os.eventfd_write(self._wake_fd, 1)  # wakes every poller, stays readable
            idle = self._users <= 0
        if idle:
            self._close_fds()
        # Tasks waiting in an event loop see the eventfd too (it is registered).

    def _close_fds(self) -> None:
        wake, self._wake_fd = self._wake_fd, None
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()
        if wake is not None:
            os.close(wake)

    def _check_open(self) -> None:
        if self._closing:
            raise InvalidHandle("the pipe end was closed while the call waited")

    def _wake_fd_get(self) -> int:
        with self._lock:
            if self._closing:
                raise InvalidHandle("the pipe end was closed")
            if self._wake_fd is None:
                self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            return self._wake_fd

    def _after_fork_in_child(self) -> None:
        # Only the forking thread exists in the child: no other thread can be
        # using the fd, holding a lock or awaiting in a loop. The eventfd is
        # shared with the parent, so writing it here would wake the parent's
        # sleepers: drop the child's copy; a new one is made on demand.
        self._lock = threading.Lock()
        self.loop_waits = LoopWaits()
        self._users = 0
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        if self._closing and self.fd >= 0:
            self._close_fds()

    # -- waiting ----------------------------------------------------------------

    def _wait(self, fds: list[tuple[int, int]], deadline: float | None) -> bool:
        """Sleep until one of ``fds`` reports its events (or an error or hangup).

        False once the deadline has passed; InvalidHandle if the end is closed
        meanwhile. The caller retries its syscall after a True: readiness is
        only a hint (another thread may take the bytes first).
        """
        ms = poll_ms(deadline)
        if ms is None:
            return False
        poller = select.poll()
        for fd, events in fds:
            poller.register(fd, events)
        poller.register(self._wake_fd_get(), select.POLLIN)
        poller.poll(ms)  # retried by Python on EINTR, with the time left
        self._check_open()
        return True


class _PipeReaderObject(_PipeEndObject):
    TYPE = ObjectType.PIPE_READER
    DEFAULT_RIGHTS = Rights.READ | Rights.BASIC
    ALLOWED_RIGHTS = DEFAULT_RIGHTS
    _READING = True


class _PipeWriterObject(_PipeEndObject):
    TYPE = ObjectType.PIPE_WRITER
    DEFAULT_RIGHTS = Rights.WRITE | Rights.BASIC
    ALLOWED_RIGHTS = DEFAULT_RIGHTS
    _READING = False

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        # One multi-syscall write at a time in this process (threads and tasks).
        self._turn = Turn()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._turn = Turn()


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
