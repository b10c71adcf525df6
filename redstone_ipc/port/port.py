"""Ports (seed 4.2): a mailbox with one receiver and any number of senders.

>>> port = Port(capacity=16)                       # the RECEIVE handle
>>> client = port.duplicate(SEND_RIGHTS)           # a SEND right to hand out
>>> client.send(Message(1, b"hello"), priority=5)  # timeout=0: QueueFull when full
>>> msg = port.recv()                              # sleeps in the kernel
>>> msg.payload, msg.priority, msg.sender.pid

SEND rights reach other processes attached to messages, by inheritance across
``fork``, and (later) by name. A process that holds only SEND rights holds no
fd that can read the queue: the kernel, not this library, keeps it from
receiving (``rights.py``).

How it maps to Linux
--------------------
* the queue is one ``AF_UNIX SOCK_SEQPACKET`` socketpair: the receiver keeps
  one end (*rx*); every SEND right is a dup of the other end (*tx*), shut for
  reading. One ``sendmsg`` is one record: never split, never interleaved with
  another sender's, each sender's records in its order, the sender's pid,
  uid and gid attached by the kernel (``SCM_CREDENTIALS``);
* **capacity** (in messages, across every process) is an ``EFD_SEMAPHORE``
  eventfd of credits, kept exact even when senders are SIGKILLed at any
  instant by the window lock and repairs described in ``credits.py``;
* **priorities**: the receiver drains the socket into a heap ordered by
  ``(-priority, arrival)`` (``mailbox.py``);
* **close()** by the receiver shuts the socket down: every sleeper wakes —
  receiving threads here, senders in every process (POLLHUP, then EPIPE) —
  and gets PortClosed; queued messages are dropped and their handles closed.
  A receiver that dies closes the port the same way (the kernel closes rx);
* **PortId** is the inode of the tx socket: the same number in every process
  holding the port, unique among live sockets of the system;
* **large messages**: records stay at most ``max_record`` bytes (64 KiB where
  the system allows, see ``sizing.py``), so ``capacity`` records always fit
  the socket's send buffer and capacity stays exact; a payload that does not
  fit travels in a sealed memfd that the receiver maps (``message.wire``),
  so a multi-MiB message costs one copy on the sending side and none on the
  receiving side.

Receiving stays in one process. ``close()`` on a RECEIVE handle closes the
port for everyone; to drop a RECEIVE handle without closing the port (a
forked child inherits its parent's), call ``release()``. A process left
without any RECEIVE handle also closes its copy of the receiving end, so
that a receiver elsewhere that dies closes the port. A RECEIVE handle
cannot be sent away while this process holds messages it already drained
from the socket (receive them first; IpcError otherwise).

Capacity is enforced among cooperating senders (this library): the raw
sending fd can bypass the credits, and is then bounded only by the socket's
byte budget — its records cannot be read by it, and are refused by the
receiver with ProtocolError if malformed.

Threads and asyncio: every method may be called from any thread; waits
sleep in the kernel (``poll``, futex), ``recv_async``/``send_async`` in the
event loop (``mailbox.py``). Receiving a port handle in a process needs this
module imported (it registers the PORT handle type).
"""

from __future__ import annotations

import enum
import os
import select
import socket
from typing import Any, NewType

from ..core.object import HANDLE_TABLE, Handle, ObjectType, Rights
from ..errors import InvalidHandle, PortClosed, ProtocolError
from ..linux import cmsg, eventfd
from . import rights as port_rights
from . import sizing
from .credits import WindowLock
from .handle import MailboxHandle
from .mailbox import Mailbox, adopt_seqpacket

__all__ = ["Port", "PortId", "PortStatus", "DEFAULT_CAPACITY"]

PortId = NewType("PortId", int)
"""Identifies a port system-wide: equal in every process that holds it."""

DEFAULT_CAPACITY = 16
_U32 = 0xFFFF_FFFF
_RECEIVE = int(Rights.RECEIVE)
_has = int.__and__  # rights checks on the hot path without IntFlag's Python-level operators


class PortStatus(enum.Enum):
    """The seed's ``PortStatus``."""

    OPEN = "open"
    CLOSED = "closed"


class _PortObject(Mailbox):
    TYPE = ObjectType.PORT
    DEFAULT_RIGHTS = port_rights.DEFAULT_RIGHTS
    ALLOWED_RIGHTS = port_rights.ALLOWED_RIGHTS
    _gone_exc = PortClosed
    _gone_text = "the port was closed by its receiver, or the receiver died"
    id: PortId  # the tx socket's inode: the same in every process

    @classmethod
    def create(cls, capacity: int) -> _PortObject:
        sizes = sizing.plan(capacity)  # ValueError for a bad capacity
        rx, tx = cmsg.seqpacket_pair()
        fds: list[int] = []
        try:
            tx.shutdown(socket.SHUT_RD)  # SEND holders can never read the queue
            sizing.apply(tx, sizes)
            fds.append(eventfd.semaphore(capacity))
            fds.append(eventfd.counter())
            window = WindowLock.create()
        except BaseException:
            rx.close()
            tx.close()
            cmsg.close_fds(fds)
            raise
        obj = cls.__new__(cls)
        obj._init_mailbox(
            tx=tx, out_fd=fds[0], capacity=capacity, sizes=sizes,
            rx=rx, in_fd=fds[0], window=window, request_fd=fds[1],
        )
        obj.id = PortId(os.fstat(tx.fileno()).st_ino)
        return obj

    # -- transfer ------------------------------------------------------------

    def transfer_fds(self, rights: Rights) -> list[int]:
        # Order: tx, credits, repair requests, window lock, [rx].
        assert self._window is not None
        fds = [self._txfd, self._out, self._request, self._window.fd]
        if port_rights.carries_receive(rights):
            fds.append(self._rxfd)
        return fds

    def transfer_extra(self, rights: Rights) -> int:
        return self._capacity | self._max_record << 32

    def prepare_transfer(self, rights: Rights) -> None:
        if port_rights.carries_receive(rights):
            self._refuse_transfer_if_buffered()

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _PortObject:
        receive = port_rights.carries_receive(rights)
        if len(fds) != 4 + receive:
            raise ProtocolError(
                f"a port handle{' with RECEIVE' if receive else ''} carries "
                f"{4 + receive} fds, got {len(fds)}"
            )
        capacity, max_record = extra & _U32, extra >> 32
        if capacity < 1 or max_record not in sizing.CANDIDATES:
            raise ProtocolError(f"bad port sizes: capacity {capacity}, max_record {max_record}")
        txfd, credit_fd, request_fd, lock_fd = fds[:4]
        if not (eventfd.adopt(credit_fd) and eventfd.adopt(request_fd)):
            raise ProtocolError("a port handle arrived without its eventfds")
        if not WindowLock.valid(lock_fd):
            raise ProtocolError("a port handle arrived without its window lock")
        tx = adopt_seqpacket(txfd, "a port's sending end")
        rx = None
        try:
            if not _shut_for_reading(txfd):
                raise ProtocolError("a port's sending end arrived able to receive")
            if receive:
                rx = adopt_seqpacket(fds[4], "a port's receiving end")
            window = WindowLock.adopt(lock_fd)
        except BaseException:
            tx.detach()
            if rx is not None:
                rx.detach()
            raise
        os.close(lock_fd)  # ours is window.fd, a description of our own
        obj = cls.__new__(cls)
        obj._init_mailbox(
            tx=tx, out_fd=credit_fd, capacity=capacity,
            sizes=sizing.Plan(max_record, 0, max(max_record, sizing.RECV_FLOOR)),
            rx=rx, in_fd=credit_fd if receive else -1, window=window, request_fd=request_fd,
        )
        obj.id = PortId(os.fstat(txfd).st_ino)
        return obj


def _shut_for_reading(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    events = p.poll(0)
    return bool(events and events[0][1] & select.POLLRDHUP)


class _PortFactory(type):
    """``Port(capacity)`` creates a port; handles themselves come from the table."""

    def __call__(cls, capacity: int = DEFAULT_CAPACITY) -> Any:
        return HANDLE_TABLE.insert(
            _PortObject.create(capacity), port_rights.DEFAULT_RIGHTS, cls  # type: ignore[arg-type]
        )


class Port(MailboxHandle, metaclass=_PortFactory):
    """A handle to a port. ``Port(capacity=16)`` makes a port: its RECEIVE handle.

    Default rights: SEND | RECEIVE | DUPLICATE | TRANSFER | WAIT. Mint send
    rights with ``port.duplicate(SEND_RIGHTS)`` (or any subset of the rights
    held). Every method checks the handle first (InvalidHandle if it was
    closed or moved away, PermissionDenied without the right it needs).

    ``capacity``, ``max_record``, ``send``, ``send_async``, ``try_recv``,
    ``recv`` and ``recv_async`` come from :class:`MailboxHandle`. On a port,
    ``capacity`` counts the messages of every sender together, and "the
    other side is gone" is PortClosed: the receiver closed the port or died.
    Sending raises it at once; receiving raises it once the port is closed
    (its queued messages are dropped).
    """

    __slots__ = ()

    # -- what it is ----------------------------------------------------------

    @property
    def id(self) -> PortId:
        """The port's id: the same in every process holding the port."""
        obj: _PortObject = self._live()
        return obj.id

    @property
    def status(self) -> PortStatus:
        """CLOSED once the receiver closed the port or died, else OPEN."""
        obj: _PortObject = self._live()
        if obj._shut or obj._peer_gone():
            return PortStatus.CLOSED
        return PortStatus.OPEN

    # -- crash repair (needs RECEIVE) ------------------------------------------

    def repair(self) -> int | None:
        """Give back the room taken by senders killed mid-send; how many credits.

        Runs by itself when a sender finds the port full (``credits.py``); call
        it to force one now. None if a live sender was mid-send (try again).
        """
        obj: _PortObject = self._require(Rights.RECEIVE)
        with obj._mutex:
            if obj._closed:
                raise obj._closed_error()
            return obj._repair_locked()

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Close the handle; with RECEIVE, close the port itself first.

        Closing the port (seed: status Closed, wake_all) wakes every waiter
        with PortClosed — receivers in other threads here, senders in every
        process — and drops the queued messages, closing their handles. A
        SEND-only handle's close just lets go of this handle. Closing twice
        does nothing.
        """
        obj: Any = self._object
        if obj is not None and _has(self._rights, _RECEIVE):
            obj.shut()
        Handle.close(self)

    def release(self) -> None:
        """Let go of this handle without closing the port.

        For a process that holds a RECEIVE handle it will not use — typically
        a forked child, which inherits its parent's handles: dropping it there
        keeps the child from holding the port open after the receiver dies.
        """
        self._let_go()

    def _moved(self) -> None:
        self._let_go()  # sent away: the port lives on in the receiver

    def __del__(self) -> None:
        # A forgotten handle lets go of the port; it does not close it for
        # others (its duplicates, or the process it was inherited by).
        try:
            if self._object is not None:
                self._let_go()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _let_go(self) -> None:
        """Drop this handle; if it was this process's last receive right, also
        its copy of the receiving socket end (see ``Mailbox.drop_receive``)."""
        obj: Any = self._object
        if obj is None:
            return
        receive = _has(self._rights, _RECEIVE)
        Handle.close(self)
        if receive and not obj._destroyed and not _receive_rights_left(obj):
            obj.drop_receive()


def _receive_rights_left(obj: _PortObject) -> bool:
    """Whether a live handle of this process still holds RECEIVE on ``obj``."""
    for value in HANDLE_TABLE.values():
        try:
            handle = HANDLE_TABLE.get(value)
        except InvalidHandle:
            continue
        if handle._object is obj and _has(handle._rights, _RECEIVE):
            return True
    return False


_PortObject.HANDLE_CLASS = Port
