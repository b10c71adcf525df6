"""Reliability under faults: every waiter wakes, no right leaks, no loop spins.

The cases of issue 8, written against the public API and observable
behaviour only (fds that arrive, CPU time used, exceptions), so that they
judge whatever data path Ports and Channels use underneath.
"""

from __future__ import annotations

import array
import asyncio
import errno
import gc
import os
import resource
import select
import signal
import struct
import socket
import stat
import threading
import time

import pytest

from _proc import blocked_syscall
from conftest import fork_child, open_fds, wait_child
from redstone_ipc import (
    Channel,
    Empty,
    FdHandle,
    InvalidHandle,
    IpcError,
    Message,
    OutOfFds,
    PeerClosed,
    Port,
    PortClosed,
    QueueFull,
    Rights,
    SendTimedOut,
    SharedMemory,
)
from redstone_ipc.port import SEND_RIGHTS
from redstone_ipc.port.outlet import RECONNECT_LIMIT
from redstone_ipc.transport import layout as L

pytestmark = pytest.mark.timeout(60)


# -- helpers ---------------------------------------------------------------------


def _blocked(tid: int) -> bool:
    fields = blocked_syscall(os.getpid(), tid)
    return bool(fields) and fields[0].isdigit()


def wait_all_blocked(threads: list[threading.Thread], settle: float = 0.05) -> None:
    """Return once every thread has been blocked in a system call for ``settle``
    seconds at once: they are all inside their blocking call, whatever it sleeps
    on (a thread waiting for the GIL holds that state only for an instant)."""
    deadline = time.monotonic() + 10
    since = None
    while True:
        assert time.monotonic() < deadline, "the threads never all went to sleep"
        if all(_blocked(t.native_id) for t in threads):  # type: ignore[arg-type]
            since = since or time.monotonic()
            if time.monotonic() - since >= settle:
                return
        else:
            since = None
        time.sleep(0.002)


def run_threads(count: int, body) -> tuple[list[threading.Thread], list[object]]:
    """Start ``count`` threads running ``body``; each appends what it raised (or None)."""
    results: list[object] = []

    def runner() -> None:
        try:
            body()
        except BaseException as e:  # noqa: B036 - the test inspects it
            results.append(e)
        else:
            results.append(None)

    threads = [threading.Thread(target=runner, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, results


def join_all(threads: list[threading.Thread], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    assert not stuck, f"{stuck} of {len(threads)} waiters never woke"


# -- 1. every waiter wakes when the peer dies or closes ------------------------------


@pytest.mark.parametrize("waiters", [3, 6])
def test_every_receiving_thread_wakes_when_the_peer_process_is_killed(no_fd_leak, waiters):
    a, b = Channel.create_pair()

    def peer() -> None:
        a.close()
        signal.pause()

    pid = fork_child(peer)
    b.close()
    threads, results = run_threads(waiters, lambda: a.recv(timeout=None))
    wait_all_blocked(threads)
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    join_all(threads)
    assert len(results) == waiters and all(isinstance(r, PeerClosed) for r in results)
    with pytest.raises(PeerClosed):  # and a later one too
        a.recv(timeout=None)
    a.close()


def test_every_call_wakes_when_the_server_is_killed(no_fd_leak):
    a, b = Channel.create_pair(capacity=16)

    def server() -> None:
        a.close()
        b.recv()  # take one request, then never answer
        signal.pause()

    pid = fork_child(server)
    b.close()
    threads, results = run_threads(8, lambda: a.call(Message(1, b"q"), timeout=None))
    wait_all_blocked(threads)
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    join_all(threads)
    assert len(results) == 8 and all(isinstance(r, PeerClosed) for r in results)
    a.close()


def test_every_receiving_thread_wakes_when_the_peer_is_closed_in_this_process(no_fd_leak):
    a, b = Channel.create_pair()
    threads, results = run_threads(20, lambda: a.recv(timeout=None))
    wait_all_blocked(threads)
    b.close()
    join_all(threads)
    assert len(results) == 20 and all(isinstance(r, PeerClosed) for r in results)
    a.close()


def test_every_sending_thread_wakes_when_the_port_is_closed(no_fd_leak):
    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    client.send(Message(1))
    threads, results = run_threads(5, lambda: client.send(Message(2), timeout=None))
    wait_all_blocked(threads)
    port.close()
    join_all(threads)
    assert len(results) == 5 and all(isinstance(r, PortClosed) for r in results)
    client.close()


# -- 2. a right that was not granted is never usable, through any fd ---------------------


SECRET = os.urandom(24)


def _files() -> dict[int, tuple[int, int]]:
    """This process's fds and the files they open, as (st_dev, st_ino)."""
    files = {}
    for fd in open_fds():
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed meanwhile (e.g. the listing's own fd)
        files[fd] = (st.st_dev, st.st_ino)
    return files


def _arrived_fds_reveal(before: set[tuple[int, int]], secret: bytes) -> list[str]:
    """Try every fd to a file that was not open ``before`` for a way to read
    ``secret`` (or any fd) that was queued for the receive right: sockets are
    read raw, memory is mapped and searched. Returns what leaked. (Files, not
    fd numbers: numbers are reused as soon as they are closed.)"""
    import mmap

    leaks = []
    for fd, identity in sorted(_files().items()):
        if identity in before:
            continue
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=os.dup(fd))
            try:
                while True:
                    try:
                        data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4),
                                                       socket.MSG_DONTWAIT)
                    except (BlockingIOError, OSError):
                        break
                    if not data and not anc:
                        break
                    if secret in data:
                        leaks.append(f"fd {fd}: the socket gave the queued payload")
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            leaks.append(f"fd {fd}: the socket gave fds queued for the receiver")
                            for i in range(0, len(raw) - len(raw) % 4, 4):
                                os.close(int.from_bytes(raw[i:i + 4], "little"))
            finally:
                sock.close()
        elif stat.S_ISREG(mode):
            size = os.fstat(fd).st_size
            if size:
                try:
                    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                        if m.find(secret) >= 0:
                            leaks.append(f"fd {fd}: shared memory holds the queued payload")
                except OSError:
                    pass
    return leaks


def _check_send_only_in_a_fresh_process(a, send_only, *, in_message: bool) -> None:
    """Hand ``send_only`` to a spawned interpreter (nothing inherited), in a
    Message or pickled, and have it try every fd it got."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out_r, out_w = ctx.Pipe(duplex=False)
    if in_message:
        carrier = Port()
        to_carrier = carrier.duplicate(SEND_RIGHTS)
        child = ctx.Process(target=_spawned_receives_it, args=(carrier, out_w, SECRET))
        child.start()
        carrier.release()  # the child receives on it now
        msg = Message(2)
        msg.attach_handle(send_only)
        to_carrier.send(msg)
        assert not send_only.valid
        to_carrier.close()
    else:
        child = ctx.Process(target=_spawned_got_it, args=(send_only, out_w, SECRET))
        child.start()
        send_only.close()
    out_w.close()
    verdict = out_r.recv() if out_r.poll(30) else "no answer"
    child.join(10)
    child.close()
    out_r.close()
    assert verdict == [], verdict
    assert a.recv(timeout=10).msg_type == 9, "the send right still works"


def _spawned_receives_it(carrier, out, secret) -> None:  # a fresh interpreter
    before = set(_files().values())
    (ep,) = carrier.recv(timeout=10).handles
    assert ep.rights == Rights.SEND | Rights.TRANSFER | Rights.WAIT
    out.send(_arrived_fds_reveal(before, secret))
    ep.send(Message(9))


def _spawned_got_it(ep, out, secret) -> None:  # a fresh interpreter
    # All it holds but stdio and the answer pipe came with the handle (or
    # is multiprocessing's own, which holds nothing of ours).
    files = _files()
    out.send(_arrived_fds_reveal({files[fd] for fd in (0, 1, 2, out.fileno())}, secret))
    ep.send(Message(9))


@pytest.mark.parametrize("route", ["message", "pickle"])
def test_a_send_only_endpoint_in_another_process_cannot_read_what_was_queued(
    spawn_ready, no_fd_leak, route
):
    a, b = Channel.create_pair()
    shm = SharedMemory.create(4096)
    for payload in (SECRET, SECRET + b"2"):
        msg = Message(1, payload)
        msg.attach_handle(shm.duplicate())
        a.send(msg)
    shm.close()
    send_only = b.replace(Rights.SEND | Rights.TRANSFER | Rights.WAIT)
    _check_send_only_in_a_fresh_process(a, send_only, in_message=route == "message")
    a.close()


# -- 3. an event loop never spins ------------------------------------------------------


@pytest.mark.parametrize("how", ["released", "moved"])
def test_send_async_waiting_for_room_sleeps_after_the_receive_right_left(spawn_ready, no_fd_leak, how):
    import multiprocessing

    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    child = None
    if how == "released":
        # A copy of the RECEIVE handle goes to a fresh interpreter, which takes
        # over receiving once this process has released its own.
        ctx = multiprocessing.get_context("spawn")
        ready_r, ready_w = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_receive_then_idle, args=(port, ready_w))
        child.start()
        ready_w.close()
        port.release()
        client.send(Message(0, b"hello"), timeout=20)
        assert ready_r.recv() == "received"  # it owns the receive side now
        ready_r.close()
    else:
        to_child, in_child = Channel.create_pair()

        def receiver() -> None:
            client.close()
            to_child.close()
            port.release()  # inherited copy: the receive side stays with the parent
            (mine,) = in_child.recv(timeout=10).handles
            signal.pause()

        pid = fork_child(receiver)
        in_child.close()
        msg = Message(1)
        msg.attach_handle(port)
        to_child.send(msg)
        to_child.close()
    client.send(Message(1))  # the port is full now

    async def main() -> tuple[int, float, object]:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        cpu = time.process_time()
        try:
            await asyncio.wait_for(client.send_async(Message(2), timeout=None), 0.5)
            outcome: object = "sent"
        except asyncio.TimeoutError as e:
            outcome = e
        cpu = time.process_time() - cpu
        stop = True
        await task
        return ticks, cpu, outcome

    ticks, cpu, outcome = asyncio.run(main())
    assert isinstance(outcome, asyncio.TimeoutError), outcome
    assert ticks >= 15, f"the other task ran {ticks} times in 0.5 s: the loop was blocked"
    assert cpu < 0.25, f"waiting used {cpu:.2f} s of CPU in 0.5 s"
    if child is not None:
        child.kill()
        child.join(10)
        child.close()
    else:
        os.kill(pid, signal.SIGKILL)
        wait_child(pid)
    client.close()


def _receive_then_idle(port: Port, ready) -> None:  # a fresh interpreter
    deadline = time.monotonic() + 20
    while True:  # the parent lets go of the receive side soon
        try:
            port.recv(timeout=1)
            break
        except Exception:  # noqa: BLE001 - InvalidHandle until it has let go
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    ready.send("received")
    time.sleep(60)


# -- 4, 8. a receiver short of fds loses nothing ----------------------------------------


class FdsTaken:
    """Every free fd of this process taken, below a lowered RLIMIT_NOFILE soft
    limit, to give back at will (run it in a child: the limit stays)."""

    def __init__(self, slack: int = 16) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = max(open_fds()) + slack
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, soft), hard))
        self.fillers: list[int] = []
        while True:
            try:
                self.fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError as e:
                assert e.errno == errno.EMFILE
                break

    def give_back(self, n: int | None = None) -> None:
        for _ in range(len(self.fillers) if n is None else n):
            os.close(self.fillers.pop())


def assert_same_fds(before: set[int], why: str = "fds leaked") -> None:
    after = open_fds()
    extra = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in after - before}
    assert after == before, f"{why}: extra {extra}, lost {sorted(before - after)}"


def _emfile(e: BaseException) -> bool:
    return (isinstance(e, OutOfFds) and isinstance(e, IpcError) and isinstance(e, OSError)
            and e.errno == errno.EMFILE and "EMFILE" in str(e))


class Baton:
    """One-way "go" signals between two processes (a pipe made before fork)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def give(self, what: bytes = b"!") -> None:
        os.write(self.w, what)

    def take(self, timeout: float = 20.0) -> bytes:
        ready, _, _ = select.select([self.r], [], [], timeout)
        assert ready, "the other process never signalled"
        return os.read(self.r, 1)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _handles_message(tag: bytes) -> Message:
    """A message carrying two handles: a shared memory region holding ``tag``,
    and an eventfd."""
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[:len(tag)] = tag
    msg = Message(4, tag)
    msg.attach_handle(shm)
    msg.attach_handle(FdHandle.adopt(os.eventfd(0)))
    return msg


def _check_handles_message(msg: Message, tag: bytes) -> None:
    assert bytes(msg) == tag and len(msg.handles) == 2
    shm, counter = msg.handles
    with shm.map() as m:
        assert bytes(m[:len(tag)]) == tag, "the region that was sent"
    assert counter.valid
    msg.close()


def test_a_receiver_out_of_fds_keeps_a_message_with_handles_queued(no_fd_leak):
    """Item 4: OutOfFds (EMFILE) from recv, the message stays queued with its
    handles, and the capacity is still exactly what was asked."""
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    full, sent, refill, done = Baton(), Baton(), Baton(), Baton()

    def receiver() -> None:
        client.close()
        assert port.recv(timeout=20).msg_type == 1  # connected: the inbox's fds exist
        before = open_fds()
        taken = FdsTaken()
        full.give()
        sent.take()
        for _ in range(3):  # asked again, the same answer: nothing is consumed
            with pytest.raises(OutOfFds) as info:
                port.recv(timeout=20)
            assert _emfile(info.value), info.value
        taken.give_back(1)  # one of the two fds it needs
        with pytest.raises(OutOfFds):
            port.try_recv()
        taken.give_back(1)
        msg = port.recv(timeout=20)
        taken.give_back()  # (mapping the region to look at it takes one more)
        _check_handles_message(msg, b"with handles")
        assert port.try_recv().msg_type == 5, "and what came after it"
        assert open_fds() == before, "nothing left behind"
        refill.give()
        done.take()  # the sender has filled the port, then found it full
        got = []
        while True:
            try:
                got.append(port.try_recv().msg_type)
            except Empty:
                break
        assert got == [6] * port.capacity, got

    pid = fork_child(receiver)
    client.send(Message(1, b"connect"), timeout=20)
    full.take()
    client.send(_handles_message(b"with handles"), timeout=20)
    client.send(Message(5, b"after"), timeout=20)
    sent.give()
    refill.take()
    for _ in range(port.capacity):  # the room the stuck message held came back
        client.send(Message(6), timeout=20)
    with pytest.raises(SendTimedOut):
        client.send(Message(7), timeout=0.3)  # and no more than that
    done.give()
    assert wait_child(pid, 40) == 0
    for baton in (full, sent, refill, done):
        baton.close()
    client.close()
    port.close()


def _payload(i: int, size: int) -> bytes:
    return struct.pack("<I", i) + bytes([i % 251]) * (size - 4)


@pytest.mark.parametrize("give_back", ["one at a time", "all at once"])
@pytest.mark.parametrize("what", ["data segment", "new sender", "dead sender's handles"])
def test_a_port_receiver_short_of_fds_names_emfile_and_loses_nothing(no_fd_leak, what, give_back):
    """Item 8. Whatever needs fds on the receiving side — a sender's new data
    segment, a new sender's connection, the handles of a sender that died
    since — waits for them: recv raises OutOfFds (EMFILE) and nothing else,
    nobody spins meanwhile, and once fds are free every message comes, in
    order, the dead connections go and the port's capacity is whole."""
    port = Port(capacity=16)
    client = port.duplicate(SEND_RIGHTS)
    ready, full, go, published, sent, done = (Baton() for _ in range(6))
    connect_first = what != "new sender"

    def sender() -> None:  # sends, then exits: dead by the time fds are free
        if connect_first:
            client.send(Message(0, b"hello"), timeout=20)
            go.take()
        else:
            with pytest.raises(QueueFull):  # its CONNECT is at the door, not taken yet
                client.send(Message(2, _payload(10, 64)), timeout=0)
            published.give()
        if what == "dead sender's handles":
            client.send(_handles_message(b"last words"), timeout=20)
        for i in range(10, 13):
            client.send(Message(2, _payload(i, 100_000 if what == "data segment" else 64)),
                        timeout=20)

    def knock() -> None:
        """Connect and leave: the receive side's thread then hears the door
        (and, while fds are short, finds the dead sender's hang-up too)."""
        with pytest.raises(QueueFull):
            client.send(Message(3), timeout=0)

    def receiver() -> None:
        client.close()
        assert port.recv(timeout=20).msg_type == 1
        before = open_fds()
        ready.give()
        if connect_first:
            assert port.recv(timeout=20).msg_type == 0
        taken = FdsTaken()
        full.give()
        sent.take()
        cpu = time.process_time()
        with pytest.raises(OutOfFds) as info:
            port.recv(timeout=20)
        assert _emfile(info.value), info.value
        time.sleep(0.5)  # stuck for a while: nobody may spin on it meanwhile
        assert time.process_time() - cpu < 0.2, "a thread spun while fds were short"
        msgs: list[Message] = []
        expected = 4 if what == "dead sender's handles" else 3
        if give_back == "all at once":
            taken.give_back()
        while len(msgs) < expected:  # EMFILE, or a message: nothing else
            try:
                msgs.append(port.recv(timeout=20))
            except OutOfFds as e:
                assert _emfile(e) and taken.fillers, e
                taken.give_back(1)
        taken.give_back()
        if what == "dead sender's handles":
            _check_handles_message(msgs.pop(0), b"last words")
        got = []
        for msg in msgs:
            assert msg.msg_type == 2
            got.append(struct.unpack_from("<I", msg.payload)[0])
            assert bytes(msg) == _payload(got[-1], len(msg.payload)), "torn"
            msg.close()
        assert got == [10, 11, 12], got
        with pytest.raises(Empty):
            port.recv(timeout=0.3)  # (and the dead senders' hang-ups are seen)
        assert_same_fds(before, "the dead senders' connections are gone")
        done.give()
        sent.take()  # not receiving: meanwhile this process's thread hears senders
        assert [m.msg_type for m in drain_port(port)] == [3] * port.capacity

    pid = fork_child(receiver)
    client.send(Message(1, b"connect"), timeout=20)  # this process's connection
    ready.take()
    if connect_first:
        sender_pid = fork_child(sender)
        full.take()
        go.give()
        assert wait_child(sender_pid) == 0  # dead before the receiver has fds
        assert wait_child(fork_child(knock)) == 0
    else:
        full.take()
        sender_pid = fork_child(sender)
        published.take()
    sent.give()
    done.take()
    if not connect_first:
        assert wait_child(sender_pid) == 0
    for i in range(port.capacity):  # the capacity is whole
        client.send(Message(3), timeout=20)
    with pytest.raises(SendTimedOut):
        client.send(Message(3), timeout=0.3)
    sent.give()
    assert wait_child(pid, 40) == 0
    for baton in (ready, full, go, published, sent, done):
        baton.close()
    client.close()
    port.close()


def drain_port(port: Port) -> list[Message]:
    out = []
    while True:
        try:
            out.append(port.try_recv())
        except Empty:
            return out


def test_a_forked_receiver_busy_elsewhere_still_takes_senders_and_gives_room(no_fd_leak):
    """A receive side taken in a forked child is heard by that child's own
    service thread: a sender connects and gets the whole capacity while the
    child is busy with something else, not in recv."""
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    ready, done = Baton(), Baton()

    def receiver() -> None:
        client.close()
        with pytest.raises(Empty):
            port.try_recv()  # receiving here from now on
        ready.give()
        done.take()  # busy: not receiving
        assert [m.msg_type for m in drain_port(port)] == [1] * 4

    pid = fork_child(receiver)
    ready.take()
    for _ in range(4):
        client.send(Message(1), timeout=20)
    with pytest.raises(SendTimedOut):
        client.send(Message(2), timeout=0.3)
    done.give()
    assert wait_child(pid) == 0
    for baton in (ready, done):
        baton.close()
    client.close()
    port.close()


# -- 7. capacity counts messages, whatever they carry -----------------------------------


def test_1500_acknowledged_messages_of_100_kb_all_arrive_at_1024_fds(no_fd_leak):
    """Item 7: another process sends 1500 messages of 100 KB into a port of
    capacity 1500 whose receiver, at RLIMIT_NOFILE 1024, is busy. Every send
    that was acknowledged is delivered, in order, intact: the receiver holds
    all that were queued while it was busy at once (zero-copy views: no fd
    each), and the rest comes as it reads. A payload waits for data room,
    which is bounded (a few segments per sender, README): while the
    receiver keeps earlier payloads, a send with a timeout waits and one
    with ``timeout=0`` says QueueFull; neither loses anything."""
    count, size = 1500, 100 * 1024
    port = Port(capacity=count)
    client = port.duplicate(SEND_RIGHTS)
    ready, queued_pipe = Baton(), Baton()

    def receiver() -> None:
        client.close()
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        with pytest.raises(Empty):
            port.try_recv()  # receiving here from now on
        before = len(open_fds())
        ready.give()
        queued = struct.unpack("<I", os.read(queued_pipe.r, 4))[0]
        held = [port.recv(timeout=20) for _ in range(queued)]
        assert len(open_fds()) - before < 16, "an fd per payload"
        for i, msg in enumerate(held):
            assert bytes(msg) == _payload(i, size), f"message {i}"
            msg.close()
        for i in range(queued, count):
            with port.recv(timeout=20) as msg:
                assert bytes(msg) == _payload(i, size), f"message {i}"
        with pytest.raises(Empty):
            port.try_recv()

    pid = fork_child(receiver)
    ready.take()
    client.send(Message(1, _payload(0, size)), timeout=20)  # connected: room granted
    queued = 1
    while queued < count:  # what the port holds while its receiver is busy
        try:
            client.send(Message(1, _payload(queued, size)), timeout=0)
        except QueueFull:
            break
        queued += 1
    assert queued > 100
    os.write(queued_pipe.w, struct.pack("<I", queued))
    for i in range(queued, count):  # the rest waits for room as the receiver reads
        client.send(Message(1, _payload(i, size)), timeout=20)
    assert wait_child(pid, 60) == 0
    for baton in (ready, queued_pipe):
        baton.close()
    client.close()
    port.close()


def test_messages_with_handles_past_what_the_kernel_holds_wait_never_fail(no_fd_leak):
    """A sender queuing more messages with handles than the kernel holds in
    flight on its connection (its socket's buffer, its user's fds in flight)
    is told "no room" like at capacity (QueueFull, SendTimedOut), never an
    OSError; it goes on as the receiver reads, and everything arrives."""
    count = 1000
    port = Port(capacity=count)
    client = port.duplicate(SEND_RIGHTS)
    first = Baton()

    def sender() -> None:
        # The first send connects: a new sender has no room before the
        # receiver granted it some (a send with timeout=0 would only try).
        msg = Message(1, struct.pack("<I", 0))
        msg.attach_handle(FdHandle.adopt(os.eventfd(1)))
        client.send(msg, timeout=20)
        queued = 1
        while True:  # as many as the kernel takes while nobody reads
            msg = Message(1, struct.pack("<I", queued))
            msg.attach_handle(FdHandle.adopt(os.eventfd(queued + 1)))
            try:
                client.send(msg, timeout=0)
            except QueueFull:
                msg.close()
                break
            queued += 1
        assert queued > 0
        first.give()
        for i in range(queued, count):  # the rest waits for the reader
            msg = Message(1, struct.pack("<I", i))
            msg.attach_handle(FdHandle.adopt(os.eventfd(i + 1)))
            client.send(msg, timeout=20)

    pid = fork_child(sender)
    first.take()
    for i in range(count):
        msg = port.recv(timeout=20)
        assert struct.unpack("<I", msg.payload)[0] == i
        (counter,) = msg.handles
        assert os.eventfd_read(counter.fileno()) == i + 1, "the handle that was sent with it"
        msg.close()
    assert wait_child(pid, 30) == 0
    first.close()
    client.close()
    port.close()


def test_a_send_that_fails_gives_back_the_data_room_it_took(no_fd_leak):
    """A send that fails after its payload went into a data segment (here: a
    handle closed after it was attached) gives that room back; otherwise the
    segment could never be reused past it. Nothing outside the sender sees
    the room, so this looks at its segments."""
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    client.send(Message(0, bytes(100_000)))  # connected, one segment
    port.recv(timeout=5).close()
    gone = FdHandle.adopt(os.eventfd(0))
    msg = Message(1, bytes(100_000))
    msg.attach_handle(gone)
    gone.close()
    with pytest.raises(IpcError):
        client.send(msg, timeout=0)
    conn = client._object.outlet.conn
    assert all(segment.idle() for segment in conn._segments.values()), "room kept by a failed send"
    client.close()
    port.close()


def test_a_send_that_fails_after_announcing_a_segment_does_not_break_the_next(no_fd_leak):
    """The first big payload announces a new data segment on the connection
    before its handles go; if the send then fails, the next message (with
    handles, no segment) must still be read as the sender meant it."""
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    client.send(Message(0, b"connect"))
    port.recv(timeout=5)
    gone = FdHandle.adopt(os.eventfd(0))
    msg = Message(1, bytes(100_000))  # a new segment for it
    msg.attach_handle(gone)
    gone.close()
    with pytest.raises(IpcError):
        client.send(msg, timeout=0)
    _check_handles_message_sent_through(client, port)
    client.send(Message(3, bytes(100_000)))  # and the segment it announced
    assert port.recv(timeout=5).msg_type == 3
    client.close()
    port.close()


def _check_handles_message_sent_through(client: Port, port: Port) -> None:
    client.send(_handles_message(b"next"))
    _check_handles_message(port.recv(timeout=5), b"next")


# -- 6. a thousand coroutines wait on one port -------------------------------------------


@pytest.mark.parametrize("end", ["messages", "close"])
def test_a_thousand_coroutines_wait_on_one_port_with_no_fd_each(no_fd_leak, end):
    """Item 6: 1000 recv_async on one Port in one loop: no OSError (EINVAL),
    no fd per waiter, and every one wakes — with a message each from another
    process, or with PortClosed."""
    count = 1000
    port = Port(capacity=count)
    client = port.duplicate(SEND_RIGHTS)
    go = Baton()

    def sender() -> None:
        go.take()
        for i in range(count):
            client.send(Message(1, struct.pack("<I", i)), timeout=20)

    pid = fork_child(sender)
    with pytest.raises(Empty):
        port.try_recv()  # receiving here: the inbox's own fds are made

    async def main() -> list[object]:
        before = open_fds()
        tasks = [asyncio.ensure_future(port.recv_async(timeout=60)) for _ in range(count)]
        await asyncio.sleep(0)  # every one is waiting now
        assert not any(t.done() for t in tasks)
        assert open_fds() == before, "an fd per waiter"
        if end == "messages":
            go.give()
        else:
            port.close()
        done, _ = await asyncio.wait(tasks, timeout=60)
        assert len(done) == count, f"{count - len(done)} waiters never woke"
        return [t.exception() or t.result() for t in tasks]

    outcomes = asyncio.run(main())
    if end == "messages":
        got = sorted(struct.unpack("<I", m.payload)[0] for m in outcomes)  # type: ignore[attr-defined]
        assert got == list(range(count))
        assert wait_child(pid) == 0
        port.close()
    else:
        assert all(isinstance(o, PortClosed) for o in outcomes), {type(o) for o in outcomes}
        os.kill(pid, signal.SIGKILL)
        wait_child(pid)
    go.close()
    client.close()


# -- also: closing a payload, closing a duplicate ------------------------------------------


def test_message_close_gives_a_zero_copy_payload_back_at_once(no_fd_leak):
    """A sender out of data room (here: allowed a single segment, holding five
    payloads of 100 KB, all received and kept) proceeds as soon as the
    receiver closes one of those messages — while it still holds the Message
    and its payload object."""
    from redstone_ipc.transport import layout

    port = Port(capacity=16)
    client = port.duplicate(SEND_RIGHTS)
    size = 100 * 1024

    def sender() -> None:
        layout.MAX_SEGMENTS = 1  # (instead of sending gigabytes to reach the real limit)
        for i in range(7):
            client.send(Message(1, _payload(i, size)), timeout=None)

    pid = fork_child(sender)
    held = [port.recv(timeout=20) for _ in range(5)]  # the segment is full of them
    payloads = [m.payload for m in held]  # references to the payloads, kept too
    assert all(len(p) == size for p in payloads)
    with pytest.raises(Empty):
        port.recv(timeout=0.5)  # the sender waits for room
    held[0].close()
    with pytest.raises(ValueError):
        payloads[0][0]  # released, though referenced
    sixth = port.recv(timeout=20)
    assert bytes(sixth) == _payload(5, size)
    for msg in held[1:]:
        msg.close()
    sixth.close()
    assert bytes(port.recv(timeout=20)) == _payload(6, size)
    assert wait_child(pid) == 0
    assert held[0].payload.nbytes == 0  # the Message itself is still here, emptied
    client.close()
    port.close()


def test_closing_one_send_handle_wakes_its_own_senders_only(no_fd_leak):
    """Closing a SEND handle that is not the process's last one (a duplicate)
    wakes the threads blocked in send on that very handle (InvalidHandle);
    those blocked on another handle to the same port go on waiting, then send."""
    port = Port(capacity=1)
    mine, other = port.duplicate(SEND_RIGHTS), port.duplicate(SEND_RIGHTS)
    mine.send(Message(0))  # full
    closed_threads, closed_results = run_threads(3, lambda: mine.send(Message(1), timeout=None))
    other_threads, other_results = run_threads(2, lambda: other.send(Message(2), timeout=None))
    wait_all_blocked(closed_threads + other_threads)
    mine.close()
    join_all(closed_threads)
    assert len(closed_results) == 3 and all(isinstance(r, InvalidHandle) for r in closed_results)
    wait_all_blocked(other_threads)  # still waiting for room
    assert other_results == []
    got = []
    for _ in range(3):
        got.append(port.recv(timeout=10).msg_type)  # room for one at a time
    join_all(other_threads)
    assert got == [0, 2, 2] and other_results == [None, None]
    other.close()
    port.close()


# -- a receiver that keeps ending connections --------------------------------------


def _raw_receiver_door(capacity: int = 4) -> tuple[socket.socket, Port]:
    """A door whose receiving end this test reads by hand, and a SEND handle to it."""
    from redstone_ipc import ObjectType, adopt_handle
    from redstone_ipc.linux.cmsg import seqpacket_pair

    mine, theirs = seqpacket_pair()
    theirs.shutdown(socket.SHUT_RD)
    client = adopt_handle(ObjectType.PORT, SEND_RIGHTS, capacity, [theirs.detach()], kind=Port)
    return mine, client


def _end_connections_by_hand(door: socket.socket, pid: int, hold: float) -> int:
    """Take each CONNECT on ``door`` and end it without a word (reason 0, as a
    receiving process that dies would), ``hold`` seconds after the sender said
    it waits for room (its WANT); until process ``pid`` exits. Returns how
    many connections it ended."""
    pidfd = os.pidfd_open(pid)
    live: dict[int, list[int]] = {}  # token -> that connection's fds
    wanting: dict[int, float] = {}  # token -> when to end it
    ended = 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = time.monotonic()
            for token, when in list(wanting.items()):
                if when <= now:
                    del wanting[token]
                    for fd in live.pop(token):
                        os.close(fd)
                    ended += 1
            wait = min([when - now for when in wanting.values()] + [1.0])
            ready, _, _ = select.select([door, pidfd], [], [], max(0.0, wait))
            if pidfd in ready:
                break
            if door not in ready:
                continue
            data, anc, _, _ = door.recvmsg(64, 256)  # (room for the credentials too)
            if not data:  # every sending end closed: the sender is gone
                ready, _, _ = select.select([pidfd], [], [], 30)
                assert ready, "the sender closed its door and never exited"
                break
            fds = [fd for level, kind, raw in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for fd in array.array("i", raw[:len(raw) - len(raw) % 4])]
            _, _, kind, _, _, token = L.DOOR_RECORD.unpack_from(data)
            if kind == L.DOOR_CONNECT:
                live[token] = fds
            else:
                for fd in fds:
                    os.close(fd)
                if kind == L.DOOR_WANT and token in live:
                    wanting.setdefault(token, time.monotonic() + hold)
        else:
            raise AssertionError("the sender never finished")
    finally:
        os.close(pidfd)
        for fds in live.values():
            for fd in fds:
                os.close(fd)
    return ended


def test_a_receiver_that_keeps_ending_connections_makes_send_give_up(no_fd_leak):
    """A receiver (here: by hand, in another process than the sender) that
    ends every new connection without taking a message, while its door
    lives, makes a blocking send reconnect a bounded number of times, then
    fail with an IpcError that says so, instead of looping for ever."""
    door, client = _raw_receiver_door()
    result = Baton()

    def sender() -> None:
        door.close()
        try:
            client.send(Message(1, b"never taken"))  # timeout=None
        except (SendTimedOut, QueueFull):
            raise
        except IpcError as e:
            assert "giving up" in str(e), e
            result.give(b"g")
            return
        result.give(b"s")

    pid = fork_child(sender)
    client.close()
    try:
        ended = _end_connections_by_hand(door, pid, hold=0.0)
        assert wait_child(pid, 30) == 0
        assert result.take() == b"g"
        assert RECONNECT_LIMIT < ended <= RECONNECT_LIMIT + 2, ended
    finally:
        result.close()
        door.close()


def test_a_send_against_a_receiver_that_keeps_ending_connections_keeps_its_deadline(no_fd_leak):
    """The same receiver, slower (each connection lives 50 ms after the
    sender asked for room): a send with a timeout raises SendTimedOut on
    time, whatever the reconnections."""
    door, client = _raw_receiver_door()

    def sender() -> None:
        door.close()
        start = time.monotonic()
        with pytest.raises(SendTimedOut):
            client.send(Message(1, b"never taken"), timeout=0.5)
        assert time.monotonic() - start < 2.0

    pid = fork_child(sender)
    client.close()
    try:
        ended = _end_connections_by_hand(door, pid, hold=0.05)
        assert wait_child(pid, 30) == 0
        assert 1 <= ended < RECONNECT_LIMIT
    finally:
        door.close()


@pytest.mark.parametrize("how", ["send", "send_async"])
def test_closing_the_port_wakes_a_sender_whose_connection_was_never_taken(no_fd_leak, how):
    """A sender connects while the receiver cannot take connections (here:
    it is out of fds, so the CONNECT waits at the door); the receiver then
    closes the port. The sender, sleeping on a connection the receiver never
    saw, gets PortClosed: it neither sleeps nor spins for ever (another
    process still holding the door's receiving end keeps that record, and
    the connection's other end in it, alive)."""
    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    ready, close_now = Baton(), Baton()

    def receiver() -> None:
        client.close()
        with pytest.raises(Empty):
            port.try_recv()  # receiving here from now on
        taken = FdsTaken()
        ready.give()
        close_now.take()
        port.close()
        taken.give_back()

    def sender() -> None:
        start = time.monotonic()
        with pytest.raises(PortClosed):
            if how == "send":
                client.send(Message(1), timeout=20)
            else:
                asyncio.run(client.send_async(Message(1), timeout=20))
        assert time.monotonic() - start < 10

    receiver_pid = fork_child(receiver)
    ready.take()
    sender_pid = fork_child(sender)
    door = port._object.receive.door  # this process holds the door's receiving end too
    assert select.select([door], [], [], 20)[0], "no CONNECT came"
    close_now.give()
    assert wait_child(receiver_pid, 30) == 0
    assert wait_child(sender_pid, 30) == 0
    for baton in (ready, close_now):
        baton.close()
    client.close()
    port.close()


def _segment_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:redstone-segment" in line)


def test_a_payload_kept_past_its_senders_end_unmaps_its_segment_when_released(no_fd_leak):
    """The receiver keeps a zero-copy payload of a sender that then exits;
    when the payload goes, its data segment is unmapped at once (not left
    to a garbage collection that may never come: memory stays flat while
    senders come and go)."""
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    with pytest.raises(Empty):
        port.try_recv()  # receiving here
    before = _segment_mappings()
    pid = fork_child(lambda: client.send(Message(1, bytes(200_000)), timeout=20))
    msg = port.recv(timeout=20)
    assert wait_child(pid, 20) == 0
    with pytest.raises(Empty):
        port.recv(timeout=0.2)  # (the hang-up is seen: the connection ends)
    assert port.stats()["senders"] == 0
    assert _segment_mappings() > before  # still mapped: the payload is alive
    gc_was = gc.isenabled()
    gc.disable()
    try:
        msg.close()
        assert _segment_mappings() == before, "the segment stays mapped after its last payload"
    finally:
        if gc_was:
            gc.enable()
    client.close()
    port.close()
