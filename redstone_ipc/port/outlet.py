"""The sending side of a port or channel endpoint, in one process.

An :class:`Outlet` holds this process's sending end of a *door* (every SEND
right is one) and, from the first send on, this process's connection
through it (``transport.sending.Outbound``): a ring only this process and
the receiver map. One connection per process per door, made lazily, made
again after ``fork`` (the child gets its own, so the receiver's view of who
sends stays true), and made again when the receive side moves to another
process.

Sending
    Under ``lock`` (threads of this process take turns, as they would on a
    socket): take a credit, write the slot, publish. Releasing the lock is a
    full fence on x86 (``linux.ordering``); then the doorbell is written if
    the receiver said it sleeps. No system call otherwise.

No room
    ``timeout=0``: QueueFull. Otherwise the sender sets ``TX_WAITING``,
    fences, looks at its credits once more, sends a ``DOOR_WANT`` record on
    the door (the receiver hears its door even while it does not receive)
    and sleeps in ``poll`` on its socket (the receiver's WAKE records, and
    hang-up), the door (hang-up: the port is gone) and a private eventfd
    (closing the handle here wakes it). When the receive side lives in this
    process, the sender runs the receiver's bookkeeping itself instead of
    waiting for it.

Reconnecting
    A connection the receiver ended because its process died (or because
    the receive side moved) is made again, at once, within the send. A
    receiver that keeps ending new connections before they carried anything
    would make that a loop: one send gives up after ``RECONNECT_LIMIT`` such
    reconnections (IpcError), and its deadline holds throughout.

Every method whose name ends in ``_locked`` runs with ``self.lock`` held.
"""

from __future__ import annotations

import array
import asyncio
import os
import select
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable

from ..core.object import Handle
from ..errors import InvalidHandle, IpcError, ProtocolError, QueueFull, SendTimedOut
from ..linux import eventfd
from ..linux.ordering import TSO, full_fence
from ..message.message import Message
from ..sched.lock import Condition, relocked
from ..transport import layout as L
from ..transport.loan import Loan
from ..transport.sending import (
    CLOSED, FDS_IN_FLIGHT, NO_CREDIT, NO_DATA_ROOM, NO_SOCKET_ROOM, SENT, SOCKET_FULL, Outbound,
)

if TYPE_CHECKING:
    from .inbox import Inbox

__all__ = ["Outlet", "LOCAL_INBOXES"]

_now = time.monotonic
_DONTWAIT = int(socket.MSG_DONTWAIT)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_POLLIN = select.POLLIN
_RX_STATE = L.OFF_RX_STATE >> 2
_POLLOUT = select.POLLOUT
_IN_FLIGHT_POLL = 0.01  # seconds between looks while the kernel refuses more fds in flight
_HUP = select.POLLHUP | select.POLLERR
RECONNECT_LIMIT = 32  # reconnections that carried nothing, within one send

LOCAL_INBOXES: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
"""Kernel objects whose receive side is in this process, by the inode of their
door's sending end: a sender finds the receiver next door without a wait."""

_LIVE: "weakref.WeakSet[Outlet]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for outlet in list(_LIVE):
        outlet._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Outlet:
    """See the module docstring."""

    def __init__(self, door: socket.socket, nslots: int, gone: type[IpcError],
                 gone_text: str) -> None:
        self.door = door
        self.door_key = os.fstat(door.fileno()).st_ino
        self.nslots = nslots
        self.gone = gone
        self.gone_text = gone_text
        self.lock = threading.Lock()
        self.conn: Outbound | None = None
        self.kick = -1  # wakes this process's waiting senders (made by a wait, closed after)
        self.waiting = 0
        self.retired: list[Outbound] = []  # ended connections other threads still sleep on
        self.room_cond = Condition(self.lock)  # threads waiting for room behind the room leader
        self.room_leader = False
        self._async: dict[tuple[asyncio.AbstractEventLoop, Outbound], list[asyncio.Future[None]]] = {}
        self._writing: set[tuple[asyncio.AbstractEventLoop, Outbound]] = set()  # loops watching POLLOUT
        self.dead = False
        self.empty_reconnects = 0  # connections ended before carrying anything, ever
        _LIVE.add(self)

    # -- sending -----------------------------------------------------------------

    def send(self, msg: Message, priority: int, timeout: float | None, handle: Handle) -> None:
        """Queue ``msg``; QueueFull (``timeout=0``) or SendTimedOut without room."""
        lock = self.lock
        lock.acquire()
        conn = self.conn
        if conn is not None:  # the common case: connected, room
            try:
                status = conn.try_send(msg._payload, msg.msg_type, priority, msg.txid, msg.handles)
            except BaseException:
                lock.release()
                raise
            lock.release()  # a full fence on x86: the HEAD store before the load below
            if not status:
                if not TSO:
                    full_fence()
                if conn._w[_RX_STATE]:
                    os.eventfd_write(conn._doorbell, 1)  # the receiver said it sleeps
                return
        else:
            lock.release()
        self._send_slow(msg, priority, timeout, handle)

    def _send_slow(self, msg: Message, priority: int, timeout: float | None,
                   handle: Handle) -> None:
        def attempt(conn: Outbound) -> int:
            return conn.try_send(msg._payload, msg.msg_type, priority, msg.txid, msg.handles)

        conn, _ = self._until_done(attempt, timeout, handle, credit=True)
        if not TSO:
            full_fence()
        conn.ring_if_asleep()

    def _until_done(self, attempt: Callable[[Outbound], Any], timeout: float | None,
                    handle: Handle, credit: bool) -> tuple[Outbound, Any]:
        """Run ``attempt`` on this process's connection (made first if need be)
        until it gives something other than a refusal (a status other than
        SENT); the connection and that result.

        Meanwhile: waits while the receiver's door is full; connects again
        after the receiver ended the connection (RECONNECT_LIMIT times at
        most); waits for room (``credit``: for a credit too, asked for).
        When ``timeout`` runs out: QueueFull at 0, SendTimedOut otherwise.
        """
        deadline = None
        reconnects = self.empty_reconnects
        while True:
            self._check_reconnects(reconnects)
            try:
                with self.lock:
                    conn = self.conn
                    if conn is None:
                        conn = self._connect_locked()
                    got = attempt(conn)
            except _DoorFull as e:
                if deadline is None and timeout is not None:
                    deadline = _now() + timeout
                self._wait_door(e, timeout, deadline)
                continue
            if got.__class__ is not int or got == SENT:
                return conn, got
            if deadline is None and timeout is not None:
                deadline = _now() + timeout
            if got == CLOSED:
                self._closed(conn)
                self._check_deadline(timeout, deadline)
                continue
            if credit and self._room_here(conn):
                continue
            if timeout is not None and _now() >= deadline:  # type: ignore[operator]
                self._raise_if_gone(conn)
                if got == NO_CREDIT and conn.credits() <= 0:
                    self._ask_for_room(conn)  # so that room is granted for a later send
                if timeout == 0:
                    raise QueueFull(self._full_text(got))
                raise SendTimedOut(self._full_text(got))
            self._wait_room(conn, deadline, handle, credit)

    def _full_text(self, status: int) -> str:
        if status == NO_CREDIT:
            return "no room: the queue is full (or the receiver has not granted room to this sender yet)"
        if status == NO_SOCKET_ROOM:
            return ("no room for more handles: the receiver has not read the ones sent before "
                    "(the connection socket is full, or this user has RLIMIT_NOFILE fds in flight)")
        return "no room in the data segments: the receiver still holds earlier payloads"

    def _connect_locked(self) -> Outbound:
        if self.dead:
            raise InvalidHandle("the handle was closed in this process while in use")
        conn = Outbound(self.nslots)
        try:
            head, fds = conn.connect_record()
            anc = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds))]
            try:
                self.door.sendmsg([head], anc, _DONTWAIT)
            except BlockingIOError:
                # The receiver has not taken the connections before ours yet.
                raise _DoorFull("the receiver is not taking new senders now (its door is full)") from None
            except (BrokenPipeError, ConnectionResetError):
                raise self.gone(self.gone_text) from None
        except BaseException:
            conn.close()
            raise
        conn.connected()
        self.conn = conn
        local = self._local_inbox()
        if local is not None:
            local.service()
        return conn

    def _wait_door(self, full: _DoorFull, timeout: float | None, deadline: float | None) -> None:
        """Wait until the door has room for our connection record (or the time is up)."""
        remaining = None if deadline is None else deadline - _now()
        if remaining is not None and remaining <= 0:
            if timeout == 0:
                raise QueueFull(str(full)) from None
            raise SendTimedOut(str(full)) from None
        p = select.poll()
        p.register(self.door.fileno(), _POLLOUT)
        p.poll(None if remaining is None else remaining * 1000.0)

    def _local_inbox(self) -> Inbox | None:
        obj = LOCAL_INBOXES.get(self.door_key)
        if obj is None:
            return None
        return obj.local_inbox()  # type: ignore[no-any-return]

    def _room_here(self, conn: Outbound) -> bool:
        """When the receiver is in this process: do its bookkeeping now (it may
        be busy in this very thread). Whether there may be room now."""
        inbox = self._local_inbox()
        if inbox is None:
            return False
        conn.set_waiting(True)
        full_fence()
        try:
            inbox.want(conn.token)
        finally:
            conn.set_waiting(False)
            conn.drain_wakes()
        with self.lock:
            return conn.room_now()

    def _ask_for_room(self, conn: Outbound) -> None:
        """Tell the receiver that this connection waits for credits (a WANT
        record on the door: heard even when the receiver is not receiving)."""
        try:
            self.door.send(conn.want_record(), _DONTWAIT)
        except BlockingIOError:
            pass  # the door is full of records: the receiver will read them, ours or not
        except OSError:
            pass  # the door is gone: the wait sees the hang-up

    def _closed(self, conn: Outbound) -> None:
        """The receiver ended our connection: why decides what happens."""
        reason = conn.closed_reason()
        with self.lock:
            if self.conn is conn:
                self.conn = None
                if not conn.published():
                    self.empty_reconnects += 1
                if self.waiting:  # other threads sleep on its socket: the last one closes it
                    self.retired.append(conn)
                else:
                    conn.close()
        if reason == L.CLOSED_MOVED:
            return  # the receive side moved: connect again, to wherever it is now
        if reason == L.CLOSED_PROTOCOL:
            raise ProtocolError("the receiver dropped this connection: it broke the protocol")
        if reason == L.CLOSED_REFUSED:
            raise IpcError("the receiver could not take this connection (it is out of resources)")
        if reason == 0 and not self._door_gone():
            return  # the receiving process died; the door lives on elsewhere
        raise self.gone(self.gone_text)

    def _check_reconnects(self, before: int) -> None:
        """IpcError if the receiver ended too many new connections (that
        carried nothing) since a send that saw ``before`` began."""
        ended = self.empty_reconnects - before
        if ended > RECONNECT_LIMIT:
            raise IpcError(
                f"the receiver ended {ended} connections of this sender during one send, each "
                "before it carried a message: giving up (the receiving process keeps dying, "
                "or does not take senders)"
            )

    def _check_deadline(self, timeout: float | None, deadline: float | None) -> None:
        """After a reconnection: the send's time may be up. (``timeout=0``
        tries the new connection once more: it may have room at once when the
        receive side is in this process; RECONNECT_LIMIT bounds its tries.)"""
        if timeout and deadline is not None and _now() >= deadline:
            raise SendTimedOut(
                "no room: the receiver ended this sender's connection and has not taken a new one yet"
            )

    def _door_gone(self) -> bool:
        p = select.poll()
        p.register(self.door.fileno(), 0)
        events = p.poll(0)
        return bool(events and events[0][1] & _HUP)

    def _raise_if_gone(self, conn: Outbound) -> None:
        if conn.closed_reason() or self._door_gone():
            self._closed(conn)

    def _wait_room(self, conn: Outbound, deadline: float | None, handle: Handle,
                   credit: bool = True) -> None:
        """Sleep until the receiver gives room, hangs up, or the deadline.

        One thread (the *room leader*) sleeps in ``poll`` on the connection's
        socket; the others wait on ``room_cond`` and retry when it wakes. A
        WAKE record is read once, by the leader, and wakes everyone:
        threads and coroutines alike. ``TX_WAITING`` stays set while anyone
        of this process waits.
        """
        remaining = None if deadline is None else max(0.0, deadline - _now())
        with relocked(self.lock):
            if self.dead:
                raise InvalidHandle("the handle was closed in this process while in use")
            if conn is not self.conn:
                return  # ended meanwhile by another thread: the caller looks again
            self._enter_wait_locked(conn)
            try:
                if self.room_leader:
                    self.room_cond.wait(remaining)
                    leading = False
                else:
                    self.room_leader = leading = True
                    if self.kick < 0:
                        self.kick = eventfd.counter()
                    kick = self.kick
            except BaseException:
                self._leave_wait_locked(conn)
                raise
        alive = True
        door_gone = False
        if leading:
            try:
                full_fence()  # TX_WAITING before the last look at the room
                with self.lock:
                    room = conn.room_now(credit)
                if not room:
                    if credit and conn.credits() <= 0:
                        self._ask_for_room(conn)
                    p = select.poll()
                    p.register(conn.sock.fileno(), _POLLIN | (_POLLOUT if conn.socket_blocked == SOCKET_FULL else 0))
                    p.register(self.door.fileno(), 0)
                    p.register(kick, _POLLIN)
                    if conn.socket_blocked == FDS_IN_FLIGHT:  # no event tells: look again soon
                        remaining = _IN_FLIGHT_POLL if remaining is None else min(remaining, _IN_FLIGHT_POLL)
                    door = self.door.fileno()
                    for fd, events in p.poll(None if remaining is None else remaining * 1000.0):
                        if fd == door and events & _HUP:
                            door_gone = True
            finally:
                with relocked(self.lock):
                    self.room_leader = False
                    alive = conn.drain_wakes()
                    eventfd.drain(kick)
                    self._wake_all_locked()
                    self._leave_wait_locked(conn)
        else:
            with relocked(self.lock):
                self._leave_wait_locked(conn)
        if handle._object is None or self.dead:
            raise InvalidHandle("the handle was closed in this process while it waited")
        if (door_gone or not alive) and conn is self.conn:
            # (The door hung up while our connection lives: a CONNECT nobody
            # took, held at the door, keeps its other end open.)
            self._raise_if_gone(conn)
            if not alive and conn is self.conn and not conn.closed_reason():
                # Hung up without a word: the receiver died. Start over.
                self._closed(conn)

    def _enter_wait_locked(self, conn: Outbound) -> None:
        self.waiting += 1
        if self.waiting == 1:
            conn.set_waiting(True)

    def _leave_wait_locked(self, conn: Outbound) -> None:
        self.waiting -= 1
        if not self.waiting:
            conn.set_waiting(False)
            for old in self.retired:
                old.close()
            self.retired.clear()
            if self.dead:
                self._close_locked()
            elif self.kick >= 0:  # an idle handle holds no fd of its waits
                os.close(self.kick)
                self.kick = -1

    def _wake_all_locked(self) -> None:
        """Room may have come (or the end): every waiter of this process looks again."""
        self.room_cond.notify_all()
        for (loop, _), futures in list(self._async.items()):
            try:
                loop.call_soon_threadsafe(_wake_futures, futures)
            except RuntimeError:  # the loop is closed
                pass

    async def send_async(self, msg: Message, priority: int, timeout: float | None,
                         handle: Handle) -> None:
        """``send`` for asyncio: waits for room in the event loop, no thread."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else _now() + timeout
        reconnects = self.empty_reconnects
        while True:
            self._check_reconnects(reconnects)
            try:
                self.send(msg, priority, 0, handle)
                return
            except QueueFull:
                pass
            conn = self.conn
            if deadline is not None and _now() >= deadline:
                if conn is not None:
                    self._raise_if_gone(conn)
                status = NO_CREDIT
                if conn is not None:
                    status = NO_SOCKET_ROOM if conn.socket_blocked else NO_DATA_ROOM if conn.data_blocked else NO_CREDIT
                if timeout == 0:
                    raise QueueFull(self._full_text(status))
                raise SendTimedOut(self._full_text(status))
            if conn is None:
                await asyncio.sleep(0.001)
                continue
            await self._await_room(loop, conn, deadline)
            if handle._object is None or self.dead:
                raise InvalidHandle("the handle was closed in this process while it waited")

    async def _await_room(self, loop: asyncio.AbstractEventLoop, conn: Outbound,
                          deadline: float | None) -> None:
        """Wait for a WAKE (or hang-up) on ``conn``'s socket in the event loop.

        Any number of coroutines may wait: the loop allows one reader per fd,
        so they share one, which wakes them all (and this process's threads).
        """
        fut = loop.create_future()
        with self.lock:
            if conn is not self.conn:
                return  # ended meanwhile: the caller looks again
            self._enter_wait_locked(conn)
            key = (loop, conn)
            futures = self._async.get(key)
            if futures is None:
                futures = self._async[key] = []
                loop.add_reader(conn.sock.fileno(), self._on_wake, key)
            futures.append(fut)
        try:
            full_fence()  # TX_WAITING before the last look at the room
            with self.lock:
                room = conn.room_now()
            if room:
                return
            if conn.credits() <= 0:
                self._ask_for_room(conn)
            elif conn.socket_blocked == FDS_IN_FLIGHT:
                deadline = _IN_FLIGHT_POLL + _now() if deadline is None else min(deadline, _IN_FLIGHT_POLL + _now())
            elif conn.socket_blocked:
                with self.lock:
                    if key not in self._writing:
                        self._writing.add(key)
                        loop.add_writer(conn.sock.fileno(), self._on_writable, key)
            remaining = None if deadline is None else max(0.0, deadline - _now())
            await asyncio.wait_for(asyncio.shield(fut), remaining)
        except asyncio.TimeoutError:
            pass
        finally:
            with relocked(self.lock):
                futures = self._async.get(key, [])
                if fut in futures:
                    futures.remove(fut)
                if not futures and key in self._async:
                    del self._async[key]
                    try:
                        loop.remove_reader(conn.sock.fileno())
                        if key in self._writing:
                            self._writing.discard(key)
                            loop.remove_writer(conn.sock.fileno())
                    except (ValueError, OSError):
                        pass
                self._leave_wait_locked(conn)
        if conn.closed and conn is self.conn:
            self._raise_if_gone(conn)

    def _on_writable(self, key: tuple[asyncio.AbstractEventLoop, Outbound]) -> None:
        """The loop saw room in our socket: every coroutine of that loop looks again."""
        loop, conn = key
        with self.lock:
            self._writing.discard(key)
            _wake_futures(self._async.get(key, []))
        try:
            loop.remove_writer(conn.sock.fileno())  # level-triggered: it would fire again
        except (ValueError, OSError):
            pass

    def _on_wake(self, key: tuple[asyncio.AbstractEventLoop, Outbound]) -> None:
        """The loop saw our socket readable: read the WAKEs (it is level-triggered:
        left there they would fire again), wake every waiter of this process."""
        loop, conn = key
        with self.lock:
            alive = conn.drain_wakes()
            if self.kick >= 0 and self.room_leader:
                os.eventfd_write(self.kick, 1)  # a thread sleeps on the socket too
            self.room_cond.notify_all()
            _wake_futures(self._async.get(key, []))
        if not alive:
            try:
                loop.remove_reader(conn.sock.fileno())  # hang-up: readable for ever
            except (ValueError, OSError):
                pass

    # -- loans -------------------------------------------------------------------

    def loan(self, size: int, timeout: float | None, handle: Handle) -> Loan:
        """A loan of ``size`` bytes; waits (as ``send`` does) while the data
        segments are full of payloads the receiver keeps. It takes no credit
        (the send does)."""
        _, loan = self._until_done(lambda conn: conn.try_loan(size), timeout, handle, credit=False)
        return loan  # type: ignore[no-any-return]

    # -- lifecycle ---------------------------------------------------------------

    def kick_waiters(self) -> None:
        """Wake this process's senders waiting for room: they look at their handle."""
        with self.lock:
            if self.waiting:
                if self.kick >= 0:
                    os.eventfd_write(self.kick, 1)
                self._wake_all_locked()

    def close(self) -> None:
        """The last handle here is gone: wake the waiters, close the connection
        (the receiver reads what was published, then sees the hang-up)."""
        with self.lock:
            self.dead = True
            if self.waiting:  # the last of them closes (their poll uses our fds)
                if self.kick >= 0:
                    os.eventfd_write(self.kick, 1)
                self._wake_all_locked()
            else:
                self._close_locked()
        _LIVE.discard(self)

    def _close_locked(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        for old in self.retired:
            old.close()
        self.retired.clear()
        if self.kick >= 0:
            os.close(self.kick)
            self.kick = -1

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection is the parent's; ours will
        be made on our first send."""
        self.lock = threading.Lock()
        self.room_cond = Condition(self.lock)
        self.room_leader = False
        self._async = {}
        self._writing = set()
        self.waiting = 0
        self.empty_reconnects = 0
        for old in self.retired:
            old.close()
        self.retired.clear()
        if self.kick >= 0:
            os.close(self.kick)
            self.kick = -1
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


class _DoorFull(QueueFull):
    """The door has no room for a connection record (the receiver is busy, or stopped)."""


def _wake_futures(futures: list[asyncio.Future[None]]) -> None:
    for fut in list(futures):
        if not fut.done():
            fut.set_result(None)
