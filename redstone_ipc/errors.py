"""The exception hierarchy: the seed's error enums, as exception classes.

Every error redstone-ipc raises on purpose derives from :class:`IpcError`.
Classes also subclass the builtin that best describes them, so code written
against the standard library keeps working (``except TimeoutError`` catches
:class:`TimedOut`, ``except PermissionError`` catches :class:`PermissionDenied`).
"""

from __future__ import annotations

import errno
import queue

__all__ = [
    "IpcError",
    "PortClosed",
    "QueueFull",
    "Empty",
    "ReceiveTimedOut",
    "SendTimedOut",
    "OutOfFds",
    "InvalidHandle",
    "PermissionDenied",
    "PeerClosed",
    "MessageTooLarge",
    "ProtocolError",
    "CapacityError",
    "ShmError",
    "OutOfMemory",
    "InvalidAddress",
    "NotMapped",
    "MappingInUse",
    "FutexError",
    "WouldBlock",
    "TimedOut",
    "NameNotFound",
    "NameInUse",
    "ConnectTimedOut",
]


class IpcError(Exception):
    """Base class of every error raised by redstone-ipc."""


# -- seed: ipc::port::IpcError ------------------------------------------------


class PortClosed(IpcError):
    """The port was closed (by its receiver, or because the receiver died)."""


class QueueFull(IpcError, queue.Full):
    """No room for the message. A send whose timeout runs out (``0``
    included) raises its subclass SendTimedOut, also a TimeoutError.

    Also a ``queue.Full``, so code written for ``queue.Queue`` keeps working.
    """


class Empty(IpcError, queue.Empty):
    """No message is queued: ``try_recv`` raises it at once. A ``recv`` whose
    timeout runs out (``0`` included) raises its subclass ReceiveTimedOut,
    also a TimeoutError. Also a ``queue.Empty``."""


class InvalidHandle(IpcError, ValueError):
    """The handle is closed, was moved to another process, or never existed."""


class PermissionDenied(IpcError, PermissionError):
    """The handle lacks the right that the operation needs."""


class PeerClosed(IpcError, ConnectionError):
    """The other end of a channel or pipe is gone."""


class MessageTooLarge(IpcError, ValueError):
    """A message exceeds what the transport can carry."""


class ProtocolError(IpcError):
    """A record on the wire is malformed; whatever arrived with it was closed."""


class CapacityError(IpcError, ValueError):
    """The kernel will not give a queue that capacity (beyond the system limit)."""


# -- seed: ipc::shm::ShmError -------------------------------------------------


class ShmError(IpcError):
    """Base class of shared-memory errors."""


class OutOfMemory(ShmError, MemoryError):
    """The kernel refused to allocate the pages."""


class NotMapped(ShmError):
    """The mapping was already unmapped."""


class MappingInUse(ShmError, BufferError):
    """The mapping cannot be unmapped yet: something still uses its memory.

    The message names what the library can see: its own objects still open
    on the mapping ("a Semaphore at offset 64", a FutexWord, a WaitQueue;
    close them), threads asleep in ``Futex.wait`` on a word of it (wake them);
    failing those, views of yours (memoryview, numpy arrays, ctypes objects;
    release them). A ``BufferError``, as mmap's own refusal is.
    """


# -- seed: ipc::futex::FutexError ---------------------------------------------


class FutexError(IpcError):
    """Base class of futex and wait errors."""


class InvalidAddress(ShmError, FutexError, ValueError):
    """An offset is misaligned, out of range, or not in a usable mapping.

    One class serves both the seed's ``ShmError::InvalidAddress`` and
    ``FutexError::InvalidAddress``; it is a subclass of both.
    """


class WouldBlock(FutexError, BlockingIOError):
    """The futex word did not hold the expected value: no sleep happened."""


class TimedOut(FutexError, TimeoutError):
    """A wait ran out of time: a ``TimeoutError``.

    The package's one rule for time: every blocking call takes
    ``timeout=None`` (wait for ever; the default, in sync and async forms
    alike) or a number of seconds (0 or less: only try). When the time runs
    out, ``0`` included, the call raises TimedOut or a subclass that also
    names what did not happen (ReceiveTimedOut, SendTimedOut,
    ConnectTimedOut). The exceptions: the calls whose ``threading`` twin
    returns False (``Mutex.acquire``, ``Semaphore.acquire``, ``Event.wait``,
    ``Condition.wait``) return False too, and a pipe ``write`` that got some
    bytes out returns their count.
    """


class ReceiveTimedOut(TimedOut, Empty):
    """``recv(timeout=...)`` ran out of time (``0`` included): a TimeoutError,
    and also an Empty (a ``queue.Empty``) for code that treats it as an
    empty queue."""


class SendTimedOut(TimedOut, QueueFull):
    """``send(timeout=...)`` found no room in time (``0`` included): a
    TimeoutError, and also a QueueFull (a ``queue.Full``)."""


class OutOfFds(IpcError, OSError):
    """The process has no free file descriptor (EMFILE) for what arrived.

    Nothing was lost: a message whose handles cannot be received yet stays
    queued; close fds (or raise RLIMIT_NOFILE) and receive again.
    """

    def __init__(self, needed: int, what: str = "a queued message's handles") -> None:
        self.needed = needed
        super().__init__(
            errno.EMFILE,
            f"EMFILE: no room for the {needed} fds of {what} (the process is at its "
            "RLIMIT_NOFILE); close fds or raise the limit, then receive again: "
            "nothing was lost",
        )



# -- names: publish / connect -------------------------------------------------


class NameNotFound(IpcError, FileNotFoundError):
    """Nobody publishes that name. ``connect`` raises its subclass
    ConnectTimedOut (also a ``TimeoutError``) when its timeout runs out."""


class NameInUse(IpcError, FileExistsError):
    """A live process already publishes that name."""


class ConnectTimedOut(TimedOut, NameNotFound):
    """``connect(name, timeout=...)``: nobody published ``name`` in time
    (``0`` included). A TimeoutError, and a NameNotFound (a
    ``FileNotFoundError``), which is what it was before it was both."""
