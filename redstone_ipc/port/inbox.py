"""The receiving side of a port or channel endpoint: connections, credits, order.

An :class:`Inbox` lives in the one process that receives (see ``owner.py``
for how that process is chosen). It owns the receiving end of the *door*,
through which senders connect, and every connection that came through it
(``transport.receiving.Inbound``). What it does:

Reading
    Each receive first reads what the *active* connections published (a few
    loads of shared memory per connection, no system call) into a
    :class:`~redstone_ipc.port.queue.PriorityQueue`, then hands out the head
    of the queue: highest priority first, FIFO within a priority. Replies to
    ``call`` are set aside for the caller that waits for them.

Capacity (credits)
    The inbox holds ``capacity`` credits. A credit is either in the pool,
    granted to a connection (unused, or turned into a message not yet read),
    or a message read and not yet handed out::

        pool + queued + sum(connection.owed()) + sum(connection.freed) == capacity

    Handing a message out frees its credit; it goes back to the connection
    that sent it (in batches, ``freed``), or to a connection that waits for
    room. A sender that has no credit says so (``TX_WAITING``) and sends a
    ``DOOR_WANT`` record on the door; the inbox then grants it credits from
    the pool, from credits freed but not yet given back, or by taking back
    credits that other connections hold unused. So a sender is refused
    (QueueFull) only when ``capacity`` messages are queued or in flight —
    once the receiver has looked at its request: the door is heard at once,
    by a receiving thread or else by the service thread (``service.py``).

Waiting
    One thread at a time (the *leader*) waits; others wait on a condition
    and are told when something they may want was read. The leader first
    spins briefly on the active connections (adaptively: only while spinning
    has been paying off), then sets ``RX_SLEEPING`` on them, checks once more
    and sleeps in ``epoll`` on the door, every connection's doorbell and
    hang-up, and a private *kick* eventfd. Connections that stay quiet are
    demoted: their ``RX_SLEEPING`` stays set, so their next message writes
    the doorbell, and a receive costs nothing per idle connection. asyncio
    waiters share one ``add_reader`` on the same epoll (no fd per waiter).

Faults
    A connection that breaks the protocol is dropped: the credits it held
    come back, every other connection goes on, and the next receive raises
    ProtocolError naming the sender. A sender that dies is noticed by the
    hang-up of its socket: what it published is read, then its connection
    closes and its credits come back. What needs fds this process does not
    have (EMFILE) stays where it is — a CONNECT at the door, a message's
    handles or a new data segment on its connection, a dead sender's last
    messages — and the receive that meets it raises OutOfFds; WANTs, which
    carry no fd, are still heard.

Every method whose name ends in ``_locked`` runs with ``self.mutex`` held.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from collections import deque
from typing import Callable

from ..errors import Empty, IpcError, OutOfFds, ProtocolError, ReceiveTimedOut
from ..linux import cmsg, eventfd
from ..linux.limits import make_fd_room
from ..linux.ordering import TSO, full_fence
from ..message.message import Message
from ..sched.lock import Condition, acquire_deferring, relocked
from ..transport import layout as L
from ..transport.receiving import MAPPING_FDS, Inbound, accept, door_record, make_room
from . import service
from .queue import PriorityQueue

__all__ = ["Inbox"]

_now = time.monotonic
_EPOLLIN = select.EPOLLIN
_HEAD_Q = L.OFF_HEAD >> 3
_EPOLLHUP = select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR
_DONTWAIT = int(socket.MSG_DONTWAIT)
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC) | _DONTWAIT
_CONNECT_ANC = socket.CMSG_SPACE(4 * L.CONNECT_FDS + 4) + socket.CMSG_SPACE(cmsg.CRED.size)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_SCM_CREDENTIALS = cmsg.SCM_CREDENTIALS

SPIN_MAX = 400  # polls of the active connections before sleeping (~10-30 µs)
SPIN_YIELD_MAX = 128  # polls between two sched_yield at most
DEMOTE_AFTER = 64  # sleeps in a row during which a connection published nothing
EVENTS_EVERY = 64  # messages handed out between two looks at the door and doorbells
BUSY_AGE = DEMOTE_AFTER // 4  # so: quiet while 4 * EVENTS_EVERY messages were handed out


class Inbox:
    """See the module docstring. ``gone`` is the exception class for "the
    other side is gone" (PortClosed, PeerClosed)."""

    def __init__(self, door: socket.socket, capacity: int, gone: type[IpcError],
                 gone_text: str, max_slots: int) -> None:
        self.door = door
        self.capacity = capacity
        self.max_slots = max_slots
        self.gone = gone
        self.gone_text = gone_text
        self.mutex = threading.Lock()
        self.cond = Condition(self.mutex)
        self.pool = capacity
        self.batch = max(1, capacity // 4)  # freed credits given back together
        self.queued = 0
        self.queue: PriorityQueue[tuple[Message, Inbound | None]] = PriorityQueue()
        self.replies: dict[int, tuple[Message, Inbound | None]] = {}
        self.pending: set[int] = set()  # txids of calls waiting for their reply
        self.conns: dict[int, Inbound] = {}  # by doorbell fd
        self.hup: dict[int, Inbound] = {}  # by socket fd
        self.tokens: dict[int, Inbound] = {}  # by the sender's token
        self.active: list[Inbound] = []
        self.active_version = 0  # changes whenever ``active`` does
        self.wanters: list[Inbound] = []
        self.errors: deque[Exception] = deque()
        self.door_eof = False
        self.closed: Exception | None = None  # why receiving ended here
        self.leader = False
        self.followers = 0
        self.ops = 0  # threads inside a blocking call (the fds must stay open)
        self.sleepers = 0  # waits that set RX_SLEEPING (leader, coroutines)
        self.async_loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        self.handed = 0
        self.spin = SPIN_MAX
        self.spin_yield = 8  # polls between two sched_yield (adapts)
        self.spin_misses = 0
        self.finalized = False
        self.kick = eventfd.counter()
        self.epoll = select.epoll()
        try:
            self.epoll.register(door.fileno(), _EPOLLIN)
            self.epoll.register(self.kick, _EPOLLIN)
        except BaseException:
            self.epoll.close()
            os.close(self.kick)
            raise

    # -- receiving -------------------------------------------------------------

    def try_recv(self, txid: int = 0) -> Message:
        """The next message, or Empty at once."""
        with self.mutex:
            msg = self._quick_locked() if not txid else None
            if msg is None:
                msg = self._take_locked(txid)
        if msg is None:
            raise Empty("no message is queued")
        return msg

    def recv(self, timeout: float | None = None, txid: int = 0,
             timeout_exc: type[Exception] = ReceiveTimedOut) -> Message:
        """The next message (or the reply ``txid``), sleeping until it comes."""
        mutex = self.mutex
        mutex.acquire()
        try:
            # The common case first, inline (_quick_locked): nothing queued,
            # one active connection, one ordinary message published on it.
            if not (txid or self.queued or self.closed is not None or self.errors):
                active = self.active
                if len(active) == 1:
                    conn = active[0]
                    msg = conn.take_one()
                    if msg is not None:
                        its = msg.txid
                        if its and its in self.pending:  # a call's reply: set aside
                            self.queued += 1
                            self.replies[its] = (msg, conn)
                            self._notify_locked()
                        else:
                            self.handed += 1
                            freed = conn.freed + 1
                            conn.freed = freed
                            if freed >= self.batch:
                                conn.idle = 0
                                self._flush_locked(conn)
                            if self.wanters:
                                self._serve_wanters_locked()
                            return msg
            elif not txid and self.queue._len and self.closed is None and not self.errors:
                msg = self._take_queued_locked()  # a stream: messages wait in the queue
                if msg is not None:
                    return msg
            deadline = None if timeout is None else _now() + timeout
            while True:
                msg = self._take_locked(txid, False) if txid else (
                    self._quick_locked() or self._take_locked(0, False)
                )
                if msg is not None:
                    return msg
                remaining = None
                if deadline is not None:
                    remaining = deadline - _now()
                    if remaining <= 0:
                        if timeout == 0 and timeout_exc is ReceiveTimedOut:
                            raise Empty("no message is queued")
                        raise timeout_exc("no message arrived in time")
                if self.leader:
                    self.followers += 1
                    try:
                        self.cond.wait(remaining)
                    except BaseException:
                        if not self.leader and self.followers > 1:
                            self.cond.notify()  # we may have been told to lead: pass it on
                        raise
                    finally:
                        self.followers -= 1
                else:
                    self._lead_locked(remaining)
        finally:
            mutex.release()

    def _take_queued_locked(self) -> Message | None:
        """The head of the queue, after reading what the (one) active
        connection published since: a higher priority may have come."""
        active = self.active
        if len(active) != 1 or self.handed >= EVENTS_EVERY:
            return None
        conn = active[0]
        try:
            n = conn.published()
            if n:
                self._read_locked(conn, n)
        except ProtocolError:
            return None  # the general path drops it and says so
        msg, src = self.queue.take()
        self.queued -= 1
        self.handed += 1
        if src is None or src.closed:
            self.pool += 1
        else:
            freed = src.freed + 1
            src.freed = freed
            if freed >= self.batch:
                self._flush_locked(src)
        if self.wanters:
            self._serve_wanters_locked()
        if self.queued and (self.followers or self.async_loops):
            self._notify_locked()
        return msg

    def _quick_locked(self) -> Message | None:
        """The common case at its cheapest: nothing queued, one active
        connection, one ordinary message published on it. None if not so."""
        if self.queued or self.closed is not None or self.errors:
            return None
        active = self.active
        if len(active) != 1:
            return None
        conn = active[0]
        msg = conn.take_one()
        if msg is None:
            return None
        txid = msg.txid
        if txid and txid in self.pending:  # a call's reply, for a thread that waits
            self.queued += 1
            self.replies[txid] = (msg, conn)
            self._notify_locked()
            return None
        self.handed += 1
        freed = conn.freed + 1
        conn.freed = freed
        if freed >= self.batch:
            conn.idle = 0
            self._flush_locked(conn)
        if self.wanters:
            self._serve_wanters_locked()
        return msg

    def _lead_locked(self, remaining: float | None) -> None:
        """Spin, then sleep in epoll as the leader; process what woke us.

        Leadership is taken before the spin (which lets go of the mutex now
        and then): one thread at a time leads, the others follow.
        """
        self.leader = True
        events: list[tuple[int, int]] = []
        try:
            if self._spin_locked():
                return
            self._demote_quiet_locked()
            self._arm_locked()
            try:
                if self._ready_locked():
                    return
                self.ops += 1
                self.mutex.release()
                try:
                    events = self.epoll.poll(-1 if remaining is None else max(0.0, remaining))
                finally:  # a signal handler's exception too: take the mutex back first
                    deferred = acquire_deferring(self.mutex)
                    self._leave_locked()
                    if deferred is not None:
                        raise deferred
            finally:
                self._disarm_locked()
        finally:
            self.leader = False
            if self.followers:
                self.cond.notify()  # one of them may have to lead now
        if self.closed is None:  # else our fds may be closed already
            self._events_locked(events)

    def _demote_quiet_locked(self) -> None:
        """Before sleeping: connections quiet for DEMOTE_AFTER sleeps in a row
        stop being polled (their next message writes the doorbell)."""
        if self.sleepers:
            return
        for conn in list(self.active):
            conn.idle += 1
            if conn.idle >= DEMOTE_AFTER:
                self._demote_locked(conn)

    def _spin_locked(self) -> bool:
        """Poll the active connections a little before sleeping; whether
        something came.

        Spinning pays only when the sender runs on another CPU at the same
        time; on a shared CPU it only delays the sender. So the spin adapts:
        it gives the CPU away (``sched_yield``) every ``spin_yield`` polls,
        often when messages have been arriving only after a yield (the sender
        needed our CPU), rarely when they arrive while we poll (it runs
        beside us); and it stops spinning for a while after spins that ended
        in sleep anyway.
        """
        budget = self.spin
        active = self.active
        if not budget or not active:
            if not budget:
                self.spin_misses += 1
                if self.spin_misses >= 64:  # probe again now and then
                    self.spin, self.spin_misses = SPIN_MAX, 0
            return False
        every = self.spin_yield
        yield_ = os.sched_yield
        version = self.active_version
        if len(active) == 1 and TSO:
            conn = active[0]  # one sender: poll its HEAD word itself, cheaply
            q = conn._q
            tail = conn.tail
            i = 0
            while i < budget:
                for _ in range(every):
                    if q[_HEAD_Q] != tail:
                        self._spun(i)
                        return True
                i += every
                if not self._yield_locked(yield_) or self.active_version != version:
                    return True  # something came, or the connections changed: look again
        else:
            i = 0
            while i < budget:
                for _ in range(every):
                    for conn in active:
                        if conn.published():
                            self._spun(i)
                            return True
                i += every
                if not self._yield_locked(yield_) or self.active_version != version:
                    return True
        self.spin_misses += 1
        if self.spin_misses >= 3:  # spinning does not pay here: sleep at once for a while
            self.spin, self.spin_misses = 0, 0
        return False

    def _yield_locked(self, yield_: Callable[[], None]) -> bool:
        """Give the CPU away (and our mutex, to our other threads) for a moment;
        False if meanwhile something came that ends the wait."""
        self.mutex.release()
        try:
            yield_()
        finally:
            deferred = acquire_deferring(self.mutex)
            if deferred is not None:
                raise deferred
        return not (self.closed is not None or self.queue._len or self.errors or self.replies)

    def _spun(self, polls: int) -> None:
        """A spin ended well after ``polls`` polls: adapt how often to yield."""
        self.spin_misses = 0
        if polls < self.spin_yield:
            self.spin_yield = min(SPIN_YIELD_MAX, self.spin_yield * 2)  # it runs beside us
        else:
            self.spin_yield = max(1, self.spin_yield // 2)  # it needed our CPU

    def _ready_locked(self) -> bool:
        """After arming: whether anything is there to take (then do not sleep)."""
        if self.closed is not None or self.errors or self.queue:
            return True
        try:
            for conn in self.active:
                if conn.published():
                    return True
        except ProtocolError:
            return True  # the next take drops it and reports
        return False

    def _arm_locked(self) -> None:
        self.sleepers += 1
        if self.sleepers == 1:
            for conn in self.active:
                conn.set_sleeping(True)
            full_fence()  # RX_SLEEPING before the last look at HEAD (senders fence too)

    def _disarm_locked(self) -> None:
        self.sleepers -= 1
        if not self.sleepers:
            for conn in self.active:
                if not conn.closed:
                    conn.set_sleeping(False)

    # -- taking a message --------------------------------------------------------

    def _take_locked(self, txid: int, look_around: bool = True) -> Message | None:
        """The next message for this caller (read from the connections first).

        ``look_around``: when nothing is there, look at the epoll at once for
        news (a connection, a hang-up, the door's end); a caller about to
        sleep in it does not need to.
        """
        if self.closed is not None:
            raise self.closed
        if self.errors:
            self._raise_error_locked()
        entry = self._next_locked(txid)
        if entry is None and look_around:
            self._poll_events_locked()
            entry = self._next_locked(txid)
        if entry is not None:
            msg, conn = entry
            self.queued -= 1
            # Its credit is free (pool, or back to its connection in batches);
            # written out in each taking path: they are hot.
            self.handed += 1
            if conn is None or conn.closed:
                self.pool += 1
            else:
                freed = conn.freed + 1
                conn.freed = freed
                if freed >= self.batch:
                    self._flush_locked(conn)
            if self.wanters:
                self._serve_wanters_locked()
            if self.queued and (self.leader or self.followers or self.async_loops):
                self._notify_locked()
            return msg
        if self.errors:
            self._raise_error_locked()
        if self.door_eof and not self.conns and not self.queue and not self.replies:
            self._notify_locked()  # everyone waiting must hear it, not just us
            raise self.gone(self.gone_text)
        return None

    def _next_locked(self, txid: int) -> tuple[Message, Inbound | None] | None:
        self._drain_locked()
        if txid:
            return self.replies.pop(txid, None)
        if self.queue:
            return self.queue.take()
        return None

    def _drain_locked(self) -> None:
        """Read what the active connections published into the queue."""
        active = self.active
        for conn in (active if len(active) == 1 else list(active)):  # (a drop changes it)
            try:
                n = conn.published()
                if n:
                    conn.idle = 0
                    self._read_locked(conn, n)
            except ProtocolError as e:
                self._drop_locked(conn, L.CLOSED_PROTOCOL, e)
                break  # the list changed: the others wait for the next look
        if self.handed >= EVENTS_EVERY:
            self.handed = 0
            self._poll_events_locked()
            if len(self.active) > 1:
                self._age_active_locked()

    def _age_active_locked(self) -> None:
        """While busy, every EVENTS_EVERY messages handed out: active
        connections that published nothing since age as by BUSY_AGE sleeps,
        and the quiet ones are demoted. A receiver that finds its messages
        while spinning never sleeps, so without this its idle senders would
        stay active and every receive would poll each of them."""
        if self.sleepers:
            return  # a sleeping thread relies on RX_SLEEPING as it is
        for conn in list(self.active):
            conn.idle += BUSY_AGE
            if conn.idle >= DEMOTE_AFTER:
                self._demote_locked(conn)

    def _read_locked(self, conn: Inbound, n: int) -> None:
        out: list[Message] = []
        try:
            conn.read(n, out)
        finally:  # what was read before a bad slot is kept
            pending = self.pending
            if pending:
                put = self.queue.put
                for msg in out:
                    txid = msg.txid
                    if txid and txid in pending:
                        self.replies[txid] = (msg, conn)
                    else:
                        put(msg.priority, (msg, conn))
            else:
                self.queue.put_all(out, conn)
            self.queued += len(out)
            if out:
                if conn.data_freed:
                    self._data_freed_locked(conn)
                if self.followers or self.async_loops:
                    self._notify_locked()  # a reply, or work, for another waiter

    def _data_freed_locked(self, conn: Inbound) -> None:
        """Payloads copied out of a data segment freed room: a sender may wait for it."""
        conn.data_freed = False
        full_fence()  # the tag stores before the TX_WAITING load (StoreLoad, even on x86)
        if conn.tx_waiting():
            conn.wake_sender()

    # -- credits ---------------------------------------------------------------

    def _flush_locked(self, conn: Inbound) -> None:
        """Give a connection back the credits its delivered messages freed."""
        n, conn.freed = conn.freed, 0
        room = conn.nslots - conn.owed()
        give = min(n, max(0, room))
        self.pool += n - give
        if give:
            conn.grant(give)
            if not TSO:
                full_fence()
            if conn.tx_waiting():
                conn.wake_sender()

    def _flush_all_locked(self) -> None:
        for conn in self.conns.values():
            if conn.freed:
                self._flush_locked(conn)

    def _fair_share(self) -> int:
        # Shared among the connections that send now: idle ones (demoted)
        # would otherwise make every active sender's share tiny, and each of
        # its sends a request for room.
        return max(1, self.capacity // max(1, len(self.active)))

    def _serve_wanters_locked(self) -> None:
        """Give room to connections that wait for it, from wherever it is free."""
        for conn in list(self.wanters):
            if conn not in self.wanters:  # served, or dropped, by a nested call meanwhile
                continue
            if conn.closed:
                self.wanters.remove(conn)
                continue
            if conn.freed:
                self._flush_locked(conn)
            left = conn.credits_left()
            share = self._fair_share()
            # Topped up to its share from the pool (else a sender that gets
            # back one freed credit at a time asks for room at every send);
            # others' unused credits are taken back only when it has none.
            if left < share and (self.pool or left <= 0):
                try:
                    conn.check_credits(left)  # no room for a sender that hides what it holds
                except ProtocolError as e:
                    self._drop_locked(conn, L.CLOSED_PROTOCOL, e)
                    continue
                if not self.pool:
                    self._gather_locked(conn)
                give = min(self.pool, share - max(0, left), max(0, conn.nslots - conn.owed()))
                if give > 0:
                    self.pool -= give
                    conn.grant(give)
                    left += give
                    if not TSO:
                        full_fence()
            if left <= 0:
                continue  # nothing free: it waits for the next message handed out
            self.wanters.remove(conn)
            conn.wake_sender()

    def _gather_locked(self, wanter: Inbound) -> None:
        """Refill the pool for ``wanter``: freed credits first, then unused ones
        taken back from the connections that hold the most."""
        for conn in self.conns.values():
            if conn is not wanter and conn.freed:
                self.pool += conn.freed
                conn.freed = 0
        if self.pool:
            return
        holders = sorted(
            (c for c in self.conns.values() if c is not wanter and not c.closed),
            key=Inbound.credits_left, reverse=True,
        )
        for conn in holders:  # (all of them: reclaim also catches one that hides credits)
            try:
                self.pool += conn.reclaim()
            except ProtocolError as e:
                self._drop_locked(conn, L.CLOSED_PROTOCOL, e)
            if self.pool >= self._fair_share():
                break

    # -- events: the door, doorbells, hang-ups -----------------------------------

    def _poll_events_locked(self) -> bool:
        """Look at the epoll without waiting (called now and then while busy);
        whether anything happened."""
        try:
            events = self.epoll.poll(0)
        except OSError:
            return False
        if events:
            self._events_locked(events)
        return bool(events)

    def _events_locked(self, events: list[tuple[int, int]]) -> None:
        for fd, ev in events:
            if fd == self.kick:
                eventfd.drain(self.kick)
                continue
            if fd == self.door.fileno():
                self._accept_locked()
                continue
            conn = self.conns.get(fd)
            if conn is not None:
                eventfd.drain(fd)
                if not conn.active:
                    self._promote_locked(conn)
                continue
            conn = self.hup.get(fd)
            if conn is not None and ev & _EPOLLHUP:
                self._hung_up_locked(conn)
        if self.wanters:
            self._serve_wanters_locked()

    def _promote_locked(self, conn: Inbound) -> None:
        self.active_version += 1
        conn.active = True
        conn.idle = 0
        self.active.append(conn)
        if not self.sleepers:
            conn.set_sleeping(False)

    def _demote_locked(self, conn: Inbound) -> None:
        """A quiet connection: from now on its sender writes the doorbell."""
        conn.set_sleeping(True)
        full_fence()
        if conn.published():
            conn.set_sleeping(False)  # something came meanwhile: keep it
            conn.idle = 0
            return
        conn.active = False
        self.active.remove(conn)
        self.active_version += 1
        if conn.freed:
            self._flush_locked(conn)

    def _accept_locked(self) -> None:
        """Read the door: new connections, and senders that wait for room."""
        door = self.door
        while True:
            try:
                make_room(L.CONNECT_FDS + MAPPING_FDS, self.kick, "a new sender's connection")
            except OutOfFds as e:
                if self._door_kind_locked() != L.DOOR_WANT:  # a WANT needs no fd
                    self._out_of_fds_locked(e)  # the record waits at the door
                    return
            try:
                data, anc, msg_flags, _ = door.recvmsg(64, _CONNECT_ANC, _RECV_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                data, anc, msg_flags = b"", [], 0
            fds: list[int] = []
            creds = None
            for level, kind, raw in anc:
                if level != _SOL_SOCKET:
                    continue
                if kind == _SCM_RIGHTS:
                    fds.extend(int.from_bytes(raw[i:i + 4], "little", signed=True)
                               for i in range(0, len(raw) - len(raw) % 4, 4))
                elif kind == _SCM_CREDENTIALS and len(raw) >= cmsg.CRED.size:
                    creds = cmsg.CRED.unpack_from(raw)
            if not data and not fds:
                if cmsg.peer_hung_up(door):
                    self._door_closed_locked()
                    return
                continue
            try:
                if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise ProtocolError("a door record was truncated")
                kind, nslots, token = door_record(data)
                if kind == L.DOOR_WANT:
                    if fds:
                        raise ProtocolError("a WANT record carried fds")
                    conn = self.tokens.get(token)
                    if conn is not None and conn not in self.wanters:
                        self.wanters.append(conn)
                    continue
                if token in self.tokens:
                    raise ProtocolError("a CONNECT record reused a live connection's token")
                conn = accept(nslots, token, fds, creds, self.max_slots)
            except ProtocolError as e:
                cmsg.close_fds(fds)
                self.errors.append(ProtocolError(f"refused a connection: {e}"))
                continue
            self._add_locked(conn)

    def _door_kind_locked(self) -> int:
        """The kind of the record at the door's head, peeked at without taking
        it nor its fds (0 if there is none, or it is no door record)."""
        try:
            data = self.door.recv(L.DOOR_RECORD.size, socket.MSG_PEEK | _DONTWAIT)
        except OSError:
            return 0
        return L.DOOR_RECORD.unpack(data)[2] if len(data) == L.DOOR_RECORD.size else 0

    def _add_locked(self, conn: Inbound) -> None:
        make_fd_room(max(conn.doorbell, conn.sock.fileno()))  # many clients: see linux.limits
        try:
            self.epoll.register(conn.doorbell, _EPOLLIN)
            self.epoll.register(conn.sock.fileno(), select.EPOLLRDHUP)
        except OSError:
            conn.close(L.CLOSED_REFUSED)
            return
        self.conns[conn.doorbell] = conn
        self.hup[conn.sock.fileno()] = conn
        self.tokens[conn.token] = conn
        conn.set_sleeping(True)  # not active yet: its first message rings
        give = min(self.pool, conn.nslots, self._fair_share() if len(self.conns) > 1 else self.capacity)
        if give:
            self.pool -= give
            conn.grant(give)
            if not TSO:
                full_fence()
            if conn.tx_waiting():
                conn.wake_sender()  # its first send may already wait for this
        else:
            self.wanters.append(conn)  # room comes when some is free
        self._promote_locked(conn)

    def _door_closed_locked(self) -> None:
        """Every holder of the door's sending end is gone: no new connections."""
        self.door_eof = True
        try:
            self.epoll.unregister(self.door.fileno())
        except OSError:
            pass
        service.forget(self.door.fileno())
        self._notify_locked()

    def _hung_up_locked(self, conn: Inbound) -> None:
        """A sender closed or died: read what it published, then let it go."""
        try:
            n = conn.published()
            if n:
                self._read_locked(conn, n)
        except ProtocolError as e:
            self.errors.append(e)
        except OutOfFds as e:
            # What it sent waits in the connection: keep it (its hang-up
            # stays readable, so the next look tries again) and say why.
            self._out_of_fds_locked(e)
            return
        self._remove_locked(conn, L.CLOSED_PORT)
        self._notify_locked()

    def _out_of_fds_locked(self, error: OutOfFds) -> None:
        """Report EMFILE to a receive, once however often it is met meanwhile."""
        if not any(isinstance(e, OutOfFds) for e in self.errors):
            self.errors.append(error)

    def _raise_error_locked(self) -> None:
        """Raise the oldest error, unless it is an OutOfFds that no longer holds
        (fds were freed since: the next look reads what waited for them)."""
        error = self.errors.popleft()
        if isinstance(error, OutOfFds):
            try:
                make_room(error.needed, self.kick)
            except OutOfFds:
                pass
            else:
                return
        raise error

    def _drop_locked(self, conn: Inbound, reason: int, error: Exception) -> None:
        pid = conn.sender.pid
        self.errors.append(ProtocolError(f"dropped the connection from pid {pid}: {error}"))
        self._remove_locked(conn, reason)

    def _remove_locked(self, conn: Inbound, reason: int) -> None:
        if conn.closed:
            return
        self.pool += conn.owed() + conn.freed  # what it held or freed comes back
        conn.freed = 0
        conn.tail = conn.allowed  # (nothing owed any more)
        self.conns.pop(conn.doorbell, None)
        self.hup.pop(conn.sock.fileno(), None)
        self.tokens.pop(conn.token, None)
        for fd in (conn.doorbell, conn.sock.fileno()):
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass
        if conn.active:
            conn.active = False
            self.active.remove(conn)
            self.active_version += 1
        if conn in self.wanters:
            self.wanters.remove(conn)
        conn.close(reason)
        if self.wanters and self.closed is None:
            self._serve_wanters_locked()

    # -- telling our own waiters -------------------------------------------------

    def _notify_locked(self) -> None:
        """Tell the waiting threads and coroutines of this process to look again."""
        if self.leader:
            os.eventfd_write(self.kick, 1)
        if self.followers:
            self.cond.notify_all()
        for loop in self.async_loops:
            try:
                loop.call_soon_threadsafe(_wake_futures, self.async_loops, loop)
            except RuntimeError:  # the loop is closed
                pass

    def _leave_locked(self) -> None:
        self.ops -= 1
        if not self.ops and self.closed is not None:
            self._finalize_locked()

    # -- asyncio -----------------------------------------------------------------

    async def recv_async(self, timeout: float | None, txid: int = 0,
                         timeout_exc: type[Exception] = ReceiveTimedOut) -> Message:
        """``recv`` for asyncio: waits in the event loop, no thread, no fd of its own."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else _now() + timeout
        while True:
            with self.mutex:
                msg = self._take_locked(txid)
                if msg is not None:
                    return msg
                remaining = None if deadline is None else deadline - _now()
                if remaining is not None and remaining <= 0:
                    if timeout == 0 and timeout_exc is ReceiveTimedOut:
                        raise Empty("no message is queued")
                    raise timeout_exc("no message arrived in time")
                fut = loop.create_future()
                self._async_enter_locked(loop, fut)
                ready = self._ready_locked()
            try:
                if not ready:
                    if remaining is None:
                        await fut
                    else:
                        await asyncio.wait_for(asyncio.shield(fut), remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                with relocked(self.mutex):
                    self._async_leave_locked(loop, fut)

    def _async_enter_locked(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        waiters = self.async_loops.get(loop)
        if waiters is None:
            waiters = self.async_loops[loop] = []
            loop.add_reader(self.epoll.fileno(), self._on_readable, loop)
        waiters.append(fut)
        self.ops += 1
        self._arm_locked()

    def _async_leave_locked(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        self._disarm_locked()
        waiters = self.async_loops.get(loop)
        if waiters is not None:
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                del self.async_loops[loop]
                try:
                    loop.remove_reader(self.epoll.fileno())
                except (ValueError, OSError):  # the epoll is closed already
                    pass
        self._leave_locked()

    def _on_readable(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop saw the epoll readable: process it here (it is level-triggered:
        left alone it would fire again), then wake the coroutines."""
        with self.mutex:
            if self.closed is None:
                self._poll_events_locked()
        _wake_futures(self.async_loops, loop)

    def want(self, token: int) -> None:
        """A sender of this process has no room (its connection's token): the
        receiver's bookkeeping for it, now, in the sender's thread."""
        with self.mutex:
            if self.closed is not None:
                return
            if self._poll_events_locked() and (self.leader or self.followers or self.async_loops):
                self._notify_locked()  # its connection may not be taken yet; others look again
            conn = self.tokens.get(token)
            if conn is not None and conn not in self.wanters:
                self.wanters.append(conn)
            if self.wanters:
                self._serve_wanters_locked()

    def service(self) -> None:
        """Do the receiver's bookkeeping now (connections, doorbells, room): a
        sender in this process needs it and may be the only thread running."""
        with self.mutex:
            if self.closed is None:
                if self._poll_events_locked() and (self.leader or self.followers or self.async_loops):
                    self._notify_locked()  # we took their events: they must look again
                if self.wanters:
                    self._serve_wanters_locked()

    # -- closing -----------------------------------------------------------------

    def shut_locked(self, error: Exception, reason: int) -> list[Message]:
        """Stop receiving here: end every connection with ``reason``, wake every
        waiter (they raise ``error``); returns the queued messages (the caller
        closes them once unlocked)."""
        if self.closed is not None:
            return []
        self.closed = error
        service.forget(self.door.fileno())
        dropped = [m for m, _ in self.queue.clear()]
        dropped.extend(m for m, _ in self.replies.values())
        self.replies.clear()
        for conn in list(self.conns.values()):
            self._remove_locked(conn, reason)
        self.queued = 0
        self._notify_locked()
        if not self.ops:
            self._finalize_locked()
        return dropped

    def drop_after_fork(self) -> None:
        """In a forked child: close our copies of the parent's fds, touching
        nothing shared (the parent goes on receiving). (The service thread
        is the parent's: it does not exist here.)"""
        for conn in self.conns.values():
            conn.forget()
        self.conns.clear()
        self.hup.clear()
        self.active.clear()
        self.queue.clear()
        self.replies.clear()
        self.epoll.close()
        os.close(self.kick)
        self.finalized = True

    def _finalize_locked(self) -> None:
        if self.finalized:
            return
        self.finalized = True
        service.forget(self.door.fileno())
        self.epoll.close()
        os.close(self.kick)

    def quiesce_locked(self) -> str | None:
        """Before the receive side leaves this process: take every credit back
        and read everything published. None if nothing is queued or in flight,
        else why not (the caller refuses)."""
        if self.queue or self.replies or self.pending:
            return f"{len(self.queue) + len(self.replies)} received messages are queued here (or a call waits)"
        for conn in list(self.conns.values()):
            try:
                self.pool += conn.reclaim() + conn.freed
                conn.freed = 0
                n = conn.published()
                if n:
                    self._read_locked(conn, n)
            except ProtocolError as e:
                self._drop_locked(conn, L.CLOSED_PROTOCOL, e)
        if self.queue:
            return f"{len(self.queue)} messages arrived meanwhile: receive them first"
        if any(conn.owed() for conn in self.conns.values()):
            return "a sender is in the middle of sending: try again"
        return None

    # -- introspection -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Queue depth and connections, read now (under the lock)."""
        with self.mutex:
            published = 0
            for conn in self.conns.values():
                try:
                    published += conn.published()
                except ProtocolError:
                    pass
            return {
                "capacity": self.capacity,
                "depth": self.queued + published,
                "senders": len(self.conns),
                "active": len(self.active),
            }

    def senders(self) -> list[tuple[int, int, int]]:
        with self.mutex:
            return [tuple(conn.sender) for conn in self.conns.values()]  # type: ignore[misc]


def _wake_futures(loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]],
                  loop: asyncio.AbstractEventLoop) -> None:
    for fut in list(loops.get(loop, ())):
        if not fut.done():
            fut.set_result(None)

