"""What a port handle and a channel endpoint share: sending and receiving.

:class:`MailboxHandle` is the handle side of a :class:`Mailbox` (the kernel
object of a port or endpoint): every method checks the handle (validity,
then the right it needs) and hands the call to the object's ``Outlet``
(sending, ``outlet.py``) or ``Inbox`` (receiving, ``inbox.py``). ``Port``
and ``ChannelEndpoint`` add what differs — ids, status, closing, calls —
and say which error "the other side is gone" raises: PortClosed for a port
(its receiver closed it or died), PeerClosed for a channel.

Time, the package's one rule (``core/timeout.py``): ``timeout=None`` waits
as long as it takes, a number of seconds bounds the wait, ``0`` (or less)
only tries. When the time runs out, ``0`` included, a send raises
SendTimedOut (a ``TimeoutError``, and a QueueFull: a ``queue.Full``) and a
receive ReceiveTimedOut (a ``TimeoutError``, and an Empty: a
``queue.Empty``). ``try_recv()`` is the one call that raises a plain Empty,
as ``queue.Queue.get_nowait`` does. The async forms take the same argument,
with the same default, and raise the same exceptions.

Hot path: ``send`` and ``recv`` test the right with plain int arithmetic
(``_has``) and fall back to ``Handle._require`` only to raise; IntFlag's
operators would cost ten times more per call.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from ..core.object import Handle, KernelObject, Rights
from ..core.timeout import seconds
from ..errors import Empty, InvalidHandle, IpcError, QueueFull, ReceiveTimedOut, SendTimedOut
from ..message.message import Message
from ..transport.loan import Loan
from .inbox import Inbox
from .outlet import LOCAL_INBOXES, Outlet
from .owner import ReceiveSide

__all__ = ["Mailbox", "MailboxHandle"]

_MAKING = threading.Lock()
_SEND = int(Rights.SEND)
_RECEIVE = int(Rights.RECEIVE)
_has = int.__and__


class Mailbox(KernelObject):
    """The kernel object behind a port handle or a channel endpoint, in one
    process: an outlet (to the door it sends to) and a receive side (its own
    door), either of which may be absent."""

    gone: ClassVar[type[IpcError]]
    gone_text: ClassVar[str]

    def _init_mailbox(self, capacity: int, send_door: Any, nslots: int,
                      receive: ReceiveSide | None, door_key: int) -> None:
        KernelObject.__init__(self)
        self.capacity = capacity
        self.send_door = send_door  # socket: the door this object sends to, or None
        self.nslots = nslots
        self.outlet: Outlet | None = None
        self.receive = receive
        self.door_key = door_key  # inode of our own door's sending end
        if receive is not None:
            LOCAL_INBOXES[door_key] = self

    # -- the two sides -------------------------------------------------------------

    def get_outlet(self) -> Outlet:
        outlet = self.outlet
        if outlet is None:
            with _MAKING:  # two threads' first sends must share one outlet
                outlet = self.outlet
                if outlet is None:
                    if self.send_door is None:
                        raise InvalidHandle("this endpoint cannot send (it arrived without SEND)")
                    if self._destroyed:
                        raise InvalidHandle("the handle was closed in this process while in use")
                    outlet = Outlet(self.send_door, self.nslots, self.gone, self.gone_text)
                    self.outlet = outlet
        return outlet

    def get_inbox(self) -> Inbox:
        receive = self.receive
        if receive is None:
            raise InvalidHandle("this handle cannot receive in this process")
        inbox = receive.inbox
        return inbox if inbox is not None else receive.activate()

    def local_inbox(self) -> Inbox | None:
        """For a sender of this process: the inbox, if it may live here."""
        receive = self.receive
        if receive is None or self._destroyed:
            return None
        return receive.inbox or receive.try_activate()

    def _on_handle_closed(self) -> None:
        if self.outlet is not None:
            self.outlet.kick_waiters()


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

    # -- sending (needs SEND) ------------------------------------------------

    def send(self, msg: Message, *, priority: int = 0, timeout: float | None = None) -> None:
        """Queue ``msg`` with ``priority`` (an i32; higher is received first).

        Waits for room as long as ``timeout`` allows: None (the default) for
        ever, a number of seconds at most, 0 not at all. When the time runs
        out (0 included), SendTimedOut: a ``TimeoutError``, and a QueueFull
        (a ``queue.Full``). PortClosed / PeerClosed if the other side is
        gone. On success the message's handles have moved to the receiver;
        on any error they are all still valid here.
        """
        obj: Any = self._object
        if obj is None or not _has(self._rights, _SEND):
            obj = self._require(Rights.SEND)
        if msg.handles:
            _refuse_self_transfer(obj, msg)
        outlet = obj.outlet or obj.get_outlet()
        if timeout is None:
            outlet.send(msg, priority, None, self)
            return
        timeout = seconds(timeout)
        try:
            outlet.send(msg, priority, timeout, self)
        except QueueFull as e:
            if timeout != 0 or e.__class__ is not QueueFull:
                raise
            raise _send_timed_out(e) from None

    async def send_async(self, msg: Message, *, priority: int = 0,
                         timeout: float | None = None) -> None:
        """``send`` for asyncio: waits for room in the event loop, no thread.

        Same ``timeout`` (default None: for ever), same exceptions.
        """
        obj: Mailbox = self._require(Rights.SEND)
        if msg.handles:
            _refuse_self_transfer(obj, msg)
        timeout = seconds(timeout)
        try:
            await obj.get_outlet().send_async(msg, priority, timeout, self)
        except QueueFull as e:
            if timeout != 0 or e.__class__ is not QueueFull:
                raise
            raise _send_timed_out(e) from None

    def loan(self, size: int, *, timeout: float | None = None) -> Loan:
        """``size`` writable bytes of shared memory to build a payload in, then
        send with ``Message(msg_type, loan)``: the receiver reads these very
        pages (zero copy). See :class:`~redstone_ipc.transport.loan.Loan`.

        A loan takes room in this sender's data segments (not a place in the
        queue: the send takes that). While they are full of payloads the
        receiver keeps, it waits as ``send`` does: ``timeout`` None (the
        default) for ever, seconds at most, 0 not at all; then SendTimedOut.
        """
        obj: Mailbox = self._require(Rights.SEND)
        outlet = obj.get_outlet()
        if timeout is None:
            return outlet.loan(size, None, self)
        timeout = seconds(timeout)
        try:
            return outlet.loan(size, timeout, self)
        except QueueFull as e:
            if timeout != 0 or e.__class__ is not QueueFull:
                raise
            raise _send_timed_out(e) from None

    # -- receiving (needs RECEIVE) -------------------------------------------

    def try_recv(self) -> Message:
        """The next message (highest priority, then oldest), or Empty at once.

        ``queue.Queue.get_nowait``'s twin: the plain Empty says "nothing
        queued" without the TimeoutError that ``recv(timeout=0)`` raises.
        """
        obj: Any = self._object
        if obj is None or not _has(self._rights, _RECEIVE):
            obj = self._require(Rights.RECEIVE)
        inbox = obj.receive.inbox if obj.receive is not None else None
        return (inbox or obj.get_inbox()).try_recv()

    def recv(self, timeout: float | None = None) -> Message:
        """The next message (highest priority, then oldest), sleeping until one comes.

        ``timeout``: None (the default) waits for ever, a number of seconds
        at most that long, 0 does not wait. When the time runs out (0
        included), ReceiveTimedOut: a ``TimeoutError``, and an Empty (a
        ``queue.Empty``). ``msg.sender`` names the sending process, as the
        kernel saw it.
        """
        obj: Any = self._object
        if obj is None or not _has(self._rights, _RECEIVE):
            obj = self._require(Rights.RECEIVE)
        receive = obj.receive
        inbox = receive.inbox if receive is not None else None
        if timeout is not None:
            timeout = seconds(timeout)
            if timeout == 0:
                try:
                    return (inbox or obj.get_inbox()).recv(0)
                except Empty as e:
                    if e.__class__ is not Empty:
                        raise
                    raise _receive_timed_out(e) from None
        return (inbox or obj.get_inbox()).recv(timeout)

    async def recv_async(self, timeout: float | None = None) -> Message:
        """``recv`` for asyncio: the event loop watches the connections, no thread.

        Same ``timeout`` (default None: for ever), same exceptions.
        """
        obj: Mailbox = self._require(Rights.RECEIVE)
        timeout = seconds(timeout)
        try:
            return await obj.get_inbox().recv_async(timeout)
        except Empty as e:
            if timeout != 0 or e.__class__ is not Empty:
                raise
            raise _receive_timed_out(e) from None


def _receive_timed_out(e: Empty) -> ReceiveTimedOut:
    """What a receive raises at ``timeout=0`` (the inbox says Empty there,
    as ``try_recv`` does): a TimeoutError like any other that runs out."""
    return ReceiveTimedOut(f"{e} (timeout=0)")


def _send_timed_out(e: QueueFull) -> SendTimedOut:
    """What a send raises at ``timeout=0`` instead of the outlet's QueueFull."""
    return SendTimedOut(f"{e} (timeout=0)")


def _refuse_self_transfer(obj: KernelObject, msg: Message) -> None:
    # Zircon refuses to write a channel into itself; so do we (it would also
    # destroy this object in the middle of sending on it).
    for handle in msg.handles:
        if handle._object is obj:
            raise ValueError("a handle cannot be sent through its own port or endpoint")

