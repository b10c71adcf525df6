"""Pipes: a one-way byte stream between processes (seed: ``ipc/pipe``).

A pipe is a kernel byte queue with two ends, each its own handle::

    reader, writer = Pipe.create()            # or Pipe.create(capacity=256 << 10)
    writer.write(b"hello")                    # -> 5
    reader.read(100)                          # -> b"hello"

Send either end to another process in a
:class:`~redstone_ipc.message.Message`; its fd moves with ``SCM_RIGHTS``.

Rights (Zircon style: a default set per type, and the most a handle may hold)

=============  =======================================  =============================
end            default = allowed                        kernel enforces
=============  =======================================  =============================
PipeReader     READ | DUPLICATE | TRANSFER | WAIT       its socket is shut for writing
PipeWriter     WRITE | DUPLICATE | TRANSFER | WAIT      its socket is shut for reading
=============  =======================================  =============================

Both handle classes share one set of operations and every operation checks
its right first, so ``reader.write(...)`` raises PermissionDenied (as
``zx_socket_write`` on a handle without ``ZX_RIGHT_WRITE`` does), and a
writer duplicated without WRITE cannot write either.

The kernel enforces each end's direction too, for every process and every
route to the fd. The kernel object is a connected ``AF_UNIX`` stream
socketpair, not a Linux pipe: a pipe's fd can be reopened through
``/proc/self/fd/N`` in any mode, a socket's cannot (ENXIO), and each end is
shut down, for good, in the direction it must never go. A process holding
only a reader cannot put a byte into the pipe (``write``, ``send``,
``splice`` into its fd all fail with EPIPE), one holding only a writer
cannot take one out (its fd reads as end of stream), root included.

End of stream and a vanished peer
---------------------------------
``read`` returns ``b''`` once every writer is gone, in every process —
closed, moved away, or killed by SIGKILL (the kernel closes a dead process's
fds). ``write`` raises PeerClosed once every reader is gone, and never lets
the kernel's SIGPIPE kill the process, whatever the signal's disposition:
writes pass ``MSG_NOSIGNAL``; splices cannot, so the thread blocks SIGPIPE
around the call and consumes the signal its own splice raised (libpq does
the same).

Capacity
--------
``capacity`` is the kernel's budget for the bytes written and not yet read,
shared by every writer in every process (the writer's ``SO_SNDBUF``). The
kernel charges each write its bookkeeping too, a few hundred bytes, and
lets a write in while any budget is left:

* large writes fill at least 97% of it, and may pass it by one piece of
  at most ``capacity / 2`` bytes (36 KiB at most);
* writes of :data:`PIPE_BUF` bytes fill at least 80% of it;
* each write takes at least 512 bytes of it, so a pipe of tiny writes holds
  far fewer bytes than its capacity: ``capacity / 512`` writes at most.

A writer that finds no budget left waits (or, with ``timeout=0``, returns
what it wrote so far).

Blocking and timeouts
---------------------
Every operation, async ones included, takes ``timeout``: ``None`` (the
default) waits as long as it takes, ``0`` (or less) never waits, a number
of seconds bounds the wait (the package's rule: ``core/timeout.py``). Waiting is ``poll(2)``:
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
with ``loop.add_reader``/``add_writer``: no thread per wait. They take the
same ``timeout`` as ``read`` and ``write``, with the same results (a
``write_async`` that runs out of time returns the count written so far);
``asyncio.wait_for`` works too, but cancels without telling how many bytes
went out. While such a call waits, do not
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

Unless the other side is a kernel pipe, a splice moves at most 64 KiB per
call (into a pipe: at most its capacity), through a kernel pipe private to
the call. It takes bytes from the source only when the destination has
room, and then delivers all of them: should the destination fill up in
between (another process wrote into it first, a TCP socket drains slowly),
the call waits for room even past ``timeout``; should it fail meanwhile
(its peer gone), the error is raised and those bytes are lost.

Received ends are checked (a connected unix stream socket, shut down the
way its type says, a writer with nothing to read and room for atomic
writes: else ProtocolError) and switched to ``O_NONBLOCK`` (this library
waits with ``poll``); the flag belongs to the open file, so it is shared
with whoever else holds that same pipe end.

What the kernel does not enforce
--------------------------------
The holders of one end share one socket. A holder working on the raw fd can
shut it down (``shutdown(2)``), which ends the stream for every reader
(a writer doing it) or closes the pipe for every writer (a reader doing it),
or change its ``SO_SNDBUF``, which changes the capacity for everyone (and,
below 8320 bytes, lets the kernel split a write of ``PIPE_BUF`` bytes). It
still cannot use a right it was not given. Give pipe ends to processes you
trust not to sabotage the stream.
"""

from __future__ import annotations

from typing import ClassVar

from ..core.object import HANDLE_TABLE
from ..errors import CapacityError
from ._end import _PipeReaderObject, _PipeWriterObject
from ._handles import PipeReader, PipeWriter
from ._kernel import PIPE_BUF, granted_capacity, max_capacity, socket_pair

__all__ = ["Pipe", "PipeReader", "PipeWriter", "CapacityError", "PIPE_BUF"]


class Pipe:
    """Makes pipes: ``reader, writer = Pipe.create()``. It has no instances."""

    PIPE_BUF: ClassVar[int] = PIPE_BUF

    def __init__(self) -> None:
        raise TypeError("use Pipe.create() to make a pipe")

    @staticmethod
    def create(capacity: int | None = None) -> tuple[PipeReader, PipeWriter]:
        """A new pipe: ``(reader, writer)`` handles with their default rights.

        ``capacity`` (bytes, see the module's notes) is rounded up to a
        multiple of 4 KiB, and to at least 12 KiB, the least that keeps
        writes of ``PIPE_BUF`` bytes atomic (see ``writer.capacity``).
        ``None`` gives 64 KiB, a Linux pipe's default. CapacityError for a
        capacity that is not positive or exceeds :meth:`max_capacity`.
        """
        granted = granted_capacity(capacity)
        r, w = socket_pair(granted)
        try:
            reader_obj = _PipeReaderObject(r)
            writer_obj = _PipeWriterObject(w)
        except BaseException:
            r.close()
            w.close()
            raise
        reader = HANDLE_TABLE.insert(reader_obj, _PipeReaderObject.DEFAULT_RIGHTS, PipeReader)
        writer = HANDLE_TABLE.insert(writer_obj, _PipeWriterObject.DEFAULT_RIGHTS, PipeWriter)
        return reader, writer

    @staticmethod
    def max_capacity() -> int:
        """The largest capacity :meth:`create` accepts: twice ``/proc/sys/net/core/wmem_max``."""
        return max_capacity()
