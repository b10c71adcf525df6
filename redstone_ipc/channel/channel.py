"""Channels (seed 4.3): two connected endpoints, each a port to the other.

>>> a, b = Channel.create_pair(capacity=16)     # a ChannelPair
>>> a.send(Message(1, b"ping"))
>>> bytes(b.recv())
b'ping'

The seed's ``Channel`` is "a pair of ports" and that is what it is here:
each endpoint receives on a door of its own (an inbox, as a port's) and
sends through the other's. Everything a port does holds in each direction:
shared-memory rings with no system call while both sides are awake,
priorities, capacity per direction, kernel-checked ``msg.sender``.

1:1
    Endpoints are transferable (attach one to a message: it moves) but not
    duplicable: DUPLICATE is never granted. Across ``fork`` the child
    inherits both endpoints, like a pipe: each process should close the one
    it does not use, or the other side will never see it go. An endpoint's
    receive side belongs to the first process that receives on it (or
    sends to it from the same process): so create the pair, fork, and let
    each process use its own endpoint.

Rights are the kernel's to enforce
    An endpoint moved without SEND carries no fd of the other endpoint's
    door: it cannot send, by any route. One moved without RECEIVE carries
    no fd of its own door nor its queue: it cannot read what was queued for
    it (those messages stay with the process that moved it, which drops
    them).

Closing
    When the last handle to an endpoint goes in every process — closed, or
    its process killed — the other endpoint first receives what was already
    queued, then gets PeerClosed; sending to it raises PeerClosed, and a
    sender waiting for room wakes with PeerClosed. A thread of *this*
    process blocked on an endpoint that this process closes wakes with
    InvalidHandle.

Transactions (``call``)
    Zircon's ``channel_call``: ``call(msg)`` stamps ``msg.txid`` with a fresh
    id, sends it and waits for the message with the same ``txid``. The
    server answers with ``reply(request, answer)`` (which copies the txid).
    Replies are set aside for their caller as they are read, so concurrent
    ``recv`` calls never take them; every other message, including late
    replies to calls that timed out, stays queued for ``recv``. A call
    raises a TimeoutError when its timeout runs out.

Serving
    ``serve(handler)`` (``serve_async`` for asyncio) is the server's loop:
    receive, call the handler, reply with what it returns, until the peer
    closes (``serve.py``).
"""

from __future__ import annotations

import itertools
import os
import socket
from time import monotonic as _now
from typing import NamedTuple, NoReturn

from ..core.object import HANDLE_TABLE, ObjectType, Rights
from ..core.timeout import seconds
from ..errors import InvalidHandle, PeerClosed, ProtocolError, QueueFull, SendTimedOut, TimedOut
from ..linux import cmsg
from ..message.message import Message
from ..port.handle import Mailbox, MailboxHandle
from ..port.owner import ReceiveSide, new_lock
from ..port.port import adopt_seqpacket, check_capacity, lock_valid, shut_for_reading
from ..sched.lock import relocked
from ..transport import layout as L
from . import serve as _serve
from .serve import AsyncHandler, Handler

__all__ = ["Channel", "ChannelPair", "ChannelEndpoint", "ENDPOINT_RIGHTS", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 16
ENDPOINT_RIGHTS = Rights.SEND | Rights.RECEIVE | Rights.TRANSFER | Rights.WAIT
"""Default (and most) rights of an endpoint handle: no DUPLICATE, ever."""

_U32 = 0xFFFF_FFFF
_CALL = Rights.SEND | Rights.RECEIVE
_txids = itertools.count(1)


def _next_txid() -> int:
    """A fresh transaction id: non-zero, unique among this process's calls in flight."""
    txid = next(_txids) & _U32
    return txid or _next_txid()


class _EndpointObject(Mailbox):
    TYPE = ObjectType.CHANNEL
    DEFAULT_RIGHTS = ENDPOINT_RIGHTS
    ALLOWED_RIGHTS = ENDPOINT_RIGHTS
    gone = PeerClosed
    gone_text = "the other endpoint of the channel is closed"

    @classmethod
    def _make(cls, capacity: int, peer_door: socket.socket | None,
              receive: ReceiveSide | None, door_key: int) -> _EndpointObject:
        obj = cls.__new__(cls)
        obj._init_mailbox(capacity, peer_door, L.slot_count(capacity), receive, door_key)
        return obj

    # -- transfer: with SEND the peer's door, with RECEIVE our own door's
    # receiving end and its owner lock --

    def transfer_fds(self, rights: Rights) -> list[int]:
        fds = []
        if rights & Rights.SEND:
            if self.send_door is None:
                raise InvalidHandle("this endpoint holds no way to send")
            fds.append(self.send_door.fileno())
        if rights & Rights.RECEIVE:
            receive = self.receive
            if receive is None or receive.lock_fd < 0:
                raise InvalidHandle("this process holds no receive side of the endpoint")
            fds += [receive.door.fileno(), receive.lock_fd]
        return fds

    def transfer_extra(self, rights: Rights) -> int:
        return self.capacity | self.door_key << 32

    def prepare_transfer(self, rights: Rights) -> None:
        if rights & Rights.RECEIVE and self.receive is not None:
            self.receive.check_can_leave()

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _EndpointObject:
        send = bool(rights & Rights.SEND)
        receive = bool(rights & Rights.RECEIVE)
        if len(fds) != send + 2 * receive:
            raise ProtocolError(f"a channel endpoint with these rights carries {send + 2 * receive} fds, got {len(fds)}")
        capacity, door_key = extra & _U32, extra >> 32
        if not 1 <= capacity <= 1 << 20:
            raise ProtocolError(f"bad channel capacity {capacity}")
        if receive and not lock_valid(fds[send + 1]):
            raise ProtocolError("a channel endpoint arrived without its owner lock")
        peer_door = rx = None
        try:
            if send:
                peer_door = adopt_seqpacket(fds[0], "a channel endpoint's way to its peer")
                if not shut_for_reading(fds[0]):
                    raise ProtocolError("a channel endpoint's sending door arrived able to receive")
            if receive:
                rx = adopt_seqpacket(fds[send], "a channel endpoint's door")
        except BaseException:
            for s in (peer_door, rx):
                if s is not None:
                    s.detach()
            raise
        side = (
            ReceiveSide(rx, fds[send + 1], capacity, PeerClosed, cls.gone_text) if rx else None
        )
        return cls._make(capacity, peer_door, side, door_key)

    def _destroy(self) -> None:
        if self.outlet is not None:
            self.outlet.close()  # our connection to the peer hangs up
        if self.send_door is not None:
            self.send_door.close()  # with the last copy, the peer sees the end
        receive = self.receive
        if receive is not None:
            for msg in receive.give_up():
                msg.close()
            receive.close()


class ChannelEndpoint(MailboxHandle):
    """One end of a channel: send to, and receive from, the other end.

    Every method checks the handle first (InvalidHandle if it was closed or
    moved away; PermissionDenied without SEND or RECEIVE as needed).

    ``capacity``, ``send``, ``send_async``, ``loan``, ``try_recv``, ``recv``
    and ``recv_async`` come from :class:`MailboxHandle`. On a channel,
    ``capacity`` bounds each direction, ``msg.txid`` travels with the
    message, and "the other side is gone" is PeerClosed: sending to a
    closed peer raises it, receiving raises it once everything the peer
    queued has been received.
    """

    __slots__ = ()

    @property
    def peer_closed(self) -> bool:
        """Whether the other endpoint is gone (queued messages may still be read)."""
        obj: _EndpointObject = self._live()
        door = obj.send_door
        if door is None:
            return False
        import select

        p = select.poll()
        p.register(door.fileno(), 0)
        events = p.poll(0)
        return bool(events and events[0][1] & select.POLLHUP)

    # -- transactions ---------------------------------------------------------------

    def call(self, msg: Message, timeout: float | None = None) -> Message:
        """Send ``msg`` as a request and return the reply carrying its txid.

        Needs SEND and RECEIVE. ``timeout`` (None, the default: for ever)
        bounds the whole call; when it runs out the call raises a
        ``TimeoutError``: SendTimedOut if the request could not be queued,
        TimedOut if the reply did not come. PeerClosed if the peer went away
        without replying. Messages that are not this call's reply stay
        queued for ``recv``.
        """
        obj: _EndpointObject = self._require(_CALL)
        timeout = seconds(timeout)
        inbox = obj.get_inbox()
        txid = _start_call(inbox, msg)
        try:
            deadline = None if timeout is None else _now() + timeout
            try:
                obj.get_outlet().send(msg, 0, timeout, self)
            except QueueFull as e:
                _raise_send_timed_out(e, timeout)
            remaining = None if deadline is None else max(0.0, deadline - _now())
            return inbox.recv(remaining, txid, TimedOut)
        finally:
            _end_call(inbox, txid)

    async def call_async(self, msg: Message, timeout: float | None = None) -> Message:
        """``call`` for asyncio: same ``timeout`` (default None), same exceptions."""
        obj: _EndpointObject = self._require(_CALL)
        timeout = seconds(timeout)
        inbox = obj.get_inbox()
        txid = _start_call(inbox, msg)
        try:
            deadline = None if timeout is None else _now() + timeout
            try:
                await obj.get_outlet().send_async(msg, 0, timeout, self)
            except QueueFull as e:
                _raise_send_timed_out(e, timeout)
            remaining = None if deadline is None else max(0.0, deadline - _now())
            return await inbox.recv_async(remaining, txid, TimedOut)
        finally:
            _end_call(inbox, txid)

    def reply(self, request: Message, answer: Message, *, timeout: float | None = None) -> None:
        """Send ``answer`` as the reply to ``request`` (a received ``call``):
        it carries the request's txid, so the caller's ``call`` returns it.

        ``send``'s waiting rules: ``timeout`` None (the default) waits for
        room for ever; SendTimedOut when it runs out.
        """
        answer.txid = request.txid
        self.send(answer, timeout=timeout)

    async def reply_async(self, request: Message, answer: Message, *,
                          timeout: float | None = None) -> None:
        """``reply`` for asyncio: same ``timeout`` (default None), same exceptions."""
        answer.txid = request.txid
        await self.send_async(answer, timeout=timeout)

    # -- serving --------------------------------------------------------------------

    def serve(self, handler: Handler) -> None:
        """Answer requests until the peer closes: the loop of a channel server.

        ``handler(request)`` is called for each message received, one at a
        time; a Message it returns is sent back as the reply (so the peer's
        ``call`` returns it), None sends nothing. Each request is closed
        after its handler: ``request.take(kind)`` the handles to keep.
        Returns when the peer is gone (after serving what it queued) or when
        this endpoint is closed in this process (from another thread: how a
        server is stopped); an exception from ``handler`` ends the loop and
        propagates. ``redstone_ipc/channel/serve.py`` has the details.

        >>> server.serve(lambda request: Message(2, bytes(request).upper()))
        """
        _serve.serve(self, handler)

    async def serve_async(self, handler: AsyncHandler) -> None:
        """:meth:`serve` for asyncio: ``handler`` may be a coroutine function.

        One request at a time; cancel the task (or close the endpoint) to
        stop it.
        """
        await _serve.serve_async(self, handler)


def _raise_send_timed_out(e: QueueFull, timeout: float | None) -> NoReturn:
    """A call's request found no room: SendTimedOut, at ``timeout=0`` too."""
    if timeout != 0 or e.__class__ is not QueueFull:
        raise e
    raise SendTimedOut(f"{e} (timeout=0)") from None


def _start_call(inbox: object, msg: Message) -> int:
    txid = _next_txid()
    with inbox.mutex:  # type: ignore[attr-defined]
        inbox.pending.add(txid)  # type: ignore[attr-defined]  # before sending: the reply must never reach the queue
    msg.txid = txid
    return txid


def _end_call(inbox: object, txid: int) -> None:
    # In call's finally: a signal handler's exception while this waits for the
    # mutex must not leave txid pending (its reply would be set aside for ever);
    # it is raised once the call is ended.
    with relocked(inbox.mutex):  # type: ignore[attr-defined]
        inbox.pending.discard(txid)  # type: ignore[attr-defined]
        late = inbox.replies.pop(txid, None)  # type: ignore[attr-defined]
        if late is not None:  # it came after we gave up: an ordinary message now
            inbox.queue.put(late[0].priority, late)  # type: ignore[attr-defined]


_EndpointObject.HANDLE_CLASS = ChannelEndpoint


class ChannelPair(NamedTuple):
    """The two endpoints of a new channel (``a, b = Channel.create_pair()``)."""

    endpoint0: ChannelEndpoint
    endpoint1: ChannelEndpoint


class Channel:
    """Makes channels (the seed's ``Channel``)."""

    @staticmethod
    def create_pair(capacity: int = DEFAULT_CAPACITY) -> ChannelPair:
        """Two connected endpoints; each direction queues at most ``capacity`` messages."""
        check_capacity(capacity)
        socks: list[socket.socket] = []
        locks: list[int] = []
        try:
            for _ in range(2):
                rx, tx = cmsg.seqpacket_pair()
                socks += [rx, tx]
                tx.shutdown(socket.SHUT_RD)
                tx.setblocking(False)
                locks.append(new_lock())
        except BaseException:
            for s in socks:
                s.close()
            cmsg.close_fds(locks)
            raise
        rx0, tx0, rx1, tx1 = socks  # door 0 is endpoint 0's own: endpoint 1 sends through tx0
        side0 = ReceiveSide(rx0, locks[0], capacity, PeerClosed, _EndpointObject.gone_text)
        side1 = ReceiveSide(rx1, locks[1], capacity, PeerClosed, _EndpointObject.gone_text)
        e0 = _EndpointObject._make(capacity, tx1, side0, os.fstat(tx0.fileno()).st_ino)
        e1 = _EndpointObject._make(capacity, tx0, side1, os.fstat(tx1.fileno()).st_ino)
        return ChannelPair(
            HANDLE_TABLE.insert(e0, ENDPOINT_RIGHTS, ChannelEndpoint),
            HANDLE_TABLE.insert(e1, ENDPOINT_RIGHTS, ChannelEndpoint),
        )
