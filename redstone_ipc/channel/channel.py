"""Channels (seed 4.3): two connected endpoints, each a port to the other.

>>> a, b = Channel.create_pair(capacity=16)     # a ChannelPair
>>> a.send(Message(1, b"ping"))                 # timeout=0: QueueFull when full
>>> b.recv().payload
b'ping'

The seed's ``Channel::create_pair`` is ``unimplemented!()`` and its endpoints
hold raw pointers to two ports; here a channel is one ``AF_UNIX
SOCK_SEQPACKET`` socketpair, one end per endpoint, and each direction has its
own capacity (an ``EFD_SEMAPHORE`` eventfd of credits: the sender takes, the
receiving endpoint gives back). Send, ``try_recv`` and ``recv`` behave as on a
port: priorities, FIFO within a priority, kernel-checked ``msg.sender``,
payloads above ``max_record`` carried out of line in a sealed memfd.

1:1
    Endpoints are transferable (attach one to a message: it moves) but not
    duplicable: DUPLICATE is never granted. Across ``fork`` the child inherits
    both endpoints, like a pipe: each process should close the one it does
    not use, or the other side will never see it go.

Closing
    When the last handle to an endpoint goes in every process — closed, or
    its process killed — the other endpoint first receives what was already
    queued, then gets PeerClosed; sending to it raises PeerClosed at once,
    and a sender sleeping for room wakes with PeerClosed (POLLHUP). A thread
    of *this* process blocked on an endpoint that this process closes wakes
    with InvalidHandle.

Transactions (``call``)
    Zircon's ``channel_call``: ``call(msg)`` stamps ``msg.txid`` with a fresh
    id (a per-process counter, never 0), sends it and waits for the message
    whose ``txid`` is the same: the server answers by sending a message with
    ``reply.txid = request.txid`` (echoing the request object works too).
    Replies are set aside for their caller as they are drained from the
    socket, so concurrent ``recv`` calls (other threads, coroutines) never
    take them, while every other message, including late replies to calls
    that timed out, stays queued for ``recv``. A call times out with
    TimedOut; QueueFull if there was no room to send the request in time.

Rights (default for a new endpoint): SEND | RECEIVE | TRANSFER | WAIT.
Within a process the API enforces them. When an endpoint is transferred
with SEND or RECEIVE removed (``ep.replace(...)`` first), its socket is shut
down in that direction before it leaves, so the kernel enforces the missing
right from then on (and the peer sees that direction end).

Channels have no crash repair of credits (``port/credits.py``): a direction
has exactly one sending endpoint, and a killed sender closes the channel.
"""

from __future__ import annotations

import itertools
import os
import socket
from time import monotonic as _now
from typing import NamedTuple

from ..core.object import HANDLE_TABLE, ObjectType, Rights
from ..errors import PeerClosed, ProtocolError, TimedOut
from ..linux import cmsg, eventfd
from ..message.message import Message
from ..port import sizing
from ..port.handle import MailboxHandle
from ..port.mailbox import Mailbox, adopt_seqpacket
from ..sched.lock import relocked

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
    _gone_exc = PeerClosed
    _gone_text = "the other endpoint of the channel is closed"

    @classmethod
    def _make(cls, sock: socket.socket, out_fd: int, in_fd: int, capacity: int,
              sizes: sizing.Plan) -> _EndpointObject:
        obj = cls.__new__(cls)
        obj._init_mailbox(
            tx=sock, out_fd=out_fd, capacity=capacity, sizes=sizes, rx=sock, in_fd=in_fd
        )
        return obj

    # -- transfer: the socket end, then the credits it takes, then those it gives --

    def transfer_fds(self, rights: Rights) -> list[int]:
        return [self._txfd, self._out, self._in]

    def transfer_extra(self, rights: Rights) -> int:
        return self._capacity | self._max_record << 32

    def prepare_transfer(self, rights: Rights) -> None:
        self._refuse_transfer_if_buffered()
        try:  # let the kernel enforce a right the moving handle does not hold
            if not rights & Rights.SEND:
                self._tx.shutdown(socket.SHUT_WR)
            if not rights & Rights.RECEIVE:
                self._tx.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        if not rights & Rights.RECEIVE:
            # SHUT_RD stops new records but leaves the queued ones readable
            # through the fd: nobody may receive them any more, so they go
            # now (their handles closed) rather than travel with the fd.
            self._discard_queued()

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _EndpointObject:
        if len(fds) != 3:
            raise ProtocolError(f"a channel endpoint carries 3 fds, got {len(fds)}")
        capacity, max_record = extra & _U32, extra >> 32
        if capacity < 1 or max_record not in sizing.CANDIDATES:
            raise ProtocolError(
                f"bad channel sizes: capacity {capacity}, max_record {max_record}"
            )
        sock_fd, out_fd, in_fd = fds
        if not (eventfd.adopt(out_fd) and eventfd.adopt(in_fd)):
            raise ProtocolError("a channel endpoint arrived without its two eventfds")
        sock = adopt_seqpacket(sock_fd, "a channel endpoint")
        sizes = sizing.Plan(max_record, 0, max(max_record, sizing.RECV_FLOOR))
        return cls._make(sock, out_fd, in_fd, capacity, sizes)


class ChannelEndpoint(MailboxHandle):
    """One end of a channel: send to, and receive from, the other end.

    Every method checks the handle first (InvalidHandle if it was closed or
    moved away; PermissionDenied without SEND or RECEIVE as needed).

    ``capacity``, ``max_record``, ``send``, ``send_async``, ``try_recv``,
    ``recv`` and ``recv_async`` come from :class:`MailboxHandle`. On a
    channel, ``capacity`` bounds each direction, ``msg.txid`` travels with
    the message, and "the other side is gone" is PeerClosed: sending to a
    closed peer raises it at once, receiving raises it once everything the
    peer queued has been received.
    """

    __slots__ = ()

    @property
    def peer_closed(self) -> bool:
        """Whether the other endpoint is gone (queued messages may still be read)."""
        obj: _EndpointObject = self._live()
        return obj._peer_gone()

    # -- transactions ---------------------------------------------------------------

    def call(self, msg: Message, timeout: float | None = None) -> Message:
        """Send ``msg`` as a request and return the reply carrying its txid.

        Needs SEND and RECEIVE. ``timeout`` bounds the whole call: QueueFull
        if the request could not be queued in time, TimedOut if the reply did
        not come; PeerClosed if the peer went away without replying.
        """
        obj: _EndpointObject = self._require(_CALL)
        txid = _start_call(obj, msg)
        try:
            deadline = None if timeout is None else _now() + timeout
            obj.send(msg, 0, timeout)
            remaining = None if deadline is None else max(0.0, deadline - _now())
            return obj.recv(remaining, txid, TimedOut)
        finally:
            _end_call(obj, txid)

    async def call_async(self, msg: Message, timeout: float | None = None) -> Message:
        """``call`` for asyncio."""
        obj: _EndpointObject = self._require(_CALL)
        txid = _start_call(obj, msg)
        try:
            deadline = None if timeout is None else _now() + timeout
            await obj.send_async(msg, 0, timeout)
            remaining = None if deadline is None else max(0.0, deadline - _now())
            return await obj.recv_async(remaining, txid, TimedOut)
        finally:
            _end_call(obj, txid)


def _start_call(obj: _EndpointObject, msg: Message) -> int:
    txid = _next_txid()
    with obj._mutex:
        obj._pending.add(txid)  # before sending: the reply must never reach the heap
    msg.txid = txid
    return txid


def _end_call(obj: _EndpointObject, txid: int) -> None:
    # In call's finally: a signal handler's exception while this waits for the
    # mutex must not leave txid pending (its reply would be set aside for ever,
    # and the endpoint could never move); it is raised once the call is ended.
    with relocked(obj._mutex):
        obj._pending.discard(txid)
        late = obj._replies.pop(txid, None)
        if late is not None:  # it came after we gave up: an ordinary message now
            obj._requeue_locked(late)


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
        sizes = sizing.plan(capacity)  # ValueError for a bad capacity
        a, b = cmsg.seqpacket_pair()
        fds: list[int] = []
        try:
            for s in (a, b):
                sizing.apply(s, sizes)
            fds.append(eventfd.semaphore(capacity))  # room for a -> b
            fds.append(eventfd.semaphore(capacity))  # room for b -> a
            fds.append(os.dup(fds[1]))  # each endpoint owns its fds: b's copies
            fds.append(os.dup(fds[0]))
        except BaseException:
            a.close()
            b.close()
            cmsg.close_fds(fds)
            raise
        e0 = _EndpointObject._make(a, fds[0], fds[1], capacity, sizes)
        e1 = _EndpointObject._make(b, fds[2], fds[3], capacity, sizes)
        return ChannelPair(
            HANDLE_TABLE.insert(e0, ENDPOINT_RIGHTS, ChannelEndpoint),
            HANDLE_TABLE.insert(e1, ENDPOINT_RIGHTS, ChannelEndpoint),
        )
