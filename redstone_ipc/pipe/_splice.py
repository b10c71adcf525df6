"""Zero-copy moves between a pipe and a file, socket, memfd or pipe: ``splice(2)``.

``splice`` needs a kernel pipe on one side, and a pipe end here is a socket
(see ``_kernel``). When the other side is a kernel pipe, one splice moves the
bytes. Otherwise they go through a *relay*: a kernel pipe private to the
call, never shared, so it grants nothing to anyone. Stage one takes up to one
relay-full (64 KiB) from the source, stage two gives all of it to the
destination; the bytes never enter this process.

Once stage one has taken bytes from the source they are committed: stage two
delivers every one of them, waiting for room if it must, even past the
deadline (only closing the end stops it), since the source cannot take them
back. Stage one starts only when the destination reports room, so that wait
is short: the destination filled up within microseconds (another process
wrote into it first) or takes bytes slowly (a TCP socket draining to the
network). A destination that fails in between (its peer gone, a seal added
to a memfd at that instant, a full disk) loses those bytes, with the error.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from typing import TYPE_CHECKING, Any, Callable, Union

from ..core.object import Handle, Rights
from ..errors import InvalidAddress, PermissionDenied, TimedOut
from ..linux.memfd import SEAL_FUTURE_WRITE, SEAL_WRITE, get_seals
from ..shm import SharedMemory
from . import _sigpipe
from ._deadline import deadline as _deadline
from ._io import peer_closed
from ._kernel import capacity_of

if TYPE_CHECKING:
    from ._end import _PipeEndObject, _PipeWriterObject

__all__ = ["SpliceTarget", "splice_from", "splice_to"]

SpliceTarget = Union[int, Handle, Any]  # an fd, a handle, or an object with fileno()

_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE


def splice_from(
    obj: _PipeWriterObject, source: SpliceTarget, count: int, offset: int | None, timeout: float | None
) -> int:
    """Up to ``count`` bytes from ``source`` into the pipe; 0 at the source's end."""
    if count < 0:
        raise ValueError(f"cannot splice {count} bytes")
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
                if other.is_pipe():
                    return _direct(obj, other.fd, fd, count, offset, None, deadline, timeout, into_pipe=True)
                return _relayed(obj, other.fd, fd, count, offset, None, deadline, timeout, into_pipe=True)
            finally:
                obj._turn.release()
        finally:
            obj._leave()
    finally:
        other.close()


def splice_to(
    obj: _PipeEndObject, destination: SpliceTarget, count: int, offset: int | None, timeout: float | None
) -> int:
    """Up to ``count`` bytes from the pipe into ``destination``; 0 at end of stream."""
    if count < 0:
        raise ValueError(f"cannot splice {count} bytes")
    other = _Other(destination, Rights.WRITE)
    try:
        other.check_range(offset, count)
        other.check_writable()
        deadline = _deadline(timeout)
        fd = obj._enter()
        try:
            if other.is_pipe():
                return _direct(obj, fd, other.fd, count, None, offset, deadline, timeout, into_pipe=False)
            return _relayed(obj, fd, other.fd, count, None, offset, deadline, timeout, into_pipe=False)
        except PermissionError:
            if other.shm_size is None:
                raise
            raise _sealed() from None
        finally:
            obj._leave()
    finally:
        other.close()


def _direct(
    obj: _PipeEndObject,
    src: int,
    dst: int,
    count: int,
    offset_src: int | None,
    offset_dst: int | None,
    deadline: float | None,
    timeout: float | None,
    into_pipe: bool,
) -> int:
    """One successful splice(2), after waiting for whichever side is not ready.

    ``into_pipe``: ``dst`` is this pipe's writer, else ``src`` is its reader.
    """
    waits = [(src, select.POLLIN), (dst, select.POLLOUT)]
    while True:
        try:
            return _guarded_splice(src, dst, count, offset_src, offset_dst)
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError) as e:
            if into_pipe:
                raise peer_closed(0) from None
            if isinstance(e, ConnectionResetError):
                return 0  # from our reader's socket: the end of its stream (see _io.recv)
            raise
        if not obj._wait(_not_ready(waits), deadline):
            raise TimedOut(f"the splice could not proceed within {timeout}s")


def _relayed(
    obj: _PipeEndObject,
    src: int,
    dst: int,
    count: int,
    offset_src: int | None,
    offset_dst: int | None,
    deadline: float | None,
    timeout: float | None,
    into_pipe: bool,
) -> int:
    """Through a private kernel pipe: take what the relay holds once the
    destination has room, then deliver all of it.

    ``into_pipe``: ``dst`` is this pipe's writer, else ``src`` is its reader.
    """
    if into_pipe:
        # A splice may pass the budget by what it carries: by one capacity at most.
        count = min(count, capacity_of(obj.sock))
    relay_r, relay_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            revents = _revents(dst, select.POLLOUT)
            if revents & (select.POLLHUP | select.POLLERR):
                # Shut or broken: nothing can be delivered, so take nothing.
                if into_pipe:
                    raise peer_closed(0)
                raise BrokenPipeError(errno.EPIPE, "the splice's destination is closed")
            if revents:
                try:
                    taken = os.splice(src, relay_w, count, offset_src, None, _FLAGS)
                except BlockingIOError:
                    pending = [(src, select.POLLIN)]
                except ConnectionResetError:
                    if into_pipe:
                        raise
                    return 0  # from our reader's socket: the end of its stream (see _io.recv)
                else:
                    break
            else:
                pending = [(dst, select.POLLOUT)]
            if not obj._wait(pending, deadline):
                raise TimedOut(f"the splice could not proceed within {timeout}s")
        moved = 0
        while moved < taken:
            at = None if offset_dst is None else offset_dst + moved
            try:
                moved += _guarded_splice(relay_r, dst, taken - moved, None, at)
            except BlockingIOError:
                obj._wait([(dst, select.POLLOUT)], None)  # committed: no deadline
            except (BrokenPipeError, ConnectionResetError):
                if into_pipe:
                    raise peer_closed(moved) from None
                raise
        return taken
    finally:
        os.close(relay_r)
        os.close(relay_w)


def _guarded_splice(
    src: int, dst: int, count: int, offset_src: int | None, offset_dst: int | None
) -> int:
    """splice(2) into something others read (a socket, a pipe): EPIPE, never SIGPIPE."""
    state = _sigpipe.block()
    try:
        return os.splice(src, dst, count, offset_src, offset_dst, _FLAGS)
    finally:
        # A splice into a socket can raise SIGPIPE yet report bytes moved.
        _sigpipe.restore(state, True)


def _revents(fd: int, events: int) -> int:
    poller = select.poll()
    poller.register(fd, events)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


def _not_ready(waits: list[tuple[int, int]]) -> list[tuple[int, int]]:
    # Sleep only on the sides that are not ready: polling a ready one would
    # return at once, and the loop would spin.
    return [w for w in waits if not _revents(*w)] or waits


def _sealed() -> PermissionDenied:
    return PermissionDenied("the region is sealed against writes: a read-only handle to it was sent")


class _Other:
    """The fd on the far side of a splice, held open for the call."""

    __slots__ = ("fd", "shm_size", "_leave")

    def __init__(self, target: SpliceTarget, right: Rights) -> None:
        from ._end import _PipeEndObject

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

    def is_pipe(self) -> bool:
        return stat.S_ISFIFO(os.fstat(self.fd).st_mode)

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

    def check_writable(self) -> None:
        """Refuse a sealed region before any byte leaves the pipe for it."""
        if self.shm_size is not None and get_seals(self.fd) & (SEAL_WRITE | SEAL_FUTURE_WRITE):
            raise _sealed()

    def close(self) -> None:
        if self._leave is not None:
            self._leave()
            self._leave = None
