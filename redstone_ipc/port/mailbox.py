"""What ports and channels share: bounded, prioritised queues over SOCK_SEQPACKET.

A :class:`Mailbox` is the kernel object behind a port handle or a channel
endpoint. It has a *sending side* (a socket end to send records on, and the
credit eventfd of that direction) and, when this process may receive, a
*receiving side* (a socket end to read records from, and the credit eventfd
to give credits back to). For a port the two sides are the two ends of one
socketpair and share one credit eventfd; for a channel endpoint both sides
are the same socket end, with one credit eventfd per direction.

Sending
    Take a credit (``credits.py``), ``sendmsg`` one record with
    ``MSG_DONTWAIT`` (``message.wire``: handles move, big payloads go out of
    line). No credit: QueueFull, or sleep in ``poll`` on the credit eventfd and
    the socket (POLLHUP: the other side is gone) until room frees.

Receiving
    Records are drained from the socket into a per-process heap ordered by
    ``(-priority, arrival)``: highest priority first, FIFO within a
    priority, and so each sender's order within a priority. Every receive
    looks at the socket first (a ``poll`` with timeout 0 per record), so a
    high-priority message queued behind others is never overtaken by them.
    The credit goes back when the message is handed to the caller: capacity
    counts messages still in the socket *and* in the heap.

Blocking without spinning, from many threads
    One thread at a time (the *leader*) sleeps in ``poll`` on the socket;
    other threads wait on a condition variable (a futex) and are told when
    the leader has drained something they may want. Whoever leaves messages
    behind for others wakes them: followers through the condition, the
    leader through a private eventfd (*kick*) in its poll set, asyncio
    waiters through ``call_soon_threadsafe``. ``call`` replies are set aside
    for the thread that waits for them, so no other receiver can take them.

Threads
    Sends from threads of one process take turns on a send mutex (one
    ``sendmsg`` at a time, which the kernel does anyway); receives share a
    receive mutex, held only for non-blocking work. Closing the last handle
    in this process wakes every waiter of this process; the fds are closed by
    the last thread to leave a blocking call, and never while a send is in
    progress (an fd number reused by an unrelated ``open`` would otherwise be
    polled or read).

asyncio
    ``recv_async``/``send_async`` wait through ``loop.add_reader`` on a
    private epoll set holding the fds of that wait. Not on the fds directly:
    a port's sending socket is always readable (it is shut for reading) so
    waiting for its POLLHUP through ``add_reader`` would spin, and the loop
    allows one reader per fd while any number of coroutines may wait on one
    port. No thread is started; a wait costs an epoll set (a few us).

Every method whose name starts with ``_`` and ends in ``_locked`` runs with
``self._mutex`` held.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import heapq
import os
import select
import socket
import threading
import time
import weakref
from typing import Callable, ClassVar

from ..core.object import KernelObject
from ..errors import (
    Empty,
    InvalidHandle,
    IpcError,
    MessageTooLarge,
    ProtocolError,
    QueueFull,
)
from ..linux import eventfd
from ..message.message import Message
from ..message.wire import recv_message, send_message
from ..sched.lock import Condition, acquire_deferring, relocked
from . import credits
from .credits import WindowLock
from .sizing import Plan

__all__ = ["Mailbox", "SENT", "NO_CREDIT", "SOCKET_FULL", "adopt_seqpacket"]

# Results of one send attempt.
SENT = 0
NO_CREDIT = 1  # the queue holds `capacity` messages
SOCKET_FULL = 2  # the socket's byte budget is used up (only raw senders cause this)
WINDOW_BUSY = 3  # the window lock is held exclusively (a repair, or a hostile holder)
_WINDOW_RETRY = 0.002  # seconds between tries while WINDOW_BUSY: no fd says "unlocked"

_DONTWAIT = int(socket.MSG_DONTWAIT)
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_HUP = select.POLLHUP | select.POLLERR
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_now = time.monotonic
_take_credit = os.eventfd_read
_give_credit = os.eventfd_write
_flock = fcntl.flock
_LOCK_SH_NB = fcntl.LOCK_SH | fcntl.LOCK_NB
_LOCK_UN = fcntl.LOCK_UN
_push = heapq.heappush
_pop = heapq.heappop

_LIVE: weakref.WeakSet[Mailbox] = weakref.WeakSet()  # for the fork hook


def _after_fork_in_child() -> None:
    for box in list(_LIVE):
        box._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def adopt_seqpacket(fd: int, what: str) -> socket.socket:
    """A socket object for a received fd, which must be an AF_UNIX SOCK_SEQPACKET.

    ProtocolError otherwise, with ``fd`` left open (the caller closes it).
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise ProtocolError(f"{what} arrived as an fd that is not a socket") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise ProtocolError(f"{what} arrived as a socket that is not AF_UNIX SOCK_SEQPACKET")
    sock.settimeout(None)  # our calls pass MSG_DONTWAIT; no hidden poll loop in Python
    return sock


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else max(0.0, seconds * 1000.0)


class Mailbox(KernelObject):
    """The kernel object of a port or channel endpoint (see the module docstring)."""

    _gone_exc: ClassVar[type[IpcError]]  # the other side is gone (PortClosed, PeerClosed)

    # -- construction ------------------------------------------------------------

    def _init_mailbox(
        self,
        *,
        tx: socket.socket,
        out_fd: int,
        capacity: int,
        sizes: Plan,
        rx: socket.socket | None = None,
        in_fd: int = -1,
        window: WindowLock | None = None,
        request_fd: int = -1,
    ) -> None:
        KernelObject.__init__(self)
        self._capacity = capacity
        self._sizes = sizes
        self._mutex = threading.Lock()  # the receiving side and lifecycle
        self._cond = Condition(self._mutex)  # followers wait here
        self._smutex = threading.Lock()  # one sender of this process at a time
        self._ops = 0  # threads inside calls that use our fds outside the mutex
        self._dead = False  # the last local handle is gone
        self._shut = False  # the port was closed by its receiver (close())
        self._finalized = False
        # sending side
        self._tx = tx
        self._txfd = tx.fileno()
        self._out = out_fd
        self._max_record = sizes.max_record
        self._window = window
        self._request = request_fd  # repair requests (ports), -1 for channels
        self._parked: set[int] = set()  # eventfds of senders sleeping for room
        # receiving side
        self._rx = rx
        self._rxfd = rx.fileno() if rx is not None else -1
        self._in = in_fd
        self._recv_size = sizes.recv_size
        self._heap: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._eof = False  # every sender is gone: what is queued is all there will be
        self._closed = False  # receiving ends here: closed, or the object destroyed
        self._rx_gone = False  # the receive right left this process: rx to be closed
        self._pending: set[int] = set()  # txids of calls waiting for their reply
        self._replies: dict[int, Message] = {}
        self._leader = False
        self._followers = 0
        self._kick = -1
        self._poll_wait: select.poll | None = None
        self._async: list[Callable[[], None]] = []
        self._repair_pending = False
        self._repair_due = 0.0
        self._repair_retry = credits.RETRY_MIN
        now = select.poll()
        if rx is not None:
            now.register(self._rxfd, _POLLIN)
            if request_fd >= 0:
                now.register(request_fd, _POLLIN)
        self._poll_now = now.poll  # under the mutex only: one user at a time
        self._only_rx = [(self._rxfd, _POLLIN)]  # what poll returns when just rx is ready
        _LIVE.add(self)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_record(self) -> int:
        return self._max_record

    def _gone_error(self) -> IpcError:
        return self._gone_exc(self._gone_text)

    _gone_text = "the other side is gone"

    def _closed_error(self) -> Exception:
        if self._shut:
            return self._gone_exc("the port was closed")
        if self._rx_gone and not self._dead:
            return InvalidHandle("the receive right left this process (moved or released)")
        return InvalidHandle("the handle was closed in this process while in use")

    # -- sending -------------------------------------------------------------------

    def send(self, msg: Message, priority: int, timeout: float | None) -> None:
        """Queue ``msg``; ``timeout`` 0: QueueFull at once, None: wait for room."""
        state = self._try_send(msg, priority)
        if state:
            self._send_slow(msg, priority, timeout, state)

    def _try_send(self, msg: Message, priority: int) -> int:
        """One attempt: SENT, NO_CREDIT or SOCKET_FULL; raises when the peer is gone.

        Runs under the send mutex: threads of this process send one at a time
        (the kernel serialises them on the socket anyway), the window lock
        needs no depth count, and ``_destroy`` cannot close the fds under us.
        """
        if msg.handles:
            self._refuse_self_transfer(msg)
        smutex = self._smutex
        smutex.acquire()
        try:
            if self._dead:
                raise InvalidHandle("the handle was closed in this process while in use")
            window = self._window
            if window is not None:
                # Enter the window. Never a blocking flock: the lock is shared with
                # every holder of the port, and a sleep here would ignore timeout.
                try:
                    _flock(window.fd, _LOCK_SH_NB)
                except BlockingIOError:
                    return WINDOW_BUSY
            try:
                try:
                    _take_credit(self._out)
                except BlockingIOError:
                    return NO_CREDIT
                # From here until the credit is sent or given back we are in the
                # window: a kill now is what repairs are for (credits.py).
                try:
                    send_message(
                        self._tx, msg, priority=priority, txid=msg.txid,
                        flags=_DONTWAIT, max_record=self._max_record,
                    )
                except BlockingIOError:
                    _give_credit(self._out, 1)
                    return SOCKET_FULL
                except (BrokenPipeError, ConnectionResetError):
                    _give_credit(self._out, 1)
                    raise self._gone_error() from None
                except OSError as e:
                    _give_credit(self._out, 1)
                    if e.errno == errno.EMSGSIZE:
                        raise MessageTooLarge(f"the record is too large: {e}") from None
                    raise
                except (IpcError, ValueError, TypeError):
                    _give_credit(self._out, 1)  # refused before anything was sent
                    raise
                # Anything else (KeyboardInterrupt...) may have come after the
                # send: keep the credit. Losing one is repaired; inventing one
                # is not.
                return SENT
            finally:
                if window is not None:
                    _flock(window.fd, _LOCK_UN)  # leave the window
        finally:
            smutex.release()

    def _refuse_self_transfer(self, msg: Message) -> None:
        # Zircon refuses to write a channel into itself; so do we (it would
        # also destroy this object in the middle of sending on it).
        for handle in msg.handles:
            if handle._object is self:
                raise ValueError("a handle cannot be sent through its own port or endpoint")

    def _send_slow(self, msg: Message, priority: int, timeout: float | None, state: int) -> None:
        asked = False
        if state == NO_CREDIT:
            self._request_repair()
            asked = True
        deadline = None if timeout is None else _now() + timeout
        while True:
            if deadline is not None and _now() >= deadline:
                if self._peer_gone():
                    raise self._gone_error()
                raise QueueFull(f"the queue holds {self._capacity} messages")
            self._wait_room(state, deadline)
            state = self._try_send(msg, priority)
            if not state:
                return
            if state == NO_CREDIT and not asked:
                self._request_repair()
                asked = True

    def _request_repair(self) -> None:
        if self._request >= 0:
            _give_credit(self._request, 1)

    def _peer_gone(self) -> bool:
        """Whether the other side hung up (the sending socket reports POLLHUP)."""
        p = select.poll()
        p.register(self._txfd, 0)
        events = p.poll(0)
        return bool(events and events[0][1] & _HUP)

    def _room_fds(self, state: int) -> list[tuple[int, int]]:
        if state == WINDOW_BUSY:
            return [(self._txfd, 0)]  # only a hang-up; the wait itself is short
        if state == NO_CREDIT:
            return [(self._out, _POLLIN), (self._txfd, 0)]  # 0: POLLHUP/POLLERR only
        return [(self._txfd, _POLLOUT)]

    def _wait_room(self, state: int, deadline: float | None) -> None:
        """Sleep until a credit (or socket space) may be there, or the deadline."""
        park = eventfd.counter()  # how close() reaches this thread
        p = select.poll()
        for fd, mask in self._room_fds(state):
            p.register(fd, mask)
        p.register(park, _POLLIN)
        try:
            with self._mutex:
                if self._dead or self._shut:
                    raise self._closed_error()
                self._parked.add(park)
                self._ops += 1
            try:
                if state == WINDOW_BUSY:
                    wake_at = _now() + _WINDOW_RETRY
                    deadline = wake_at if deadline is None else min(deadline, wake_at)
                events = p.poll(_ms(None if deadline is None else deadline - _now()))
            finally:
                with relocked(self._mutex):  # even if a signal handler raises meanwhile
                    self._parked.discard(park)
                    self._leave_locked()
        finally:
            os.close(park)
        for fd, ev in events:
            if fd == self._txfd and ev & _HUP:
                raise self._gone_error()
        if self._dead or self._shut:
            raise self._closed_error()

    async def send_async(self, msg: Message, priority: int, timeout: float | None) -> None:
        """``send`` for asyncio: waits for room in the event loop, no thread."""
        state = self._try_send(msg, priority)
        if not state:
            return
        if state == NO_CREDIT:
            self._request_repair()
        deadline = None if timeout is None else _now() + timeout
        loop = asyncio.get_running_loop()
        while True:
            remaining = None if deadline is None else deadline - _now()
            if self._peer_gone():
                raise self._gone_error()
            if remaining is not None and remaining <= 0:
                raise QueueFull(f"the queue holds {self._capacity} messages")
            fds = self._room_fds(state)
            if state == WINDOW_BUSY:
                remaining = _WINDOW_RETRY if remaining is None else min(remaining, _WINDOW_RETRY)
            await self._await_fds(loop, [(fd, _EPOLLIN if ev == _POLLIN else
                                          _EPOLLOUT if ev == _POLLOUT else 0)
                                         for fd, ev in fds], remaining, sending=True)
            if self._dead or self._shut:
                raise self._closed_error()
            state = self._try_send(msg, priority)
            if not state:
                return
            if state == NO_CREDIT:
                self._request_repair()

    # -- receiving -----------------------------------------------------------------

    def try_recv(self) -> Message:
        """The next message, or Empty."""
        mutex = self._mutex
        mutex.acquire()
        try:
            msg = self._take_locked(None, 0)
        finally:
            mutex.release()
        if msg is None:
            raise Empty("no message is queued")
        return msg

    def recv(
        self, timeout: float | None, txid: int = 0, timeout_exc: type[Exception] = Empty
    ) -> Message:
        """The next message (or the reply ``txid``), sleeping in the kernel for it."""
        if timeout is None:
            deadline = None
        else:
            deadline = _now() + timeout
        mutex = self._mutex
        mutex.acquire()
        try:
            # Nothing buffered for us and time to wait: go straight to poll,
            # which returns at once if the socket holds something.
            ready: bool | None = (
                False if (timeout is None or timeout > 0) and not (self._heap and not txid)
                else None
            )
            if ready is False and not (
                txid or self._leader or self._closed or self._eof or self._repair_pending
            ):
                ready = self._lead_locked(timeout)  # nothing to look at before sleeping
            while True:
                msg = self._take_locked(ready, txid)
                if msg is not None:
                    return msg
                if deadline is None:
                    remaining = None
                else:
                    remaining = deadline - _now()
                    if remaining <= 0:
                        raise timeout_exc("no message arrived in time")
                if self._leader:
                    self._followers += 1
                    try:
                        self._cond.wait(remaining)
                    except BaseException:
                        # We may be the follower told to lead next: pass that on.
                        if not self._leader and self._followers > 1:
                            self._cond.notify()
                        raise
                    finally:
                        self._followers -= 1
                    ready = None
                else:
                    ready = self._lead_locked(remaining)
        finally:
            mutex.release()

    def _lead_locked(self, remaining: float | None) -> bool | None:
        """Sleep in poll as the leader; whether the socket is readable."""
        poller = self._poll_wait
        if poller is None:
            poller = self._make_wait_poller_locked()
        if self._repair_pending:
            left = max(0.0, self._repair_due - _now())
            remaining = left if remaining is None else min(remaining, left)
        self._leader = True
        self._ops += 1
        self._mutex.release()
        try:
            events = poller.poll(None if remaining is None else max(0.0, remaining * 1000.0))
        finally:  # also when poll raises: a signal handler's exception (KeyboardInterrupt)
            deferred = acquire_deferring(self._mutex)  # one may come while we wait for it, too
            self._leader = False
            if self._followers:
                self._cond.notify()  # one of them may have to lead now
            self._leave_locked()
            if deferred is not None:
                raise deferred  # with the mutex held, as the caller expects
        if events == self._only_rx and not self._closed:
            return True  # the common case: just the socket
        if self._closed:
            return None  # the caller's next look raises; our fds may be going
        ready: bool | None = False
        for fd, _ in events:
            if fd == self._rxfd:
                ready = True
            elif fd == self._kick:
                eventfd.drain(self._kick)
                ready = None  # woken by another thread: look at everything again
            else:
                self._repair_requested_locked()
        return ready

    def _make_wait_poller_locked(self) -> select.poll:
        self._kick = eventfd.counter()
        poller = select.poll()
        poller.register(self._rxfd, _POLLIN)
        poller.register(self._kick, _POLLIN)
        if self._request >= 0:
            poller.register(self._request, _POLLIN)
        self._poll_wait = poller
        return poller

    async def recv_async(
        self, timeout: float | None, txid: int = 0, timeout_exc: type[Exception] = Empty
    ) -> Message:
        """``recv`` for asyncio: waits in the event loop, no thread."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else _now() + timeout
        fds = [(self._rxfd, _EPOLLIN)]
        if self._request >= 0:
            fds.append((self._request, _EPOLLIN))
        while True:
            with self._mutex:
                msg = self._take_locked(None, txid)
            if msg is not None:
                return msg
            remaining = None if deadline is None else deadline - _now()
            if remaining is not None and remaining <= 0:
                raise timeout_exc("no message arrived in time")
            await self._await_fds(loop, fds, remaining)

    async def _await_fds(
        self,
        loop: asyncio.AbstractEventLoop,
        fds: list[tuple[int, int]],
        remaining: float | None,
        sending: bool = False,
    ) -> None:
        """Return when one of ``fds`` is ready, this process changes the queue
        (``_notify_locked``), or ``remaining`` seconds pass.

        A private epoll set per wait, watched by the loop's ``add_reader``: no
        thread, and any number of coroutines may wait on the same object.
        """
        fut = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        def wake_from_any_thread() -> None:
            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:  # the loop is closed
                pass

        ep = select.epoll(len(fds))
        try:
            for fd, events in fds:
                ep.register(fd, events)
            with self._mutex:
                # The caller's next attempt raises. A sender must not look at
                # _closed: that is the receiving side, which may have left
                # this process while sending goes on (returning would spin).
                if self._dead or (self._shut if sending else self._closed):
                    return
                self._ops += 1
                self._async.append(wake_from_any_thread)
            try:
                loop.add_reader(ep.fileno(), wake)
                timer = None if remaining is None else loop.call_later(remaining, wake)
                try:
                    await fut
                finally:
                    loop.remove_reader(ep.fileno())
                    if timer is not None:
                        timer.cancel()
            finally:
                with relocked(self._mutex):
                    self._async.remove(wake_from_any_thread)
                    self._leave_locked()
        finally:
            ep.close()

    def _take_locked(self, ready: bool | None, txid: int) -> Message | None:
        """The next message for this caller, or None.

        ``ready``: True if poll just said the socket is readable, None if
        unknown, False if it is known not to hold anything new.
        """
        if self._closed:
            raise self._closed_error()
        heap = self._heap
        if not self._eof and (ready is not False or (heap and not txid)):
            self._drain_locked(ready is True)
        if self._repair_pending:
            self._maybe_repair_locked()
        if txid:
            msg = self._replies.pop(txid, None)
        elif heap:
            msg = _pop(heap)[2]
        else:
            msg = None
        if msg is not None:
            _give_credit(self._in, 1)  # it left the queue: room for one more
            if (heap or self._replies) and (self._leader or self._followers or self._async):
                self._notify_locked()
            return msg
        if self._eof:
            raise self._gone_error()
        return None

    def _drain_locked(self, ready: bool) -> None:
        """Move every record in the socket into the heap (or to a waiting call).

        After each record, one ``poll(0)``: a message queued behind may have
        a higher priority, so all of them are looked at before one is chosen.
        """
        poll = self._poll_now
        only_rx = self._only_rx
        if not ready:
            events = poll(0)
            ready = events == only_rx or bool(events) and self._readable_locked(events)
        heap = self._heap
        pending = self._pending
        rx = self._rx
        assert rx is not None  # only a receiving mailbox drains
        size = self._recv_size
        while ready:
            try:
                msg = recv_message(rx, flags=_DONTWAIT, max_record=size)
            except BlockingIOError:
                return
            except ConnectionResetError:
                # The peer closed with records of its own left unread: the
                # kernel says so once, then hands over what the peer sent
                # before closing, then end of stream. Keep reading.
                events = poll(0)
                ready = events == only_rx or bool(events) and self._readable_locked(events)
                continue
            if msg is None:
                self._eof = True
                # Every waiter of this process must hear it, not just the
                # one that will lead next: each of them raises the end.
                if self._leader or self._followers or self._async:
                    self._notify_locked()
                return
            txid = msg.txid
            if txid and txid in pending:
                self._replies[txid] = msg
                if self._leader or self._followers or self._async:
                    self._notify_locked()  # the caller may be waiting elsewhere
            else:
                _push(heap, (-msg.priority, self._seq, msg))
                self._seq += 1
            events = poll(0)
            ready = events == only_rx or bool(events) and self._readable_locked(events)

    def _readable_locked(self, events: list[tuple[int, int]]) -> bool:
        """Whether the socket is among ``events``; note repair requests."""
        readable = False
        for fd, _ in events:
            if fd == self._rxfd:
                readable = True
            else:
                self._repair_requested_locked()
        return readable

    def _notify_locked(self) -> None:
        """Tell waiting threads and coroutines of this process to look again."""
        if self._leader and self._kick >= 0:
            _give_credit(self._kick, 1)
        if self._followers:
            self._cond.notify_all()
        for wake in self._async:
            wake()

    def _wake_all_locked(self) -> None:
        """Closing: every waiter of this process, senders included, must wake."""
        self._notify_locked()
        for park in self._parked:
            _give_credit(park, 1)

    # -- repairs (ports: see credits.py) ---------------------------------------------

    def _repair_requested_locked(self) -> None:
        eventfd.drain(self._request)
        self._repair_pending = True

    def _maybe_repair_locked(self) -> None:
        now = _now()
        if now < self._repair_due:
            return
        if self._repair_locked() is None:  # a sender is inside its window
            self._repair_due = now + self._repair_retry
            self._repair_retry = min(self._repair_retry * 2, credits.RETRY_MAX)
        else:
            self._repair_pending = False
            self._repair_due = now + credits.REPAIR_INTERVAL
            self._repair_retry = credits.RETRY_MIN

    def _repair_locked(self) -> int | None:
        """Give back credits lost by killed senders; None if one is mid-send."""
        window = self._window
        if window is None or self._rx is None or self._closed:
            return 0
        if not window.try_exclusive():
            return None
        try:
            if not self._eof:
                self._drain_locked(False)  # every credit taken is now a message here
            queued = len(self._heap) + len(self._replies)
            return credits.restore(self._in, self._capacity, queued)
        finally:
            window.release_exclusive()

    # -- closing ---------------------------------------------------------------------

    def buffered(self) -> int:
        """Messages received from the socket but not yet handed out (this process)."""
        with self._mutex:
            return len(self._heap) + len(self._replies)

    def shut(self) -> None:
        """Close the receiving side for everyone (a port's ``close``).

        ``shutdown`` wakes every sleeper: this process's receivers (the socket
        reads as hung up), senders everywhere (POLLHUP, then EPIPE). Queued
        messages are received and dropped, closing the handles they carry.
        """
        with self._mutex:
            if self._shut:
                return
            self._shut = True
            self._closed = True
            if self._rx is not None:
                try:
                    self._rx.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            dropped = self._discard_locked(drain=True)
            self._wake_all_locked()
        for msg in dropped:
            msg.close()

    def _discard_locked(self, drain: bool) -> list[Message]:
        dropped = [entry[2] for entry in self._heap]
        dropped.extend(self._replies.values())
        self._heap.clear()
        self._replies.clear()
        while drain and self._rx is not None and not self._eof:
            try:
                msg = recv_message(self._rx, flags=_DONTWAIT, max_record=self._recv_size)
            except (ProtocolError, MessageTooLarge):
                continue  # its fds are closed already
            except OSError:
                break
            if msg is None:
                break
            dropped.append(msg)
        return dropped

    def _discard_queued(self) -> None:
        """Receive and drop every record still queued on the receiving end
        (closing the handles they carry), e.g. before the end travels without
        the receive right."""
        with self._mutex:
            dropped = self._discard_locked(drain=True)
        for msg in dropped:
            msg.close()

    def drop_receive(self) -> None:
        """This process gave up its last receive right (moved or released):
        close its copy of the receiving end, so that it no longer keeps the
        queue alive (a receiver elsewhere that dies must close the port).
        The messages buffered here go (their handles closed)."""
        with self._mutex:
            if self._rx is None or self._rx_gone or self._dead:
                return
            self._rx_gone = True
            dropped = self._close_here_locked()
        for msg in dropped:
            msg.close()

    def _close_here_locked(self) -> list[Message]:
        """Closed for this process: take out the buffered messages (returned, for
        the caller to close once unlocked; those still in the socket stay for
        receivers elsewhere, or go with it), wake every waiter, and close what
        is due now if no thread is in a blocking call."""
        self._closed = True
        dropped = self._discard_locked(drain=False)
        self._wake_all_locked()
        if not self._ops:
            self._idle_locked()
        return dropped

    def _leave_locked(self) -> None:
        """A wait that counted itself in (``_ops += 1``) is over."""
        self._ops -= 1
        if not self._ops:
            self._idle_locked()

    def _idle_locked(self) -> None:
        """No thread uses the fds any more: close what is due."""
        if self._dead:
            self._finalize_locked()
        elif self._rx_gone and self._rx is not None and self._rx is not self._tx:
            self._rx.close()
            self._rx = None

    def _destroy(self) -> None:
        with self._smutex, self._mutex:  # no send in progress from here on
            self._dead = True
            dropped = self._close_here_locked()
        for msg in dropped:
            msg.close()

    def _finalize_locked(self) -> None:
        """Close the fds (once, when no thread uses them any more)."""
        if self._finalized:
            return
        self._finalized = True
        _LIVE.discard(self)
        self._tx.close()
        if self._rx is not None and self._rx is not self._tx:
            self._rx.close()
        for fd in {self._out, self._in, self._request, self._kick}:
            if fd >= 0:
                os.close(fd)
        if self._window is not None:
            self._window.close()

    def _after_fork(self) -> None:
        """In a forked child: only the forking thread exists; reset what the
        parent's other threads may have held, and stop sharing private fds."""
        self._mutex = threading.Lock()
        self._cond = Condition(self._mutex)  # followers wait here
        self._leader = False
        self._followers = 0
        self._ops = 0
        self._smutex = threading.Lock()
        self._async = []
        self._pending = set()
        for park in self._parked:  # the parent's sleeping senders' eventfds
            os.close(park)
        self._parked = set()
        if self._kick >= 0:  # shared with the parent: it would steal its wake-ups
            os.close(self._kick)
            self._kick = -1
            self._poll_wait = None
        if self._window is not None:
            self._window.after_fork()

    def _requeue_locked(self, msg: Message) -> None:
        """Put a message that was set aside (a late reply) in the queue for recv."""
        _push(self._heap, (-msg.priority, self._seq, msg))
        self._seq += 1

    def _has_buffered_locked(self) -> bool:
        return bool(self._heap or self._replies or self._pending)

    def _refuse_transfer_if_buffered(self) -> None:
        with self._mutex:
            if self._has_buffered_locked():
                raise IpcError(
                    f"{len(self._heap) + len(self._replies)} received messages are buffered "
                    "in this process (or a call is waiting): receive them before sending "
                    "the receiving handle away"
                )

