"""Exception safety of every blocking call: a signal handler that raises.

A Python signal handler may raise (KeyboardInterrupt is the usual one) while
a call sleeps in the kernel. The exception must leave the call with nothing
behind: no count of threads "inside" a call (which keeps fds open after
close), no lock or turn still taken, no permit consumed, no phantom waiter
in shared memory, and no contract broken (Condition.wait holds the mutex
again when it raises).

Every test runs in a forked child (the SIGALRM handler and its timer stay
out of pytest). The handler records the Python function it interrupted, so
each test checks that the exception really came from the blocking sleep and
not from the set-up before it. Then it checks that the object still works,
that the shared state is consistent (seen from another process where that
needs one), and that closing everything gives back every fd.

A call also takes locks back after its sleep, in ``finally`` blocks. Tests
named "...taking the ... lock back" make another thread hold that lock at
that instant and send the signal (``pthread_kill``) only once the call is
seen asleep on it (``/proc/self/task/<tid>/syscall``): no timer there.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from _proc import FUTEX_NR, blocked_syscall, futex_sleeping, wait_futex_sleep
from conftest import fork_child, open_fds, run_in_child, wait_child
from redstone_ipc import (
    Channel,
    Condition,
    Empty,
    Event,
    Futex,
    FutexWord,
    Mapping,
    Message,
    Mutex,
    NotMapped,
    PeerClosed,
    Pipe,
    Port,
    QueueFull,
    Semaphore,
    SharedMemory,
    TimedOut,
    WaitQueue,
)
from redstone_ipc.linux import atomic, robust
from redstone_ipc.port import SEND_RIGHTS

pytestmark = pytest.mark.timeout(60)

PAGE = mmap.PAGESIZE

# Layout of the shared region used by the shared-memory tests.
MUTEX = 0  # Mutex.SIZE = 64
HELD = 64  # Event: the other process holds the mutex
GO = 72  # Event: the other process may go on
SEM = 80  # Semaphore (count, waiters)
WQ = 88  # WaitQueue
COND = 96  # Condition (seq, waiters)
RUNG = 104  # u32: how many times the SIGALRM handler ran
FLAG = 108  # u32: a predicate's data
FUTEX = 112  # u32: a bare futex word

DELAY = 0.1  # s before the timer fires: the call is asleep by then


class Alarm(Exception):
    """What the SIGALRM handler raises: an exception the library knows nothing of."""


def _ring(counter: int = 0):
    """A SIGALRM handler that raises Alarm; it records the function it
    interrupted in ``ring.where``, and counts its runs at ``counter`` (an
    address in shared memory) if given."""
    where: list[str] = []

    def ring(signum, frame) -> None:
        where.append(frame.f_code.co_name if frame is not None else "?")
        if counter:
            atomic.fetch_add_u32(counter, 1)
        raise Alarm()

    ring.where = where  # type: ignore[attr-defined]
    return ring


@contextlib.contextmanager
def interrupted(*sleeping_in: str, delay: float = DELAY) -> Iterator[None]:
    """Expect the block to raise Alarm from a timer that fires after ``delay``
    seconds, while the block sleeps in one of the functions ``sleeping_in``."""
    ring = _ring()
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, delay)
    try:
        with pytest.raises(Alarm):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ring.where and ring.where[0] in sleeping_in, (
        f"the handler ran in {ring.where}, not asleep in {sleeping_in}"
    )


def warm_service() -> None:
    """The receive service (a thread, an epoll, an eventfd) lives as long as the
    process once started: start it before counting fds."""
    with Port() as port:
        port.send(Message(0))
        port.recv(timeout=5)


def u32(m, offset: int) -> int:
    return atomic.load_u32(m.word_address(offset))


# -- ports and channels -------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_send_interrupted_while_waiting_for_room_in_a_full_port_frees_every_fd(timeout):
    def child() -> None:
        warm_service()
        before = open_fds()
        port = Port(capacity=1)
        client = port.duplicate(SEND_RIGHTS)
        client.send(Message(1))  # the port is full
        with interrupted("_wait_room"):
            client.send(Message(2), timeout=timeout)  # sleeps in poll for a credit
        # The port still works, and its capacity is still exactly 1.
        assert port.recv(timeout=5).msg_type == 1
        client.send(Message(3), timeout=5)
        with pytest.raises(QueueFull):
            client.send(Message(4), timeout=0)
        assert port.recv(timeout=5).msg_type == 3
        with pytest.raises(Empty):
            port.try_recv()  # the interrupted message was never sent
        client.close()
        port.close()
        assert open_fds() == before, "an interrupted send must not keep fds open"

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_port_recv_interrupted_as_a_follower_of_another_threads_poll_frees_every_fd(timeout):
    def child() -> None:
        warm_service()
        before = open_fds()
        port = Port()
        client = port.duplicate(SEND_RIGHTS)
        client.send(Message(0))  # this process receives on it (its inbox is made)
        port.recv(timeout=5)
        got: list[Message] = []

        def leader() -> None:
            # Only the main thread runs handlers; keep the signal off this one.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            got.append(port.recv(timeout=10))

        thread = threading.Thread(target=leader)
        thread.start()
        deadline = time.monotonic() + 10
        while not port._object.receive.inbox.leader:  # the thread sleeps in poll as the leader
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with interrupted("wait"):  # threading.Condition.wait: a follower
            port.recv(timeout=timeout)
        assert port._object.receive.inbox.followers == 0, "the interrupted follower is still counted"
        client.send(Message(5))
        thread.join(10)
        assert not thread.is_alive() and [m.msg_type for m in got] == [5]
        client.send(Message(6))
        assert port.recv(timeout=5).msg_type == 6
        client.close()
        port.close()
        assert open_fds() == before

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_channel_recv_interrupted_then_the_peer_process_is_still_heard_and_fds_are_freed(timeout):
    def child() -> None:
        warm_service()
        before = open_fds()
        mine, theirs = Channel.create_pair()

        def peer() -> None:
            mine.close()
            assert theirs.recv(timeout=10).msg_type == 1  # "go"
            theirs.send(Message(2, b"after the interruption"))
            theirs.close()

        pid = fork_child(peer)
        theirs.close()
        with interrupted("_lead_locked"):
            mine.recv(timeout=timeout)
        mine.send(Message(1))
        assert mine.recv(timeout=10).payload == b"after the interruption"
        assert wait_child(pid) == 0
        with pytest.raises(PeerClosed):
            mine.recv(timeout=10)  # the peer is gone: end of the channel, no hang
        mine.close()
        assert open_fds() == before

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_call_interrupted_while_waiting_for_its_reply_leaves_the_late_reply_to_recv(timeout):
    def child() -> None:
        warm_service()
        before = open_fds()
        client, server_end = Channel.create_pair()

        def server() -> None:
            client.close()
            first = server_end.recv(timeout=10)
            assert first.txid
            go = server_end.recv(timeout=10)  # the client was interrupted
            assert go.msg_type == 99 and not go.txid
            late = Message(first.msg_type + 100)
            late.txid = first.txid
            server_end.send(late)
            second = server_end.recv(timeout=10)
            reply = Message(second.msg_type + 100)
            reply.txid = second.txid
            server_end.send(reply)
            server_end.close()

        pid = fork_child(server)
        server_end.close()
        request = Message(1)
        with interrupted("_lead_locked"):
            client.call(request, timeout=timeout)  # sleeps for the reply, which does not come yet
        inbox = client._object.receive.inbox
        assert not inbox.pending and not inbox.replies  # the call is over
        client.send(Message(99))
        late = client.recv(timeout=10)  # no longer anyone's reply: an ordinary message
        assert (late.msg_type, late.txid) == (101, request.txid)
        assert client.call(Message(2), timeout=10).msg_type == 102
        assert wait_child(pid) == 0
        client.close()
        assert open_fds() == before

    run_in_child(child)


def _futex_address(tid: int) -> int | None:
    """The address thread ``tid`` of this process sleeps on in futex(2), if it does."""
    fields = blocked_syscall(os.getpid(), tid)
    return int(fields[1], 16) if fields and fields[0] == str(FUTEX_NR) else None


def _blocked_in_futex(tid: int, checks: int = 20, other_than: int | None = None) -> int:
    """Return (the address) once thread ``tid`` of this process is asleep in
    futex(2) (on a lock; on another one than ``other_than`` if given) and stays
    there for ``checks`` looks a millisecond apart: not just passing through
    (waiting for the GIL, which the looks here let go of)."""
    deadline = time.monotonic() + 10
    seen, last = 0, None
    while seen < checks:
        assert time.monotonic() < deadline, f"thread {tid} never slept on a lock"
        address = _futex_address(tid)
        if address is None or address == other_than or address != last:
            seen = 0
        else:
            seen += 1
        last = address
        time.sleep(0.001)
    assert last is not None
    return last


def test_recv_interrupted_while_taking_the_mailbox_lock_back_after_poll_frees_every_fd():
    """The leader's poll returns (a message came) while another thread of the
    process holds the mailbox's mutex (as a try_recv does for a moment); the
    handler raises while the leader waits for that mutex."""

    def child() -> None:
        warm_service()
        before = open_fds()
        port = Port()
        client = port.duplicate(SEND_RIGHTS)
        client.send(Message(0))  # connected (connecting takes the inbox's mutex)
        port.recv(timeout=5)
        obj = port._object.receive.inbox
        main_tid = threading.get_native_id()
        ring = _ring()
        signal.signal(signal.SIGALRM, ring)
        stolen: list[bool] = []

        def other_thread() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            deadline = time.monotonic() + 10
            while not (obj.leader and obj.ops):  # the main thread sleeps in epoll
                assert time.monotonic() < deadline
                time.sleep(0.001)
            obj.mutex.acquire()
            try:
                client.send(Message(1))  # poll returns; the leader waits for the mutex
                _blocked_in_futex(main_tid)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
                while not ring.where:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                time.sleep(0.05)  # the main thread goes on, wherever the exception took it
            finally:
                try:
                    obj.mutex.release()
                except RuntimeError:  # someone else released our hold of the lock
                    stolen.append(True)

        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            with pytest.raises(Alarm):
                port.recv()
        finally:
            thread.join(20)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        assert len(ring.where) == 1  # it ran once, while the main thread waited for the lock
        assert not stolen, "recv released a mutex held by another thread"
        assert not obj.leader, "no thread leads any more, yet the inbox says one does"
        assert obj.ops == 0, "the interrupted recv is still counted inside a blocking call"
        assert port.recv(timeout=5).msg_type == 1
        client.close()
        port.close()
        assert open_fds() == before

    run_in_child(child)


def test_send_interrupted_while_taking_the_outlet_lock_back_after_room_frees_every_fd():
    """A sender sleeps for room in a full port; another thread of the process
    holds the outlet's lock (as a sender does for a moment) and takes a
    message, which gives the sleeper room; the handler raises while the
    sender waits for that lock."""

    def child() -> None:
        warm_service()
        before = open_fds()
        port = Port(capacity=1)
        client = port.duplicate(SEND_RIGHTS)
        outlet = port._object.outlet or port._object.get_outlet()
        client.send(Message(1))  # full
        main_tid = threading.get_native_id()
        ring = _ring()
        signal.signal(signal.SIGALRM, ring)
        taken: list[Message] = []

        def receiving_thread() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            deadline = time.monotonic() + 10
            while not outlet.room_leader:  # the main thread sleeps for room
                assert time.monotonic() < deadline
                time.sleep(0.001)
            with outlet.lock:
                taken.append(port.try_recv())  # room: the sleeper wakes...
                _blocked_in_futex(main_tid)  # ...and waits for the lock we hold
                signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
                while not ring.where:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                time.sleep(0.05)

        thread = threading.Thread(target=receiving_thread)
        thread.start()
        try:
            with pytest.raises(Alarm):
                client.send(Message(2), timeout=None)
        finally:
            thread.join(20)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        assert len(ring.where) == 1 and [m.msg_type for m in taken] == [1]
        assert not outlet.room_leader and outlet.waiting == 0, "the interrupted send is still counted"
        client.send(Message(3), timeout=5)
        assert port.recv(timeout=5).msg_type == 3
        client.close()
        port.close()
        assert open_fds() == before

    run_in_child(child)


def test_recv_interrupted_as_a_follower_while_taking_the_mailbox_lock_back_frees_every_fd():
    """A follower (main thread) is notified by a thread that still holds the
    mailbox's mutex, as the leader does when it leaves poll; the handler
    raises while the follower waits to take the mutex back."""

    def child() -> None:
        warm_service()
        before = open_fds()
        port = Port()
        client = port.duplicate(SEND_RIGHTS)
        client.send(Message(0))  # this process receives on it (its inbox is made)
        port.recv(timeout=5)
        obj = port._object.receive.inbox
        main_tid = threading.get_native_id()
        ring = _ring()
        signal.signal(signal.SIGALRM, ring)
        got: list[Message] = []
        stolen: list[bool] = []

        def leader() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            got.append(port.recv(timeout=10))

        def notifier() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            deadline = time.monotonic() + 10
            while not obj.followers:  # the main thread follows the leader
                assert time.monotonic() < deadline
                time.sleep(0.001)
            asleep_on = _blocked_in_futex(main_tid)  # its waiter lock
            obj.mutex.acquire()
            try:
                obj.cond.notify()
                _blocked_in_futex(main_tid, other_than=asleep_on)  # now on the mutex
                signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
                while not ring.where:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                time.sleep(0.05)
            finally:
                try:
                    obj.mutex.release()
                except RuntimeError:
                    stolen.append(True)

        threads = [threading.Thread(target=leader), threading.Thread(target=notifier)]
        threads[0].start()
        deadline = time.monotonic() + 10
        while not (obj.leader and obj.ops):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        threads[1].start()
        try:
            with pytest.raises(Alarm):
                port.recv()
        finally:
            threads[1].join(20)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        assert len(ring.where) == 1
        assert not stolen, "recv released a mutex held by another thread"
        assert obj.followers == 0
        client.send(Message(1))
        threads[0].join(10)
        assert [m.msg_type for m in got] == [1]
        client.send(Message(2))
        assert port.recv(timeout=5).msg_type == 2
        client.close()
        port.close()
        assert open_fds() == before

    run_in_child(child)


def test_call_interrupted_again_while_it_cleans_up_leaves_no_call_pending():
    """The handler raises twice: first while call() waits to send (another
    thread is sending), then while call() takes the endpoint's mutex (held by
    another thread) to end the transaction. The call must still end: a txid
    left pending would keep its reply from recv for ever, and the endpoint
    from ever being transferred."""

    def child() -> None:
        warm_service()
        before = open_fds()
        client, server_end = Channel.create_pair()
        obj = client._object
        inbox = obj.get_inbox()
        outlet = obj.get_outlet()
        main_tid = threading.get_native_id()
        rung = SharedMemory.create(PAGE)
        m = rung.map()
        ring = _ring(m.word_address(RUNG))
        signal.signal(signal.SIGALRM, ring)

        def server() -> None:
            client.close()
            request = server_end.recv(timeout=10)
            reply = Message(request.msg_type + 100)
            reply.txid = request.txid
            server_end.send(reply)
            server_end.close()

        def other_thread() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            deadline = time.monotonic() + 10
            try:
                while not inbox.pending:  # the call has started
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                sending = _blocked_in_futex(main_tid)  # waits for the outlet lock
                with inbox.mutex:
                    for rings in (1, 2):
                        if rings == 2:
                            _blocked_in_futex(main_tid, other_than=sending)  # ending the call
                        signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
                        while u32(m, RUNG) < rings:
                            assert time.monotonic() < deadline
                            time.sleep(0.001)
                    time.sleep(0.05)
            finally:
                outlet.lock.release()

        outlet.lock.acquire()  # this thread "sends" until other_thread says otherwise
        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            with pytest.raises(Alarm):
                client.call(Message(1))
        finally:
            thread.join(20)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        assert u32(m, RUNG) == 2
        assert not inbox.pending, "the interrupted call is still waiting for its reply"
        # The endpoint can move (nothing buffered or pending) and still works there.
        port = Port()
        carrier = Message(7)
        carrier.attach_handle(client)
        port.send(carrier)
        moved = port.recv(timeout=5).handles[0]
        pid = fork_child(server)
        server_end.close()
        assert moved.call(Message(2), timeout=10).msg_type == 102
        assert wait_child(pid) == 0
        moved.close()
        port.close()
        m.unmap()
        rung.close()
        assert open_fds() == before

    run_in_child(child)


# -- pipes -----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_pipe_read_interrupted_then_a_writer_process_is_read_to_the_end_and_fds_are_freed(timeout):
    def child() -> None:
        before = open_fds()
        reader, writer = Pipe.create()
        go_reader, go_writer = Pipe.create()

        def writer_process() -> None:
            reader.close()
            go_writer.close()
            assert go_reader.read(1, timeout=10) == b"g"
            writer.write(b"late bytes")
            writer.close()

        pid = fork_child(writer_process)
        writer.close()
        go_reader.close()
        with interrupted("_wait"):
            reader.read(100, timeout=timeout)  # nothing yet: sleeps in poll
        go_writer.write(b"g")
        assert reader.read(100, timeout=10) == b"late bytes"
        assert reader.read(100, timeout=10) == b""  # end of stream once the writer left
        assert wait_child(pid) == 0
        assert reader._object._users == 0
        reader.close()
        go_writer.close()
        assert open_fds() == before, "an interrupted read must not keep the fd open"

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_pipe_write_interrupted_on_a_full_pipe_gives_back_its_turn_and_frees_every_fd(timeout):
    def child() -> None:
        before = open_fds()
        reader, writer = Pipe.create(capacity=PAGE)
        size = writer.capacity
        with interrupted("_wait"):
            writer.write(b"x" * (3 * size), timeout=timeout)  # fills the pipe, then sleeps in poll
        got = reader.read(4 * size, timeout=5)  # what got out before: about one capacity
        assert got == b"x" * len(got) and size // 2 <= len(got) < 3 * size
        # The turn was given back: a write in this thread does not wait for it.
        assert writer.write(b"abc", timeout=5) == 3
        assert reader.read(10, timeout=5) == b"abc"
        assert writer._object._users == 0
        writer.close()
        assert reader.read(10, timeout=5) == b""
        reader.close()
        assert open_fds() == before, "an interrupted write must not keep the fd open"

    run_in_child(child)


def _asleep_in_a_syscall_other_than_futex(tid: int, checks: int = 20) -> None:
    """Return once thread ``tid`` of this process stays blocked in one system
    call that is not futex(2) (poll, here) for ``checks`` looks."""
    deadline = time.monotonic() + 10
    seen = 0
    while seen < checks:
        assert time.monotonic() < deadline, f"thread {tid} never slept in poll"
        nr = (blocked_syscall(os.getpid(), tid) or ["-1"])[0]
        seen = seen + 1 if nr not in ("running", "-1", str(FUTEX_NR)) else 0
        time.sleep(0.001)


def test_pipe_read_interrupted_while_leaving_the_end_with_its_lock_taken_frees_the_fd():
    """The read's poll returns (bytes came) while another thread holds the end's
    lock (as a concurrent read or write does entering or leaving it); the
    handler raises while the read waits for that lock to count itself out."""

    def child() -> None:
        before = open_fds()
        reader, writer = Pipe.create()
        obj = reader._object
        main_tid = threading.get_native_id()
        ring = _ring()
        signal.signal(signal.SIGALRM, ring)

        def other_thread() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            _asleep_in_a_syscall_other_than_futex(main_tid)  # the read sleeps in poll
            deadline = time.monotonic() + 10
            with obj._lock:
                writer.write(b"x")  # the read wakes, reads, and waits for the lock
                _blocked_in_futex(main_tid)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)
                while not ring.where:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                time.sleep(0.05)

        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            with pytest.raises(Alarm):
                reader.read(10)
        finally:
            thread.join(20)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        assert len(ring.where) == 1
        assert obj._users == 0, "the interrupted read is still counted as a user of the fd"
        writer.write(b"y")
        assert reader.read(10, timeout=5) == b"y"
        reader.close()
        writer.close()
        assert open_fds() == before, "the reader's fd must close with its handle"

    run_in_child(child)


# -- shared-memory primitives ---------------------------------------------------------


@contextlib.contextmanager
def region() -> Iterator[Mapping]:
    """A fresh shared region, mapped; fds checked when it is gone."""
    before = open_fds()
    shm = SharedMemory.create(PAGE)
    m = shm.map()
    yield m
    m.unmap()  # MappingInUse if a primitive (or a futex sleeper) still pins it
    shm.close()
    assert open_fds() == before, "fds leaked"


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_mutex_lock_interrupted_while_another_process_holds_it_leaves_it_clean(timeout):
    def child() -> None:
        with region() as m:
            lock = Mutex.create(m, MUTEX)
            held, go = Event.create(m, HELD), Event.create(m, GO)

            def holder() -> None:
                mine = Mutex(m, MUTEX)
                assert mine.acquire(timeout=10)
                Event(m, HELD).set()
                assert Event(m, GO).wait(timeout=10)
                mine.release()

            pid = fork_child(holder)
            assert held.wait(timeout=10)
            rl = robust.current()
            with interrupted("futex_wait"):
                lock.acquire(timeout=timeout)  # contended: sleeps in futex_wait
            assert not lock.owned()
            assert rl.entries() == []  # nothing linked into our robust list
            if rl.enabled:
                assert rl._pending.value == 0  # list_op_pending cleared
            assert u32(m, MUTEX) & robust.OWNER_MASK == pid  # still the holder's
            go.set()
            assert wait_child(pid) == 0
            assert u32(m, MUTEX) == 0  # released cleanly: no owner, no waiters left
            # Another process can lock and unlock it...
            def other() -> None:
                mine = Mutex(m, MUTEX)
                assert mine.acquire(timeout=10) and not mine.owner_died
                mine.release()
                mine.close()

            assert wait_child(fork_child(other)) == 0
            # ...and so can we.
            assert lock.acquire(timeout=10) and not lock.owner_died
            lock.release()
            for obj in (lock, held, go):
                obj.close()

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_semaphore_acquire_interrupted_at_zero_takes_no_permit_and_leaves_no_waiter(timeout):
    def child() -> None:
        with region() as m:
            sem = Semaphore.create(m, SEM, 0)
            with interrupted("futex_wait"):
                sem.acquire(timeout=timeout)
            assert sem.value == 0
            assert u32(m, SEM + 4) == 0, "the interrupted acquire is still counted as a waiter"

            def waiter() -> None:
                mine = Semaphore(m, SEM)
                assert mine.acquire(timeout=10)
                mine.close()

            pid = fork_child(waiter)
            wait_futex_sleep(pid, m.word_address(SEM))
            assert u32(m, SEM + 4) == 1  # exactly the one really waiting
            sem.release()
            assert wait_child(pid) == 0
            assert (sem.value, u32(m, SEM + 4)) == (0, 0)  # its permit went to the waiter
            sem.release()
            assert sem.acquire(timeout=0) and sem.value == 0
            sem.close()

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_event_wait_interrupted_leaves_no_phantom_waiter(timeout):
    def child() -> None:
        with region() as m:
            event = Event.create(m, HELD)
            with interrupted("futex_wait"):
                event.wait(timeout=timeout)
            assert not event.is_set()
            assert Futex.wake(m, HELD, 10) == 0  # nobody is asleep on it

            def waiter() -> None:
                mine = Event(m, HELD)
                assert mine.wait(timeout=10)
                mine.close()

            pid = fork_child(waiter)
            wait_futex_sleep(pid, m.word_address(HELD))
            event.set()
            assert wait_child(pid) == 0
            assert event.wait(timeout=0)
            event.clear()
            assert not event.wait(timeout=0.01)
            event.close()

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_waitqueue_wait_interrupted_leaves_no_phantom_waiter(timeout):
    def child() -> None:
        with region() as m:
            queue = WaitQueue.create(m, WQ)
            with interrupted("futex_wait"):
                queue.wait_until(lambda: u32(m, FLAG), timeout=timeout)
            assert queue.wake_all() == 0, "an interrupted waiter must not be counted as woken"

            def waiter() -> None:
                mine = WaitQueue(m, WQ)
                assert mine.wait_until(lambda: u32(m, FLAG), timeout=10) == 1
                mine.close()

            pid = fork_child(waiter)
            wait_futex_sleep(pid, m.word_address(WQ))
            atomic.store_u32(m.word_address(FLAG), 1)
            assert queue.wake_all() == 1  # exactly the one really asleep
            assert wait_child(pid) == 0
            queue.close()

    run_in_child(child)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_condition_wait_interrupted_holds_the_mutex_again_and_leaves_no_waiter(timeout):
    def child() -> None:
        with region() as m:
            lock = Mutex.create(m, MUTEX)
            cond = Condition.create(m, COND, lock)
            with cond:
                with interrupted("futex_wait"):
                    cond.wait(timeout)  # releases the mutex, sleeps on seq
                assert lock.owned(), "wait() must hold the mutex again when it raises"
                assert u32(m, COND + 4) == 0, "the interrupted wait is still counted"
                assert cond.notify() == 0  # nobody to wake: seq untouched
                seq = u32(m, COND)

                def notifier() -> None:
                    mx = Mutex(m, MUTEX)
                    cv = Condition(m, COND, mx)
                    wait_futex_sleep(os.getppid(), m.word_address(COND))
                    with cv:
                        atomic.store_u32(m.word_address(FLAG), 1)
                        assert cv.notify() == 1  # exactly the one really asleep
                    cv.close()
                    mx.close()

                pid = fork_child(notifier)
                assert cond.wait_for(lambda: u32(m, FLAG), timeout=10) == 1
                assert lock.owned() and u32(m, COND) == seq + 1
            assert wait_child(pid) == 0
            assert not lock.locked() and u32(m, COND + 4) == 0
            cond.close()
            lock.close()

    run_in_child(child)


def test_condition_wait_interrupted_while_taking_the_mutex_back_still_holds_it_when_it_raises():
    """The handler raises after the notify, while wait() sleeps to re-acquire
    the mutex that the notifier still holds: wait() must still return (raise)
    with the mutex held, as it does when interrupted before the notify."""

    def child() -> None:
        with region() as m:
            lock = Mutex.create(m, MUTEX)
            cond = Condition.create(m, COND, lock)
            me = os.getpid()

            def notifier() -> None:
                mx = Mutex(m, MUTEX)
                cv = Condition(m, COND, mx)
                wait_futex_sleep(me, m.word_address(COND))  # asleep in cond.wait()
                with cv:
                    assert cv.notify() == 1
                    # It wakes and sleeps again, on the mutex we hold.
                    wait_futex_sleep(me, m.word_address(MUTEX))
                    os.kill(me, signal.SIGALRM)
                    deadline = time.monotonic() + 10
                    while not u32(m, RUNG):  # the handler has raised
                        assert time.monotonic() < deadline
                        time.sleep(0.001)
                cv.close()
                mx.close()

            ring = _ring(m.word_address(RUNG))
            signal.signal(signal.SIGALRM, ring)
            pid = fork_child(notifier)
            lock.acquire()
            try:
                with pytest.raises(Alarm):
                    cond.wait()
            finally:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                owned = lock.owned()
                if owned:
                    lock.release()
            assert ring.where == ["futex_wait"] and u32(m, RUNG) == 1
            assert owned, "wait() raised without the mutex held"
            assert wait_child(pid) == 0
            assert u32(m, COND + 4) == 0 and not lock.locked()
            cond.close()
            lock.close()

    run_in_child(child)


# -- bare futexes (the layer the primitives sleep in) ------------------------------------


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_futex_waits_interrupted_unpin_the_mapping(timeout):
    def child() -> None:
        with region() as m:
            with interrupted("wait", "futex_wait"):
                Futex.wait(m, FUTEX, 0, timeout=timeout)
            assert not m.futex_sleepers
            word = FutexWord(m, FUTEX)
            with interrupted("wait", "futex_wait"):
                word.wait(0, timeout=timeout)
            assert not futex_sleeping(os.getpid(), m.word_address(FUTEX))
            word.close()
            with pytest.raises(TimedOut):
                Futex.wait(m, FUTEX, 0, timeout=0.001)

    run_in_child(child)


# -- the lock helper itself, and what a follower passes on ------------------------------


def test_a_handler_raising_just_as_the_lock_is_taken_never_deadlocks_acquire_deferring():
    """Python runs signal handlers when a call returns, so a handler's exception
    may come right after ``acquire()`` took the lock. Retrying then would wait
    on a lock this thread holds. A thread keeps signalling the main thread
    while it takes and releases a lock in a loop; every round must end, with
    the lock free, whatever the handler did."""
    from redstone_ipc.sched.lock import acquire_deferring

    def child() -> None:
        armed = [False]

        def handler(signum, frame):
            if armed[0]:
                armed[0] = False
                raise Alarm()

        signal.signal(signal.SIGUSR1, handler)
        main = threading.get_ident()
        stop = threading.Event()

        def spam() -> None:
            while not stop.is_set():
                signal.pthread_kill(main, signal.SIGUSR1)

        lock = threading.Lock()
        deferred = 0
        spammer = threading.Thread(target=spam, daemon=True)
        spammer.start()
        try:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                try:
                    armed[0] = True
                    got = acquire_deferring(lock)
                    armed[0] = False
                    deferred += got is not None
                    lock.release()
                except Alarm:  # after acquire_deferring returned (Python's own window)
                    if lock.locked():
                        lock.release()
                assert not lock.locked()
        finally:
            stop.set()
            spammer.join()
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        assert deferred > 0, "no handler ever ran inside acquire_deferring: nothing was tested"

    run_in_child(child, timeout=30)


def test_a_follower_that_raises_after_being_told_to_lead_passes_that_on():
    """The leader leaving poll tells one follower to lead next. If that follower
    leaves with an exception, another follower must be told instead, or it
    sleeps while messages wait in the socket."""

    def child() -> None:
        port = Port()
        client = port.duplicate(SEND_RIGHTS)
        client.send(Message(0))  # this process receives on it (its inbox is made)
        port.recv(timeout=5)
        obj = port._object.receive.inbox
        got: list[int] = []
        leader = threading.Thread(target=lambda: got.append(port.recv(timeout=20).msg_type))
        leader.start()
        deadline = time.monotonic() + 10
        while not (obj.leader and obj.ops):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        # The main thread follows; its wait raises as soon as it is woken (as a
        # handler's exception raised while it takes the mutex back would).
        real_wait = obj.cond.wait

        def woken_then_interrupted(timeout=None):
            woken = real_wait(timeout)
            if threading.current_thread() is threading.main_thread():
                raise Alarm()
            return woken

        other = threading.Thread(target=lambda: got.append(port.recv(timeout=20).msg_type))

        def second_follower_then_send() -> None:
            while obj.followers < 1:
                time.sleep(0.001)
            other.start()
            while obj.followers < 2:
                time.sleep(0.001)
            client.send(Message(1))  # the leader takes it and wakes one follower

        obj.cond.wait = woken_then_interrupted
        sender = threading.Thread(target=second_follower_then_send)
        sender.start()
        try:
            # Followers are woken in FIFO order: the main thread, first in line.
            with pytest.raises(Alarm):
                port.recv(timeout=20)
        finally:
            obj.cond.wait = real_wait
        sender.join()
        leader.join()
        client.send(Message(2))
        other.join(20)
        assert not other.is_alive(), "the other follower was never told to lead"
        assert sorted(got) == [1, 2]
        assert obj.followers == 0 and not obj.leader
        client.close()
        port.close()

    run_in_child(child)


def test_a_mapping_closed_while_other_threads_wake_on_it_never_keeps_a_stale_address():
    """Futex caches a word's address on its mapping; close() empties the cache.
    A thread that computes an address while another closes the mapping must
    not leave it behind: afterwards the closed mapping raises NotMapped."""

    def child() -> None:
        for _ in range(200):
            shm = SharedMemory.create(PAGE)
            m = shm.map()
            go = threading.Event()
            errors: list[BaseException] = []

            def waker() -> None:
                go.set()
                for _ in range(200):
                    try:
                        Futex.wake(m, 0)
                        m.futex_addresses.pop(0, None)  # compute it afresh next time
                    except NotMapped:
                        return
                    except BaseException as e:  # pragma: no cover - reported below
                        errors.append(e)
                        return

            t = threading.Thread(target=waker)
            t.start()
            go.wait()
            m.unmap()
            t.join()
            assert not errors, errors
            assert not m.futex_addresses, "a stale address stayed cached"
            with pytest.raises(NotMapped):
                Futex.wake(m, 0)
            shm.close()

    run_in_child(child, timeout=60)
