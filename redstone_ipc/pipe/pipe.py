"""Pipes: a one-way byte stream between processes (seed: ``ipc/pipe``).

A pipe is a kernel byte queue with two ends, each its own handle::

    reader, writer = Pipe.create()            # or Pipe.create(capacity=1 << 20)
    writer.write(b"hello")                    # -> 5
    reader.read(100)                          # -> b"hello"

The Linux pipe *is* the kernel object: ``pipe2(O_NONBLOCK | O_CLOEXEC)``,
its capacity set with ``F_SETPIPE_SZ``. Send either end to another process in
a :class:`~redstone_ipc.message.Message`; the fd moves with ``SCM_RIGHTS``.

Rights (Zircon style: a default set per type, and the most a handle may hold)

=============  =======================================  ==================
end            default = allowed                        kernel enforces
=============  =======================================  ==================
PipeReader     READ | DUPLICATE | TRANSFER | WAIT       the fd is O_RDONLY
PipeWriter     WRITE | DUPLICATE | TRANSFER | WAIT      the fd is O_WRONLY
=============  =======================================  ==================

Both handle classes share one set of operations and every operation checks
its right first, so ``reader.write(...)`` raises PermissionDenied (as
``zx_socket_write`` on a handle without ``ZX_RIGHT_WRITE`` does), and a
writer duplicated without WRITE cannot write either. Within one process a
dropped READ or WRITE is enforced by this library; across processes the fd
that travels is a read end or a write end, so the kernel enforces it too.
``fileno()`` (for selectors) needs WAIT.

End of stream and a vanished peer
---------------------------------
``read`` returns ``b''`` once every writer is gone, in every process —
closed, moved away, or killed by SIGKILL (the kernel closes a dead process's
fds). ``write`` raises PeerClosed once every reader is gone, and never lets
the kernel's SIGPIPE kill the process, whatever the signal's disposition: the
writing thread blocks SIGPIPE around the call and consumes the signal its own
write raised (libpq does the same). This costs about 0.6 µs per call.

Blocking and timeouts
---------------------
Every operation takes ``timeout``: ``None`` waits as long as it takes,
``0`` never waits, a number of seconds bounds the wait. Waiting is ``poll(2)``:
the thread sleeps in the kernel, it never spins. When nothing could be done
in time the call raises :class:`~redstone_ipc.errors.TimedOut`; a ``write``
that got *some* bytes out before the deadline returns that count instead, so
no byte written is ever unaccounted for. Closing the last handle to an end
(in any thread) wakes every thread and task waiting on it with InvalidHandle;
the fd itself is closed when the last of them has left, so a sleeping thread
can never end up using a recycled fd number.

``write`` writes everything (like ``socket.sendall``) unless the deadline
passes. Writes of at most :data:`PIPE_BUF` (4096) bytes are atomic, even
between processes; a longer ``write`` is kept contiguous with respect to the
other writes made through the same object in this process (threads and
asyncio tasks take turns), but may interleave with writers in other
processes, as the kernel's pipe does.

asyncio
-------
``await reader.read_async(n)`` and ``await writer.write_async(data)`` wait
with ``loop.add_reader``/``add_writer``: no thread per wait. Bound them with
``asyncio.wait_for`` or ``asyncio.timeout``. While such a call waits, do not
register the same fd with the loop yourself (asyncio allows one callback per
fd).

Zero-copy moves
---------------
``writer.splice_from(src, count)`` and ``reader.splice_to(dst, count)`` move
bytes between the pipe and a file, a socket, a memfd or another pipe with
``splice(2)``: the bytes never enter this process. The other side may be a raw
fd, an object with ``fileno()``, or a handle (a SharedMemory handle needs
READ to be spliced from and WRITE to be spliced into, and an explicit
``offset``, because a memfd's file position is shared by every process that
holds it). Waiting on a socket honours ``timeout``, but a *blocking* socket
can still make the kernel wait inside ``splice`` itself: make sockets
non-blocking when the bound matters.

Received ends are switched to ``O_NONBLOCK`` (this library waits with
``poll``); the flag belongs to the open file, so it is shared with whoever
else holds that same pipe end.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import math
import os
import select
import stat
import threading
import time
import weakref
from typing import Any, Callable, ClassVar, TypeVar, Union

from ..core.object import HANDLE_TABLE, Handle, KernelObject, ObjectType, Rights
from ..errors import (
    InvalidAddress,
    InvalidHandle,
    CapacityError,
    OutOfMemory,
    PeerClosed,
    PermissionDenied,
    ProtocolError,
    TimedOut,
)
from ..shm import SharedMemory
from ..sched.lock import acquire_deferring
from . import _sigpipe
from ._turn import Turn, resolve

__all__ = ["Pipe", "PipeReader", "PipeWriter", "CapacityError", "PIPE_BUF"]

# In the fcntl module since Python 3.10; the numbers are Linux's ABI.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

PIPE_BUF: int = select.PIPE_BUF
"""Writes of at most this many bytes are atomic, even between processes."""

_MAX_SIZE_FILE = "/proc/sys/fs/pipe-max-size"
_SPLICE_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
_POLL_MS_MAX = 2**31 - 1  # poll(2) takes a C int of milliseconds

Buffer = Union[bytes, bytearray, memoryview]
SpliceTarget = Union[int, Handle, Any]  # an fd, a handle, or an object with fileno()
_A = TypeVar("_A")
_R = TypeVar("_R")


# -- deadlines ----------------------------------------------------------------------


def _deadline(timeout: float | None) -> float | None:
    """The monotonic instant a wait must end (None: never)."""
    if timeout is None:
        return None
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be None or >= 0 seconds, not {timeout}")
    return time.monotonic() + timeout


def _poll_ms(deadline: float | None) -> int | None:
    """Milliseconds to poll, -1 for ever; None once the deadline has passed.

    Rounded up, so a poll never returns just before the deadline and makes
    the caller loop (spin) through the last fraction of a millisecond.
    """
    if deadline is None:
        return -1
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    return min(math.ceil(remaining * 1000), _POLL_MS_MAX)


def _max_capacity() -> int:
    try:
        with open(_MAX_SIZE_FILE, "rb") as f:
            return int(f.read())
    except (OSError, ValueError):  # pragma: no cover - /proc always has it on Linux
        return 1 << 20


# A read returns at most what the pipe holds, and pipes hold at most
# pipe-max-size: capping ``n`` there keeps read(1 << 30) from allocating 1 GiB.
_READ_CAP = max(_max_capacity(), 1 << 16)


# -- the kernel object --------------------------------------------------------------

# Every live end, so a forked child can reset the locks and waiters it inherited.
_LIVE: weakref.WeakSet[_PipeEndObject] = weakref.WeakSet()


class _PipeEndObject(KernelObject):
    """One end of a pipe: a single O_NONBLOCK, close-on-exec fd.

    Closing must be safe while other threads use the fd: were it closed under
    a thread sleeping in poll(), the number could be reused by an unrelated
    open() and that thread would read someone else's file. So operations
    *enter* the object (counting users), ``_destroy`` only marks it closing
    and wakes the sleepers through an eventfd, and the last user out closes
    the fd. The eventfd is made on the first wait, so ends that never block
    cost one fd.
    """

    _ACCESS: ClassVar[int]  # O_RDONLY or O_WRONLY: what a received fd must be

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self._lock = threading.Lock()  # guards the four fields below
        self._users = 0
        self._closing = False
        self._wake_fd: int | None = None  # eventfd, readable once closing
        self._async: dict[tuple[Any, int, bool], set[asyncio.Future[None]]] = {}
        self._turn = Turn()
        _LIVE.add(self)

    # -- transfer ---------------------------------------------------------------

    def transfer_fds(self, rights: Rights) -> list[int]:
        return [self.fd]

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _PipeEndObject:
        name = cls.TYPE.name
        if len(fds) != 1:
            raise ProtocolError(f"a {name} handle carries 1 fd, got {len(fds)}")
        (fd,) = fds
        try:
            mode = os.fstat(fd).st_mode
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as e:
            raise ProtocolError(f"a {name} handle arrived with an unusable fd: {e}") from None
        if not stat.S_ISFIFO(mode):
            raise ProtocolError(f"a {name} handle arrived with an fd that is not a pipe")
        if flags & os.O_ACCMODE != cls._ACCESS:
            raise ProtocolError(
                f"a {name} handle arrived with the wrong end of a pipe "
                f"(access mode {flags & os.O_ACCMODE}, expected {cls._ACCESS})"
            )
        if not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        return cls(fd)

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
        fd, self.fd = self.fd, -1
        wake, self._wake_fd = self._wake_fd, None
        if fd >= 0:
            os.close(fd)
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
        self._turn = Turn()
        self._async = {}
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
        ms = _poll_ms(deadline)
        if ms is None:
            return False
        poller = select.poll()
        for fd, events in fds:
            poller.register(fd, events)
        poller.register(self._wake_fd_get(), select.POLLIN)
        poller.poll(ms)  # retried by Python on EINTR, with the time left
        self._check_open()
        return True

    async def _wait_async(self, fd: int, writable: bool) -> None:
        """Await readiness of ``fd`` in the running loop, or the end's closing."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        keys = [(loop, fd, writable), (loop, self._wake_fd_get(), False)]
        added = []
        try:
            for key in keys:
                self._async_add(key, future)
                added.append(key)
            await future
        finally:
            for key in added:
                self._async_discard(key, future)
        self._check_open()

    # asyncio takes one callback per fd and direction, but several tasks may
    # wait on the same end: one registration per (loop, fd, direction) wakes
    # all of them.

    def _async_add(self, key: tuple[Any, int, bool], future: asyncio.Future[None]) -> None:
        with self._lock:
            waiters = self._async.get(key)
            first = waiters is None
            if first:
                waiters = self._async[key] = set()
            waiters.add(future)  # type: ignore[union-attr]
        if first:
            loop, fd, writable = key
            add = loop.add_writer if writable else loop.add_reader
            try:
                add(fd, self._async_wake, key)
            except BaseException:
                with self._lock:
                    self._async.pop(key, None)
                raise

    def _async_wake(self, key: tuple[Any, int, bool]) -> None:
        # Unregister at once: the fd stays ready until a woken task consumes
        # it, and a registered level-triggered fd would call us every turn.
        with self._lock:
            waiters = self._async.pop(key, set())
        self._async_unregister(key)
        for future in waiters:
            resolve(future)

    def _async_discard(self, key: tuple[Any, int, bool], future: asyncio.Future[None]) -> None:
        with self._lock:
            waiters = self._async.get(key)
            if waiters is None or future not in waiters:
                return
            waiters.discard(future)
            if waiters:
                return
            del self._async[key]
        self._async_unregister(key)

    @staticmethod
    def _async_unregister(key: tuple[Any, int, bool]) -> None:
        loop, fd, writable = key
        (loop.remove_writer if writable else loop.remove_reader)(fd)


class _PipeReaderObject(_PipeEndObject):
    TYPE = ObjectType.PIPE_READER
    DEFAULT_RIGHTS = Rights.READ | Rights.BASIC
    ALLOWED_RIGHTS = DEFAULT_RIGHTS
    _ACCESS = os.O_RDONLY


class _PipeWriterObject(_PipeEndObject):
    TYPE = ObjectType.PIPE_WRITER
    DEFAULT_RIGHTS = Rights.WRITE | Rights.BASIC
    ALLOWED_RIGHTS = DEFAULT_RIGHTS
    _ACCESS = os.O_WRONLY


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the other side of a splice -----------------------------------------------------


class _Other:
    """The fd on the far side of a splice, held open for the call."""

    __slots__ = ("fd", "shm_size", "_leave")

    def __init__(self, target: SpliceTarget, right: Rights) -> None:
        self.shm_size: int | None = None
        self._leave: Callable[[], None] | None = None
        if isinstance(target, Handle):
            obj = target._require(right)
            if isinstance(obj, _PipeEndObject):
                self.fd = obj._enter()  # kept open even if closed meanwhile
                self._leave = obj._leave
            else:
                self.fd = obj.fd if hasattr(obj, "fd") else target.fileno()  # type: ignore[attr-defined]
                if isinstance(target, SharedMemory):
                    self.shm_size = target.size
        elif isinstance(target, int) and not isinstance(target, bool):
            self.fd = target
        elif hasattr(target, "fileno"):
            self.fd = target.fileno()
        else:
            raise TypeError(
                f"splice needs an fd, an object with fileno() or a handle, not {type(target).__name__}"
            )

    def check_range(self, offset: int | None, count: int) -> None:
        if self.shm_size is None:
            return
        if offset is None:
            raise ValueError(
                "splicing shared memory needs an explicit offset: the memfd's "
                "file position is shared by every process that holds the region"
            )
        if offset < 0 or offset + count > self.shm_size:
            raise InvalidAddress(
                f"bytes {offset}..{offset + count} are outside the region of {self.shm_size}"
            )

    def close(self) -> None:
        if self._leave is not None:
            self._leave()
            self._leave = None


def _ready_now(fd: int, events: int) -> bool:
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(0))


def _write_some(fd: int, view: memoryview, written: int) -> int:
    """One write of ``view[written:]``: the bytes written, 0 if the pipe is full.

    SIGPIPE is guarded around the syscall alone, so asyncio tasks running
    between two writes in this thread never run with it blocked. PeerClosed
    (with ``written``) once every reader is gone.
    """
    state = _sigpipe.block()
    epipe = False
    try:
        return os.write(fd, view[written:])
    except BlockingIOError:
        return 0
    except BrokenPipeError:
        epipe = True
        raise _peer_closed(written) from None
    finally:
        _sigpipe.restore(state, epipe)


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError("pipe data must be a contiguous buffer")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


# -- handles ------------------------------------------------------------------------


_READ, _WRITE, _WAIT = int(Rights.READ), int(Rights.WRITE), int(Rights.WAIT)


class _PipeEnd(Handle):
    """What both ends share: every operation checks its right, then asks the kernel."""

    __slots__ = ()

    def _check(self, right: int) -> _PipeEndObject:
        """``_require`` on the hot path: IntFlag arithmetic costs 0.5 µs, int's 0.05."""
        obj = self._object
        if obj is not None and int.__and__(self._rights, right) == right:
            return obj  # type: ignore[return-value]
        return self._require(Rights(right))  # raises InvalidHandle or PermissionDenied

    # -- reading (needs READ) -------------------------------------------------------

    def read(self, n: int, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes, as soon as at least one is there; ``b''`` at end of stream.

        Needs READ. End of stream: the pipe is empty and every writer, in
        every process, is gone. TimedOut if no byte arrived within ``timeout``.
        """
        obj = self._check(_READ)
        if n < 0:
            raise ValueError(f"cannot read {n} bytes")
        return _read_waiting(obj, os.read, min(n, _READ_CAP), timeout)

    def readinto(self, buffer: Buffer, timeout: float | None = None) -> int:
        """Read into ``buffer`` (no intermediate copy); the count, 0 at end of stream.

        Needs READ. Same waiting rules as :meth:`read`.
        """
        obj = self._check(_READ)
        return _read_waiting(obj, os.readv, [buffer], timeout)

    async def read_async(self, n: int) -> bytes:
        """:meth:`read` for asyncio: awaits readability in the running loop."""
        obj = self._check(_READ)
        if n < 0:
            raise ValueError(f"cannot read {n} bytes")
        n = min(n, _READ_CAP)
        fd = obj._enter()
        try:
            while True:
                try:
                    return os.read(fd, n)
                except BlockingIOError:
                    pass
                await obj._wait_async(fd, writable=False)
        finally:
            obj._leave()

    # -- writing (needs WRITE) ------------------------------------------------------

    def write(self, data: Buffer, timeout: float | None = None) -> int:
        """Write all of ``data`` and return its length, unless time runs out.

        Needs WRITE. With a ``timeout`` (0 included: write what fits now),
        returns the bytes written so far if there are any, else raises
        TimedOut. PeerClosed once every reader is gone (the exception's
        ``written`` attribute tells how many bytes this call had already
        written, bytes no one will read). Never raises SIGPIPE.
        """
        obj = self._check(_WRITE)
        view = _byte_view(data)
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
                    written += _write_some(fd, view, written)
                    if written < total and not obj._wait([(fd, select.POLLOUT)], deadline):
                        if written:
                            return written
                        raise TimedOut(f"the pipe stayed full for {timeout}s")
                return written
            finally:
                obj._turn.release()
        finally:
            obj._leave()

    async def write_async(self, data: Buffer) -> int:
        """:meth:`write` for asyncio: writes everything, awaiting room; returns the length.

        Cancelling it may leave part of ``data`` written.
        """
        obj = self._check(_WRITE)
        view = _byte_view(data)
        total = view.nbytes
        fd = obj._enter()
        try:
            await obj._turn.acquire_async()
            written = 0
            try:
                obj._check_open()
                while written < total:
                    written += _write_some(fd, view, written)
                    if written < total:
                        await obj._wait_async(fd, writable=True)
                return written
            finally:
                obj._turn.release()
        finally:
            obj._leave()

    # -- zero-copy moves -----------------------------------------------------------

    def splice_from(
        self,
        source: SpliceTarget,
        count: int,
        offset: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Move up to ``count`` bytes from ``source`` into the pipe; the count moved.

        Needs WRITE (and READ on ``source`` if it is a handle). ``offset``
        reads a file or memfd at that position, leaving its file position
        alone; ``None`` reads at (and advances) the file position — the only
        choice for sockets and pipes. Returns 0 when ``source`` is at its end.
        Waits until both sides are ready; PeerClosed if every reader is gone.
        """
        obj = self._check(_WRITE)
        other = _Other(source, Rights.READ)
        try:
            other.check_range(offset, count)
            deadline = _deadline(timeout)
            fd = obj._enter()
            try:
                if not obj._turn.acquire(deadline):
                    raise TimedOut(f"another write kept this pipe end busy for {timeout}s")
                try:
                    obj._check_open()
                    return self._splice(
                        obj, other.fd, fd, count, offset, None, deadline, timeout,
                        waits=[(fd, select.POLLOUT), (other.fd, select.POLLIN)],
                        into_pipe=True,
                    )
                finally:
                    obj._turn.release()
            finally:
                obj._leave()
        finally:
            other.close()

    def splice_to(
        self,
        destination: SpliceTarget,
        count: int,
        offset: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Move up to ``count`` bytes from the pipe into ``destination``; the count moved.

        Needs READ (and WRITE on ``destination`` if it is a handle).
        ``offset`` writes a file or memfd at that position. Returns 0 at the
        pipe's end of stream. Waits until both sides are ready. A destination
        whose own reader or peer is gone raises BrokenPipeError, never SIGPIPE.
        """
        obj = self._check(_READ)
        other = _Other(destination, Rights.WRITE)
        try:
            other.check_range(offset, count)
            deadline = _deadline(timeout)
            fd = obj._enter()
            try:
                try:
                    return self._splice(
                        obj, fd, other.fd, count, None, offset, deadline, timeout,
                        waits=[(fd, select.POLLIN), (other.fd, select.POLLOUT)],
                        into_pipe=False,
                    )
                except PermissionError:
                    if other.shm_size is None:
                        raise
                    raise PermissionDenied(
                        "the region is sealed against writes: a read-only handle to it was sent"
                    ) from None
            finally:
                obj._leave()
        finally:
            other.close()

    @staticmethod
    def _splice(
        obj: _PipeEndObject,
        src: int,
        dst: int,
        count: int,
        offset_src: int | None,
        offset_dst: int | None,
        deadline: float | None,
        timeout: float | None,
        waits: list[tuple[int, int]],
        into_pipe: bool,
    ) -> int:
        """One successful splice(2), after waiting for whichever side is not ready."""
        if count < 0:
            raise ValueError(f"cannot splice {count} bytes")
        while True:
            state = _sigpipe.block()
            try:
                return os.splice(src, dst, count, offset_src, offset_dst, _SPLICE_FLAGS)
            except BlockingIOError:
                pass
            except BrokenPipeError:
                if into_pipe:
                    raise _peer_closed(0) from None
                raise
            finally:
                # A splice into a socket can raise SIGPIPE yet report bytes moved.
                _sigpipe.restore(state, True)
            # Sleep only on the sides that are not ready: polling a ready one
            # would return at once, and the loop would spin.
            pending = [w for w in waits if not _ready_now(*w)] or waits
            if not obj._wait(pending, deadline):
                raise TimedOut(f"the splice could not proceed within {timeout}s")

    # -- introspection ----------------------------------------------------------

    def fileno(self) -> int:
        """The fd, for selectors and event loops. Needs WAIT.

        The handle owns it: do not close it, and do not read or write it
        behind the handle's back (its rights would not be checked).
        """
        obj = self._check(_WAIT)
        return obj.fd

    @property
    def capacity(self) -> int:
        """Bytes the pipe holds before a writer must wait (``F_GETPIPE_SZ``)."""
        obj: _PipeEndObject = self._live()
        fd = obj._enter()
        try:
            return fcntl.fcntl(fd, F_GETPIPE_SZ)
        finally:
            obj._leave()


def _read_waiting(
    obj: _PipeEndObject, read: Callable[[int, _A], _R], arg: _A, timeout: float | None
) -> _R:
    """``read(fd, arg)`` once the pipe has a byte (or its end of stream) for it.

    TimedOut if nothing arrived within ``timeout``. The fd stays open for the
    call even if the handle is closed meanwhile (``_enter``/``_leave``).
    """
    deadline = _deadline(timeout)
    fd = obj._enter()
    try:
        while True:
            try:
                return read(fd, arg)
            except BlockingIOError:
                pass
            if not obj._wait([(fd, select.POLLIN)], deadline):
                raise TimedOut(f"no bytes arrived within {timeout}s")
    finally:
        obj._leave()


def _peer_closed(written: int) -> PeerClosed:
    exc = PeerClosed("every reader of the pipe is gone")
    exc.written = written  # type: ignore[attr-defined]
    return exc


class PipeReader(_PipeEnd):
    """The read end of a pipe. Rights: READ | DUPLICATE | TRANSFER | WAIT.

    ``read``, ``readinto``, ``read_async`` and ``splice_to`` are its
    operations; the writing ones raise PermissionDenied on a reader.
    """

    __slots__ = ()


class PipeWriter(_PipeEnd):
    """The write end of a pipe. Rights: WRITE | DUPLICATE | TRANSFER | WAIT.

    ``write``, ``write_async`` and ``splice_from`` are its operations; the
    reading ones raise PermissionDenied on a writer.
    """

    __slots__ = ()


_PipeReaderObject.HANDLE_CLASS = PipeReader
_PipeWriterObject.HANDLE_CLASS = PipeWriter


class Pipe:
    """Makes pipes: ``reader, writer = Pipe.create()``. It has no instances."""

    PIPE_BUF: ClassVar[int] = PIPE_BUF

    def __init__(self) -> None:
        raise TypeError("use Pipe.create() to make a pipe")

    @staticmethod
    def create(capacity: int | None = None) -> tuple[PipeReader, PipeWriter]:
        """A new pipe: ``(reader, writer)`` handles with their default rights.

        ``capacity`` (bytes) asks the kernel for that much buffer; it rounds
        up to a power-of-two number of pages (see ``writer.capacity``).
        ``None`` keeps the kernel's default (64 KiB). CapacityError for a
        capacity that is not positive or exceeds :meth:`max_capacity` (or
        this user's pipe buffer quota, ``/proc/sys/fs/pipe-user-pages-*``).
        """
        if capacity is not None:
            if not isinstance(capacity, int) or capacity <= 0:
                raise CapacityError(f"a pipe capacity must be a positive int, not {capacity!r}")
            limit = _max_capacity()
            if capacity > limit:
                # Checked here, not left to the kernel: root (CAP_SYS_RESOURCE)
                # may exceed the limit, and behaviour should not depend on who
                # runs the program.
                raise CapacityError(
                    f"a pipe capacity of {capacity} bytes exceeds the system limit "
                    f"of {limit} ({_MAX_SIZE_FILE})"
                )
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if capacity is not None:
                try:
                    fcntl.fcntl(w, F_SETPIPE_SZ, capacity)
                except OSError as e:
                    if e.errno == errno.EPERM:
                        raise CapacityError(
                            f"the kernel refused a capacity of {capacity} bytes: this user's "
                            "pipe buffers exceed /proc/sys/fs/pipe-user-pages-hard"
                        ) from None
                    if e.errno == errno.ENOMEM:
                        raise OutOfMemory(f"no memory for a {capacity}-byte pipe") from None
                    raise
            reader_obj = _PipeReaderObject(r)
            writer_obj = _PipeWriterObject(w)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        reader = HANDLE_TABLE.insert(reader_obj, _PipeReaderObject.DEFAULT_RIGHTS, PipeReader)
        writer = HANDLE_TABLE.insert(writer_obj, _PipeWriterObject.DEFAULT_RIGHTS, PipeWriter)
        return reader, writer

    @staticmethod
    def max_capacity() -> int:
        """The largest capacity :meth:`create` accepts: ``/proc/sys/fs/pipe-max-size``."""
        return _max_capacity()
