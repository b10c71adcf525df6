"""Which process receives: the receive side of a port or endpoint lives in one.

Several processes may hold a RECEIVE handle to the same port (``fork``
copies it, pickling copies it), but connections, credits and the queue of a
receive side live in one process's memory, so exactly one of them may
receive. :class:`ReceiveSide` is a RECEIVE holder's presence in a process:
the door's receiving end, an *owner lock*, and — once this process owns
the receive side — the :class:`~redstone_ipc.port.inbox.Inbox`.

Ownership is an exclusive ``flock`` on a memfd that travels with every
RECEIVE handle, taken on an open file description of this process's own
(``/proc/self/fd/N`` reopened: after ``fork`` parent and child share
descriptions, so the child could not tell its lock from the parent's). The
kernel drops it when the owner dies. Nobody owns it until it is needed;
then the first of these takes it:

* a process that receives on it (``recv``, ``try_recv``, ...);
* the process the handle is *at home* in — where the port or channel was
  made, or where the RECEIVE handle arrived (in a message, or pickled) —
  when a sender from another process connects (each holder hears its door
  from its service thread, ``service.py``), so the queue is served before
  the first ``recv``: producers can fill it while the receiver is busy;
* a process that sends to it from the same process, if nothing was forked
  since the handle came there (otherwise the other process may be the one
  meant to receive).

A forked child is not at home: it takes a receive side only by receiving.
So with ``fork`` (or ``multiprocessing`` with the fork start method):
``a, b = Channel.create_pair(); fork()`` and each side using its own
endpoint works as with a pipe; a port made in the parent and received in a
child works; a port made in the parent and received in the parent works,
children connecting to it. When a child is meant to receive while other
processes send, let the parent ``release()`` its RECEIVE handle once the
child runs (as with the unused end of a pipe). A child forked after the
receive side was taken cannot receive (InvalidHandle) and drops its copy:
it does not keep the port alive when the receiver dies.

Another process trying to receive while the owner lives gets InvalidHandle.
The owner gives the receive side up when its last RECEIVE handle leaves the
process (moved, released); its connections are then ended with
``CLOSED_MOVED`` and their senders connect again, to the new owner. After
``fork``, a child drops everything of a receive side its parent owns.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import weakref
from typing import Callable

from ..errors import InvalidHandle, IpcError
from ..linux import cmsg
from ..message.message import Message
from ..transport import layout as L
from . import service
from .inbox import Inbox

__all__ = ["ReceiveSide", "new_lock"]

_LIVE: "weakref.WeakSet[ReceiveSide]" = weakref.WeakSet()
_CONNECT_ANC = socket.CMSG_SPACE(4 * 253) + socket.CMSG_SPACE(cmsg.CRED.size)  # any record's fds
_CREDS_ONLY = socket.CMSG_SPACE(cmsg.CRED.size)  # a peek reads who sent, never the fds
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_forks = 0  # forks made by, or leading to, this process


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1
    for side in list(_LIVE):
        side._after_fork()


def _after_fork_in_parent() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child, after_in_parent=_after_fork_in_parent)


def new_lock() -> int:
    """A new owner lock (an empty memfd: only its inode matters)."""
    return os.memfd_create("redstone-owner", os.MFD_CLOEXEC)


class ReceiveSide:
    """A receive side's presence in this process (see the module docstring)."""

    def __init__(self, door: socket.socket, lock_fd: int, capacity: int, gone: type[IpcError],
                 gone_text: str, on_shut: Callable[[], None] | None = None) -> None:
        door.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # senders' credentials
        door.setblocking(False)
        self.door = door
        self.lock_fd = lock_fd  # travels with RECEIVE handles
        self.capacity = capacity
        self.gone = gone
        self.gone_text = gone_text
        self.max_slots = L.slot_count(capacity)
        self.inbox: Inbox | None = None
        self._own_fd = -1  # our own description of the lock, held exclusively
        self.left: str | None = None  # why this process can no longer receive
        self.on_shut = on_shut
        self.born = _forks  # no fork since: only this process can mean to receive
        self.home = True  # made or received here (a forked child's copy is not at home)
        self._claiming = threading.Lock()
        _LIVE.add(self)
        service.watch(self)

    # -- ownership ---------------------------------------------------------------

    def activate(self) -> Inbox:
        """The inbox, taking ownership first if needed (InvalidHandle if
        another process receives)."""
        inbox = self.inbox
        if inbox is not None:
            return inbox
        with self._claiming:
            inbox = self.inbox
            if inbox is not None:
                return inbox
            if self.left is not None:
                raise InvalidHandle(self.left)
            own = os.open(f"/proc/self/fd/{self.lock_fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(own)
                raise InvalidHandle(
                    "another process receives on this port or endpoint: only one process "
                    "may; let it release() its receive handle or move it to this one"
                ) from None
            except BaseException:
                os.close(own)
                raise
            try:
                self.inbox = Inbox(self.door, self.capacity, self.gone, self.gone_text,
                                   self.max_slots)
            except BaseException:
                os.close(own)
                raise
            self._own_fd = own
            service.watch(self)  # a forked child's door is not heard yet: senders wait for room
            return self.inbox

    def try_activate(self) -> Inbox | None:
        """For a sender of this process that needs room: the inbox if this
        process owns it, or may take it now because nothing was forked since
        the handle came here (after a fork, the other process may be the one
        meant to receive: its receive, or a sender it did not make, decides).
        Else None."""
        if self.inbox is not None:
            return self.inbox
        if self.born != _forks:
            return None
        try:
            return self.activate()
        except InvalidHandle:
            return None

    def on_door(self) -> None:
        """The service thread heard the door: serve it, taking ownership first
        if the record waiting there says this process should."""
        inbox = self.inbox
        if inbox is None:
            if not self.home or self.left is not None or not self._claim_for(self._first_sender()):
                service.forget(self.door.fileno())  # someone else's to serve
                return
            try:
                inbox = self.activate()
            except InvalidHandle:
                service.forget(self.door.fileno())
                return
        inbox.service()

    def _first_sender(self) -> int:
        """The pid of the process whose record waits first at the door (0 if
        none: the door's end), peeked at without taking it."""
        try:
            _, anc, _, _ = self.door.recvmsg(1, _CREDS_ONLY, _PEEK)
        except (BlockingIOError, OSError):
            return -1
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == cmsg.SCM_CREDENTIALS:
                return int(cmsg.CRED.unpack_from(raw)[0])
        return 0

    def _claim_for(self, sender_pid: int) -> bool:
        if sender_pid == -1:
            return True  # nothing to read after all: harmless either way
        if sender_pid == 0:
            return False  # no record: every sender is gone
        return not (sender_pid == os.getpid() and self.born != _forks)

    # -- giving it up --------------------------------------------------------------

    def check_can_leave(self) -> None:
        """IpcError if the receive side cannot leave this process now (messages
        are queued here, or a sender is mid-send)."""
        inbox = self.inbox
        if inbox is None:
            if self.left is not None:
                raise InvalidHandle(self.left)
            return
        with inbox.mutex:
            why = inbox.quiesce_locked()
        if why is not None:
            raise IpcError(f"the receive side cannot leave this process: {why}")

    def give_up(self) -> list[Message]:
        """Stop receiving in this process, the port living on (moved, released):
        senders connect again to the next owner. Returns dropped messages."""
        inbox, self.inbox = self.inbox, None
        dropped: list[Message] = []
        if inbox is not None:
            with inbox.mutex:
                dropped = inbox.shut_locked(
                    InvalidHandle("the receive right left this process (moved or released)"),
                    L.CLOSED_MOVED,
                )
        self._unlock()
        return dropped

    def shut(self) -> list[Message]:
        """Close the port for everyone (a RECEIVE handle's ``close``)."""
        try:
            self.door.shutdown(socket.SHUT_RDWR)  # the door is gone for every holder
        except OSError:
            pass
        inbox, self.inbox = self.inbox, None
        dropped: list[Message] = []
        if inbox is not None:
            with inbox.mutex:
                dropped = inbox.shut_locked(self.gone("the port was closed"), L.CLOSED_PORT)
                self._refuse_waiting_connections()
        else:
            self._refuse_waiting_connections()
        self._unlock()
        if self.on_shut is not None:
            self.on_shut()
        return dropped

    def _refuse_waiting_connections(self) -> None:
        """Close the fds of the records still at the (shut) door: a sender
        whose CONNECT nobody took sleeps on its connection socket, whose
        other end is in that record; while the record is there (other
        processes may hold the door's receiving end: its queue lives on) it
        would never see the end."""
        while True:
            try:
                data, anc, _, _ = self.door.recvmsg(L.DOOR_RECORD.size, _CONNECT_ANC, socket.MSG_DONTWAIT)
            except OSError:  # empty (or gone)
                return
            if not data and not anc:
                # Shut, the end of the queue reads as an empty record for
                # ever; a record, even an empty one, brings its sender's
                # credentials (SO_PASSCRED).
                return
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    cmsg.close_fds([int.from_bytes(raw[i:i + 4], "little", signed=True)
                                    for i in range(0, len(raw) - len(raw) % 4, 4)])

    def _unlock(self) -> None:
        if self._own_fd >= 0:
            os.close(self._own_fd)  # the lock goes with our description
            self._own_fd = -1

    def close(self) -> None:
        """Close this process's fds of the receive side (after give_up/shut)."""
        _LIVE.discard(self)
        self._unlock()
        if not self.door._closed:  # type: ignore[attr-defined]
            service.forget(self.door.fileno())
        self.door.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def _after_fork(self) -> None:
        """In a forked child: if the parent receives, it keeps everything."""
        self._claiming = threading.Lock()
        self.home = False
        if self.inbox is None and self._own_fd < 0:
            return  # nobody receives yet: we may, by receiving
        self.left = (
            f"the receive side stayed in process {os.getppid()}, which served it before "
            "the fork: a forked child can send, not receive; to receive here, move the "
            "RECEIVE handle in a message"
        )
        inbox, self.inbox = self.inbox, None
        if inbox is not None:
            inbox.drop_after_fork()
        if self._own_fd >= 0:
            os.close(self._own_fd)  # a copy of the parent's description: the lock stays its
            self._own_fd = -1
        self.door.close()  # so that the parent's death closes the port
        os.close(self.lock_fd)
        self.lock_fd = -1
