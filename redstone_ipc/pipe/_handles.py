"""The handles: ``PipeReader`` and ``PipeWriter``. Each operation checks its right,
then hands over to the path that does the work (``_io``, ``_async``, ``_splice``)."""

from __future__ import annotations

from ..core.object import Handle, Rights
from . import _async, _io, _splice
from ._deadline import deadline as _deadline
from ._end import _PipeEndObject, _PipeReaderObject, _PipeWriterObject
from ._io import Buffer, byte_view
from ._kernel import capacity_of
from ._splice import SpliceTarget

__all__ = ["PipeReader", "PipeWriter"]

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

    def _check_write(self) -> _PipeWriterObject:
        # WRITE is in a writer's allowed rights only: the object is a writer.
        return self._check(_WRITE)  # type: ignore[return-value]

    # -- reading (needs READ) -------------------------------------------------------

    def read(self, n: int, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes, as soon as at least one is there; ``b''`` at end of stream.

        Needs READ. End of stream: the pipe is empty and every writer, in
        every process, is gone. ``timeout``: None (the default) waits for
        ever, a number of seconds at most that long, 0 only looks; TimedOut
        (a ``TimeoutError``) if no byte arrived in time.
        """
        return _io.read(self._check(_READ), n, timeout)

    def readinto(self, buffer: Buffer, timeout: float | None = None) -> int:
        """Read into ``buffer`` (no intermediate copy); the count, 0 at end of stream.

        Needs READ. Same ``timeout`` (default None: for ever) and results as
        :meth:`read`.
        """
        return _io.readinto(self._check(_READ), buffer, timeout)

    async def read_async(self, n: int, timeout: float | None = None) -> bytes:
        """:meth:`read` for asyncio: awaits readability in the running loop.

        Same ``timeout`` (default None: for ever) and results as :meth:`read`.
        """
        obj = self._check(_READ)
        if n < 0:
            raise ValueError(f"cannot read {n} bytes")
        return await _async.read_async(obj, n, _deadline(timeout), timeout)

    # -- writing (needs WRITE) ------------------------------------------------------

    def write(self, data: Buffer, timeout: float | None = None) -> int:
        """Write all of ``data`` and return its length, unless time runs out.

        Needs WRITE. ``timeout``: None (the default) waits for room for
        ever; when a number of seconds runs out (0 included: write what fits
        now), returns the bytes written so far if there are any, else raises
        TimedOut (a ``TimeoutError``). PeerClosed once every reader is gone (the exception's
        ``written`` attribute tells how many bytes this call had already
        written, bytes no one will read). Never raises SIGPIPE.
        """
        return _io.write(self._check_write(), data, timeout)

    async def write_async(self, data: Buffer, timeout: float | None = None) -> int:
        """:meth:`write` for asyncio: writes everything, awaiting room; returns the length.

        Same ``timeout`` (default None: for ever) and results as
        :meth:`write`: when it runs out, the bytes written so far, or
        TimedOut if there are none. Cancelling it may leave part of ``data``
        written (the count is lost with the task): bound it with
        ``timeout`` rather than ``asyncio.wait_for`` when the count matters.
        """
        obj = self._check_write()
        return await _async.write_async(obj, byte_view(data), _deadline(timeout), timeout)

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
        Waits until both sides are ready, as long as ``timeout`` allows (None,
        the default: for ever; TimedOut when it runs out, 0 included);
        PeerClosed if every reader is gone.
        """
        return _splice.splice_from(self._check_write(), source, count, offset, timeout)

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
        pipe's end of stream. Waits until both sides are ready, as long as
        ``timeout`` allows (None, the default: for ever; TimedOut when it runs
        out, 0 included). A destination whose own reader or peer is gone
        raises BrokenPipeError, never SIGPIPE.
        """
        return _splice.splice_to(self._check(_READ), destination, count, offset, timeout)

    # -- introspection ----------------------------------------------------------

    def fileno(self) -> int:
        """The fd, for selectors and event loops. Needs WAIT.

        The handle owns it: do not close it. The kernel holds it to the
        end's direction: a reader's fd cannot be written, nor a writer's read,
        by any system call.
        """
        return self._check(_WAIT).fd

    @property
    def capacity(self) -> int:
        """The pipe's budget for queued bytes, set at creation (see :meth:`Pipe.create`).

        A writer reads it from its socket (``SO_SNDBUF``), a reader the
        copy recorded on its own socket when the pipe was made.
        """
        obj: _PipeEndObject = self._live()
        obj._enter()
        try:
            return capacity_of(obj.sock)
        finally:
            obj._leave()


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
