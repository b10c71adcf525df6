"""Ports (seed 4.2): a mailbox with one receiver and any number of senders.

>>> port = Port(capacity=16)                       # the RECEIVE handle
>>> client = port.duplicate(SEND_RIGHTS)           # a SEND right to hand out
>>> client.send(Message(1, b"hello"), priority=5)  # waits for room (timeout=None)
>>> msg = port.recv()                              # sleeps until a message comes
>>> bytes(msg), msg.priority, msg.sender.pid

SEND rights reach other processes attached to messages, pickled for
multiprocessing, by inheritance across ``fork``, and by name
(``redstone_ipc.names``). A process that holds only SEND rights holds no fd
that can read the queue: the kernel, not this library, keeps it from
receiving (``rights.py``).

How it maps to Linux
--------------------
* **the door**: a SOCK_SEQPACKET socketpair. The receiver keeps one end;
  every SEND right is a dup of the other, shut for reading. It carries no
  messages: a sending process connects through it once
  (``transport.layout``), and the kernel attaches that process's pid, uid
  and gid to the connection;
* **the data**: each sending process has its own ring in shared memory that
  only it and the receiver map (``transport``); a message is written there
  and published with one store. No system call while both sides are awake;
  the fds of a message's handles go through the connection's socket, in
  order with the ring;
* **capacity**, in messages across every sender and process: credits the
  receiver grants to each connection and takes back when another needs them
  (``inbox.py``). A sender killed at any instant gives its room back when
  its socket hangs up;
* **priorities**: highest first, FIFO within a priority (``queue.py``);
* **close()** by the receiver ends every connection (senders get
  PortClosed) and shuts the door; queued messages are dropped and their
  handles closed. A receiver that dies closes the port the same way: its
  connections hang up and the door's last receiving end is gone;
* **PortId** is the inode of the door's sending end: the same number in
  every process holding the port.

Receiving happens in one process at a time (see ``owner.py`` for which):
the first that receives, or the one the port was made in as soon as
senders connect. To receive in another process later, send it the RECEIVE
handle in a message (the queue must be empty then): senders connect
again, to it. ``release()`` drops a RECEIVE handle without closing the
port (a process that holds one it will not use should, so that the death
of the real receiver closes the port).

What the kernel does not enforce: a SEND holder maps its own ring and may
write anything into it, or stop halfway. The receiver checks every word
it reads and drops a connection that breaks the protocol (ProtocolError
from the next ``recv``, naming the sender); it never reads another
connection's memory, and capacity is counted by the receiver, so a broken
sender can fill the port as any sender can, and no more.

Threads and asyncio: every method may be called from any thread;
``recv_async``/``send_async`` wait in the event loop. Receiving a port
handle in a process needs this module imported (it registers the type).
"""

from __future__ import annotations

import enum
import os
import select
import socket
from typing import Any, NewType, TypeVar

from ..core.object import HANDLE_TABLE, Handle, ObjectType, Rights
from ..errors import InvalidHandle, PortClosed, ProtocolError
from ..linux import cmsg
from ..transport import layout as L
from . import rights as port_rights
from .handle import Mailbox, MailboxHandle
from .owner import ReceiveSide, new_lock

__all__ = ["Port", "PortId", "PortStatus", "DEFAULT_CAPACITY", "adopt_seqpacket"]

PortId = NewType("PortId", int)
"""Identifies a port system-wide: equal in every process that holds it."""

DEFAULT_CAPACITY = 16
MAX_CAPACITY = 1 << 20
_U32 = 0xFFFF_FFFF
_RECEIVE = int(Rights.RECEIVE)
_has = int.__and__


class PortStatus(enum.Enum):
    """The seed's ``PortStatus``."""

    OPEN = "open"
    CLOSED = "closed"


def check_capacity(capacity: int) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be an int from 1 to {MAX_CAPACITY}, not {capacity!r}")
    return capacity


def adopt_seqpacket(fd: int, what: str) -> socket.socket:
    """A socket object for a received fd, which must be an AF_UNIX SOCK_SEQPACKET
    (ProtocolError otherwise, ``fd`` left open for the caller to close)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise ProtocolError(f"{what} arrived as an fd that is not a socket") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise ProtocolError(f"{what} arrived as a socket that is not AF_UNIX SOCK_SEQPACKET")
    sock.setblocking(False)
    return sock


def shut_for_reading(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    events = p.poll(0)
    return bool(events and events[0][1] & select.POLLRDHUP)


def lock_valid(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


class _PortObject(Mailbox):
    TYPE = ObjectType.PORT
    DEFAULT_RIGHTS = port_rights.DEFAULT_RIGHTS
    ALLOWED_RIGHTS = port_rights.ALLOWED_RIGHTS
    gone = PortClosed
    gone_text = "the port was closed by its receiver, or the receiver died"

    @classmethod
    def create(cls, capacity: int) -> _PortObject:
        check_capacity(capacity)
        rx, tx = cmsg.seqpacket_pair()
        lock = -1
        try:
            tx.shutdown(socket.SHUT_RD)  # SEND holders can never read the door
            tx.setblocking(False)
            lock = new_lock()
            receive = ReceiveSide(rx, lock, capacity, PortClosed, cls.gone_text)
        except BaseException:
            rx.close()
            tx.close()
            if lock >= 0:
                os.close(lock)
            raise
        obj = cls.__new__(cls)
        obj._init_mailbox(capacity, tx, L.slot_count(capacity), receive, _ino(tx.fileno()))
        return obj

    @property
    def id(self) -> PortId:
        return PortId(self.door_key)

    # -- transfer: the door's sending end, then with RECEIVE its receiving end
    # and the owner lock --

    def transfer_fds(self, rights: Rights) -> list[int]:
        fds = [self.send_door.fileno()]
        if rights & Rights.RECEIVE:
            receive = self.receive
            if receive is None or receive.lock_fd < 0:
                raise InvalidHandle("this process holds no receive side of the port")
            fds += [receive.door.fileno(), receive.lock_fd]
        return fds

    def transfer_extra(self, rights: Rights) -> int:
        return self.capacity

    def prepare_transfer(self, rights: Rights) -> None:
        if rights & Rights.RECEIVE and not _receive_rights_left(self, exclude_one=True):
            assert self.receive is not None
            self.receive.check_can_leave()

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _PortObject:
        receive_right = bool(rights & Rights.RECEIVE)
        if len(fds) != 1 + 2 * receive_right:
            raise ProtocolError(
                f"a port handle{' with RECEIVE' if receive_right else ''} carries "
                f"{1 + 2 * receive_right} fds, got {len(fds)}"
            )
        capacity = extra & _U32
        if not 1 <= capacity <= MAX_CAPACITY or extra >> 32:
            raise ProtocolError(f"bad port capacity {extra}")
        if receive_right and not lock_valid(fds[2]):
            raise ProtocolError("a port handle arrived without its owner lock")
        tx = adopt_seqpacket(fds[0], "a port's door")
        rx = None
        try:
            if not shut_for_reading(fds[0]):
                raise ProtocolError("a port's door arrived able to receive")
            if receive_right:
                rx = adopt_seqpacket(fds[1], "a port's receiving end")
        except BaseException:
            tx.detach()
            raise
        receive = ReceiveSide(rx, fds[2], capacity, PortClosed, cls.gone_text) if rx else None
        obj = cls.__new__(cls)
        obj._init_mailbox(capacity, tx, L.slot_count(capacity), receive, _ino(fds[0]))
        if receive is not None:
            receive.try_activate()  # received here: served from now on, if free
        return obj

    def _destroy(self) -> None:
        """The last handle here is gone (closed, moved, garbage collected)."""
        if self.outlet is not None:
            self.outlet.close()
        receive = self.receive
        if receive is not None:
            for msg in receive.give_up():
                msg.close()
            receive.close()
        self.send_door.close()


def _ino(fd: int) -> int:
    return os.fstat(fd).st_ino


_P = TypeVar("_P", bound="Port")


class Port(MailboxHandle):
    """A handle to a port. ``Port(capacity=16)`` makes a port: its RECEIVE handle.

    Default rights: SEND | RECEIVE | DUPLICATE | TRANSFER | WAIT. Mint send
    rights with ``port.duplicate(SEND_RIGHTS)`` (or any subset of the rights
    held). Every method checks the handle first (InvalidHandle if it was
    closed or moved away, PermissionDenied without the right it needs).

    ``capacity``, ``send``, ``send_async``, ``loan``, ``try_recv``, ``recv``
    and ``recv_async`` come from :class:`MailboxHandle`. On a port,
    ``capacity`` counts the messages of every sender together, and "the
    other side is gone" is PortClosed: the receiver closed the port or died.
    """

    __slots__ = ()

    def __new__(cls: type[_P], capacity: int = DEFAULT_CAPACITY) -> _P:
        """A new port holding at most ``capacity`` messages (1 to 2**20), and
        its first handle, with the default rights. Other handles to it come
        from ``duplicate`` or from receiving one, never from this call."""
        return HANDLE_TABLE.insert(_PortObject.create(capacity), port_rights.DEFAULT_RIGHTS, cls)

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """Everything was done by ``__new__`` (handles skip ``__init__``)."""

    @property
    def id(self) -> PortId:
        """The port's id: the same in every process holding the port."""
        obj: _PortObject = self._live()
        return obj.id

    @property
    def status(self) -> PortStatus:
        """CLOSED once the receiver closed the port or died, else OPEN."""
        obj: _PortObject = self._live()
        if _door_hung_up(obj):  # every receiving end of the door is gone
            return PortStatus.CLOSED
        outlet = obj.outlet
        if outlet is not None and outlet.conn is not None and outlet.conn.closed_reason() == L.CLOSED_PORT:
            return PortStatus.CLOSED
        return PortStatus.OPEN

    def stats(self) -> dict[str, int]:
        """``capacity``, ``depth`` (messages queued, read or not), ``senders``
        (processes connected), read now. Needs RECEIVE, in the receiving process."""
        obj: _PortObject = self._require(Rights.RECEIVE)
        return obj.get_inbox().stats()

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
        if obj is not None and _has(self._rights, _RECEIVE) and obj.receive is not None:
            for msg in obj.receive.shut():
                msg.close()
        Handle.close(self)

    def release(self) -> None:
        """Let go of this handle without closing the port.

        The receive side leaves this process with its last RECEIVE handle
        (queued messages are dropped): a copy elsewhere (pickled, inherited
        before the port was ever received on) may then receive.
        """
        self._let_go()

    def _moved(self) -> None:
        self._let_go()  # sent away: the port lives on in the receiver

    def __del__(self) -> None:
        # A forgotten handle lets go of the port; it does not close it for others.
        try:
            if self._object is not None:
                self._let_go()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _let_go(self) -> None:
        obj: Any = self._object
        if obj is None:
            return
        receive = _has(self._rights, _RECEIVE)
        Handle.close(self)
        side = obj.receive
        if receive and not obj._destroyed and side is not None and not _receive_rights_left(obj):
            # The last RECEIVE handle left this process: nothing here may keep
            # the door's receiving end open (a receiver elsewhere that dies
            # must close the port).
            obj.receive = None
            for msg in side.give_up():
                msg.close()
            side.close()


def _door_hung_up(obj: _PortObject) -> bool:
    p = select.poll()
    p.register(obj.send_door.fileno(), 0)
    events = p.poll(0)
    return bool(events and events[0][1] & select.POLLHUP)


def _receive_rights_left(obj: Any, exclude_one: bool = False) -> bool:
    """Whether a live handle of this process holds RECEIVE on ``obj`` (beyond
    the one about to leave, with ``exclude_one``)."""
    count = 0
    for value in HANDLE_TABLE.values():
        try:
            handle = HANDLE_TABLE.get(value)
        except InvalidHandle:
            continue
        if handle._object is obj and _has(handle._rights, _RECEIVE):
            count += 1
    return count > (1 if exclude_one else 0)


_PortObject.HANDLE_CLASS = Port
