"""What a port handle and a channel endpoint share: sending and receiving.

:class:`MailboxHandle` is the handle side of ``mailbox.py``: every method
checks the handle (validity, then the right it needs) and hands the call to
the :class:`~redstone_ipc.port.mailbox.Mailbox` behind it. ``Port`` and
``ChannelEndpoint`` add what differs — ids, status, closing, calls — and say
which error "the other side is gone" raises: PortClosed for a port (its
receiver closed it or died), PeerClosed for a channel (the other endpoint
went). Below, *closed* means that error.

Hot path: ``send``, ``try_recv`` and ``recv`` test the right with plain int
arithmetic (``_has``) and fall back to ``Handle._require`` only to raise;
IntFlag's operators would cost ten times more per call.
"""

from __future__ import annotations

from typing import Any

from ..core.object import Handle, Rights
from ..message.message import Message
from .mailbox import Mailbox

__all__ = ["MailboxHandle"]

_SEND = int(Rights.SEND)
_RECEIVE = int(Rights.RECEIVE)
_has = int.__and__  # rights checks on the hot path without IntFlag's Python-level operators


class MailboxHandle(Handle):
    """A handle to a Mailbox: a port, or one endpoint of a channel.

    Sending needs SEND, receiving RECEIVE; every method first raises
    InvalidHandle if the handle was closed or moved away, PermissionDenied
    without the right it needs.
    """

    __slots__ = ()

    @property
    def capacity(self) -> int:
        """How many messages the queue holds at most: across every sender of a
        port; in each direction of a channel."""
        obj: Mailbox = self._live()
        return obj.capacity

    @property
    def max_record(self) -> int:
        """Records above this many bytes carry their payload in a memfd."""
        obj: Mailbox = self._live()
        return obj.max_record

    # -- sending (needs SEND) ------------------------------------------------

    def send(self, msg: Message, *, priority: int = 0, timeout: float | None = 0) -> None:
        """Queue ``msg`` with ``priority`` (an i32; higher is received first).

        ``timeout=0`` (the seed's send): QueueFull at once if the queue holds
        ``capacity`` messages. ``None``: sleep until there is room. A number:
        sleep at most that long, then QueueFull. Closed (PortClosed,
        PeerClosed) if the other side is gone. On success the message's
        handles (and ``msg.txid``) have moved to the receiver; on any error
        the handles are all still valid here.
        """
        obj: Any = self._object
        if obj is None or not _has(self._rights, _SEND):
            obj = self._require(Rights.SEND)
        state = obj._try_send(msg, priority)
        if state:
            obj._send_slow(msg, priority, timeout, state)

    async def send_async(
        self, msg: Message, *, priority: int = 0, timeout: float | None = None
    ) -> None:
        """``send`` for asyncio: waits for room in the event loop (default: no limit)."""
        obj: Mailbox = self._require(Rights.SEND)
        await obj.send_async(msg, priority, timeout)

    # -- receiving (needs RECEIVE) -------------------------------------------

    def try_recv(self) -> Message:
        """The next message (highest priority, then oldest), or Empty at once.

        Closed once the other side is gone: at once for a port (closing it
        drops the queue); for a channel, after everything the peer queued.
        """
        obj: Any = self._object
        if obj is None or not _has(self._rights, _RECEIVE):
            obj = self._require(Rights.RECEIVE)
        return obj.try_recv()

    def recv(self, timeout: float | None = None) -> Message:
        """The next message, sleeping in the kernel until one comes.

        Empty after ``timeout`` seconds (None: no limit); closed as for
        ``try_recv``. ``msg.sender`` names the sending process, as the kernel
        saw it.
        """
        obj: Any = self._object
        if obj is None or not _has(self._rights, _RECEIVE):
            obj = self._require(Rights.RECEIVE)
        return obj.recv(timeout)

    async def recv_async(self, timeout: float | None = None) -> Message:
        """``recv`` for asyncio: the event loop watches the socket, no thread."""
        obj: Mailbox = self._require(Rights.RECEIVE)
        return await obj.recv_async(timeout)
