"""Ports between real processes: order, capacity, close, crashes, rights, handles.

Every cross-process test forks real children (or spawns a fresh interpreter
when inheriting the parent's fds would spoil the point). Synchronisation is
done with the primitives themselves (messages, pipes, waitpid); where a test
needs to *know* that another process or thread is asleep in the kernel before
acting, it reads ``/proc/<pid>/task/<tid>/syscall`` (the only way to know),
see :func:`wait_asleep`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from _proc import blocked_syscall
from conftest import fork_child, open_fds, run_in_child, wait_child
from test_reliability import join_all, run_threads, wait_all_blocked
from redstone_ipc import (
    Empty,
    FdHandle,
    InvalidHandle,
    IpcError,
    Message,
    PermissionDenied,
    PortClosed,
    ProtocolError,
    QueueFull,
    Rights,
    SendTimedOut,
)
from redstone_ipc.channel import Channel
from redstone_ipc.linux.cmsg import seqpacket_pair
from redstone_ipc.message.wire import recv_message, send_message
from redstone_ipc.port import SEND_RIGHTS, Port, PortId, PortStatus
from redstone_ipc.transport import layout

pytestmark = pytest.mark.timeout(60)

# -- helpers ---------------------------------------------------------------------

_SLEEPING_SYSCALLS = {
    "x86_64": {7, 271, 232, 281, 202},  # poll, ppoll, epoll_wait, epoll_pwait, futex
    "aarch64": {73, 22, 98},  # ppoll, epoll_pwait, futex
}[platform.machine()]


def asleep(pid: int, tid: int | None = None) -> bool:
    """Whether the thread is blocked in poll/epoll/futex right now."""
    fields = blocked_syscall(pid, tid)
    return bool(fields) and fields[0].isdigit() and int(fields[0]) in _SLEEPING_SYSCALLS


def wait_asleep(pid: int, tid: int | None = None, timeout: float = 10.0) -> None:
    """Return once the thread sleeps in the kernel (poll, epoll or futex).

    The kernel sends no notification for "went to sleep", so this watches
    /proc briefly; it only observes, it never orders events.
    """
    deadline = time.monotonic() + timeout
    while not asleep(pid, tid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pid}/{tid or pid} never went to sleep")
        time.sleep(0.001)


def wait_stopped(pid: int) -> None:
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)


def payload_for(sender: int, seq: int, size: int = 0) -> bytes:
    """A self-checking payload: a header, then bytes any tear would show."""
    size = size or 8 + (seq * 37 % 200)
    fill = bytes([(sender * 31 + seq) % 251]) * (size - 8)
    return struct.pack("<II", sender, seq) + fill


def check_payload(payload) -> tuple[int, int]:
    data = bytes(payload)
    sender, seq = struct.unpack_from("<II", data)
    assert data[8:] == bytes([(sender * 31 + seq) % 251]) * (len(data) - 8), "torn message"
    return sender, seq


def drain(port: Port) -> list[Message]:
    out = []
    while True:
        try:
            out.append(port.try_recv())
        except Empty:
            return out


def fill(sender: Port, count: int) -> None:
    for i in range(count):
        sender.send(Message(1, payload_for(99, i)), timeout=10)


def assert_capacity_exact(port: Port, sender: Port) -> None:
    """The port takes exactly ``capacity`` messages, then QueueFull."""
    drain(port)
    fill(sender, port.capacity)
    with pytest.raises(QueueFull):
        sender.send(Message(1, b"one too many"), timeout=0)
    assert len(drain(port)) == port.capacity


# -- the basics ------------------------------------------------------------------


def test_a_new_port_is_its_receive_handle(no_fd_leak):
    port = Port()
    assert port.capacity == 16
    assert port.rights == Rights.SEND | Rights.RECEIVE | Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT
    assert port.status is PortStatus.OPEN
    assert isinstance(port.id, int)
    client = port.duplicate(SEND_RIGHTS)
    assert client.id == port.id, "every handle to the port shows the same id"
    assert Port(capacity=3).capacity == 3
    assert Port(2).id != port.id
    for bad in (0, -1, 2**32, 1.5, True, "8"):
        with pytest.raises(ValueError):
            Port(bad)
    port.close()
    client.close()
    assert not port.valid


def test_send_and_recv_in_one_process_with_priorities(no_fd_leak):
    with Port(8) as port:
        for i, prio in enumerate([0, 5, -3, 5, 0, 2**31 - 1, -(2**31)]):
            port.send(Message(i, b"m%d" % i), priority=prio)
        got = [(m.msg_type, m.priority) for m in drain(port)]
        assert got == [(5, 2**31 - 1), (1, 5), (3, 5), (0, 0), (4, 0), (2, -3), (6, -(2**31))]
        with pytest.raises(ValueError):
            port.send(Message(1), priority=2**31)
        with pytest.raises(Empty):
            port.try_recv()
        start = time.monotonic()
        with pytest.raises(Empty):
            port.recv(timeout=0.2)
        assert 0.19 <= time.monotonic() - start < 5
        with pytest.raises(Empty):
            port.recv(timeout=0)


def test_rights_are_checked(no_fd_leak):
    with Port() as port:
        send_only = port.duplicate(SEND_RIGHTS)
        receive_only = port.duplicate(Rights.RECEIVE)
        with pytest.raises(PermissionDenied):
            send_only.recv(timeout=0)
        with pytest.raises(PermissionDenied):
            send_only.try_recv()
        with pytest.raises(PermissionDenied):
            receive_only.send(Message(1))
        with pytest.raises(PermissionDenied):
            send_only.duplicate(Rights.SEND | Rights.RECEIVE)  # rights never grow
        with pytest.raises(PermissionDenied):
            Message(1).attach_handle(receive_only)  # no TRANSFER
        with pytest.raises(ValueError):
            msg = Message(1)
            msg.attach_handle(send_only)
            send_only.send(msg)  # a port never carries a handle to itself
        assert send_only.valid
        send_only.close()
        receive_only.close()
        with pytest.raises(InvalidHandle):
            send_only.send(Message(1))


# -- many senders, one receiver ---------------------------------------------------


def stream(sender: Port, index: int, count: int, priorities: bool) -> None:
    for seq in range(count):
        prio = seq % 3 if priorities else 0
        sender.send(Message(seq % 7, payload_for(index, seq)), priority=prio, timeout=None)


@pytest.mark.parametrize("priorities", [False, True])
def test_three_sender_processes_every_message_once_in_order(no_fd_leak, priorities):
    senders, count = 4, 400
    port = Port(capacity=16)
    client = port.duplicate(SEND_RIGHTS)
    pids = [fork_child(lambda i=i: stream(client, i, count, priorities)) for i in range(senders)]
    client.close()
    seen: dict[int, list[tuple[int, int]]] = {i: [] for i in range(senders)}
    for _ in range(senders * count):
        msg = port.recv(timeout=20)
        index, seq = check_payload(msg.payload)
        assert msg.sender.pid == pids[index], "the kernel names the sending process"
        assert (msg.sender.uid, msg.sender.gid) == (os.getuid(), os.getgid())
        assert msg.msg_type == seq % 7
        seen[index].append((msg.priority, seq))
    assert [wait_child(pid) for pid in pids] == [0] * senders
    with pytest.raises(Empty):
        port.try_recv()
    for index, got in seen.items():
        assert sorted(seq for _, seq in got) == list(range(count)), "every message exactly once"
        for prio in range(3):
            seqs = [seq for p, seq in got if p == prio]
            assert seqs == sorted(seqs), "each sender's order is kept within a priority"
        if not priorities:
            assert [seq for _, seq in got] == list(range(count))
    port.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
def test_the_sender_is_who_the_kernel_says_not_who_it_claims(no_fd_leak):
    port = Port()
    client = port.duplicate(SEND_RIGHTS)

    def child() -> None:
        os.setgid(65534)
        os.setuid(65534)
        client.send(Message(1, struct.pack("<III", 1, 0, 0)))  # "I am pid 1, root"

    pid = fork_child(child)
    msg = port.recv(timeout=20)
    assert wait_child(pid) == 0
    assert tuple(msg.sender) == (pid, 65534, 65534)
    client.close()
    port.close()


def test_priority_order_among_queued_messages_from_three_processes(no_fd_leak):
    port = Port(capacity=30)
    client = port.duplicate(SEND_RIGHTS)
    rng = random.Random(7)
    plans = [[rng.randrange(-2, 3) for _ in range(10)] for _ in range(3)]

    def sender(index: int) -> None:
        for seq, prio in enumerate(plans[index]):
            client.send(Message(1, payload_for(index, seq)), priority=prio)

    pids = [fork_child(lambda i=i: sender(i)) for i in range(3)]
    assert [wait_child(pid) for pid in pids] == [0, 0, 0]  # all 30 are queued now
    got = []
    for msg in drain(port):
        index, seq = check_payload(msg.payload)
        assert msg.priority == plans[index][seq]
        got.append((msg.priority, index, seq))
    assert len(got) == 30
    assert [p for p, _, _ in got] == sorted((p for p, _, _ in got), reverse=True)
    for index in range(3):
        for prio in range(-2, 3):
            seqs = [s for p, i, s in got if i == index and p == prio]
            assert seqs == sorted(seqs)
    client.close()
    port.close()


def test_threads_send_and_receive_concurrently(no_fd_leak):
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    count, senders, receivers = 300, 3, 3
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        for seq in range(count):
            client.send(Message(1, payload_for(index, seq)), timeout=None)

    def receive() -> None:
        while True:
            try:
                msg = port.recv(timeout=10)
            except (PortClosed, InvalidHandle):  # closed while waiting / before
                return
            with lock:
                got.append(check_payload(msg.payload))
                if len(got) == count * senders:
                    port.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    threads += [threading.Thread(target=receive) for _ in range(receivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert sorted(got) == [(i, s) for i in range(senders) for s in range(count)]
    client.close()


# -- capacity ----------------------------------------------------------------------


def test_queue_full_at_exactly_capacity_across_processes(no_fd_leak):
    port = Port(capacity=5)
    client = port.duplicate(SEND_RIGHTS)
    fill(client, 3)

    def child() -> None:
        client.send(Message(1, b"4"))
        client.send(Message(1, b"5"))
        held = FdHandle.adopt(os.eventfd(0))
        msg = Message(1, b"6")
        msg.attach_handle(held)
        with pytest.raises(QueueFull):
            client.send(msg, timeout=0)
        assert held.valid, "a failed send leaves the handles with the sender"

    run_in_child(child)
    with pytest.raises(QueueFull):
        client.send(Message(1), timeout=0)
    assert len(drain(port)) == 5
    fill(client, 5)
    with pytest.raises(QueueFull):
        port.send(Message(1), timeout=0)  # the receiver's own sends count too
    assert len(drain(port)) == 5
    client.close()
    port.close()


def test_capacity_holds_for_messages_of_any_size(no_fd_leak):
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    for size in (layout.INLINE_MAX, layout.INLINE_MAX + 1, 3 << 20, 100, 0):
        payload = bytes([size % 256]) * size
        for _ in range(4):
            client.send(Message(1, payload), timeout=10)
        with pytest.raises(QueueFull):
            client.send(Message(1, payload), timeout=0)
        for msg in drain(port):
            assert len(msg.payload) == size and bytes(msg.payload[:1]) == payload[:1]
    client.close()
    port.close()


def test_blocking_send_is_released_by_a_receive_in_another_process(no_fd_leak):
    port = Port(capacity=2)
    client = port.duplicate(SEND_RIGHTS)
    fill(client, 2)
    pid = fork_child(lambda: client.send(Message(7, b"waited"), timeout=None))
    wait_asleep(pid)
    assert not _exited(pid)
    port.try_recv()  # room for one: the child's send goes through
    assert wait_child(pid) == 0
    assert [m.msg_type for m in drain(port)] == [1, 7]
    client.close()
    port.close()


def test_send_timeouts(no_fd_leak):
    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    fill(client, 1)
    start = time.monotonic()
    with pytest.raises(SendTimedOut):  # a TimeoutError, and a QueueFull
        client.send(Message(1), timeout=0.3)
    assert 0.29 <= time.monotonic() - start < 5

    def child() -> None:  # a timed send that room reaches in time
        client.send(Message(2), timeout=30)

    pid = fork_child(child)
    wait_asleep(pid)
    port.try_recv()
    assert wait_child(pid) == 0
    assert port.try_recv().msg_type == 2
    client.close()
    port.close()


def _exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


# -- close ---------------------------------------------------------------------------


def test_close_wakes_receivers_blocked_in_other_threads(no_fd_leak):
    port = Port()
    threads, results = run_threads(3, port.recv)
    wait_all_blocked(threads)  # one leader in epoll, two followers on a futex
    start = time.monotonic()
    port.close()
    join_all(threads, 5)
    assert time.monotonic() - start < 5
    assert len(results) == 3 and all(isinstance(e, PortClosed) for e in results)


def test_close_wakes_senders_blocked_in_other_processes(no_fd_leak):
    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    fill(client, 1)

    def blocked_sender() -> None:
        with pytest.raises(PortClosed):
            client.send(Message(1), timeout=None)
        assert client.status is PortStatus.CLOSED

    pids = [fork_child(blocked_sender) for _ in range(2)]
    for pid in pids:
        wait_asleep(pid)
    port.close()
    assert [wait_child(pid, timeout=10) for pid in pids] == [0, 0]
    assert client.status is PortStatus.CLOSED
    with pytest.raises(PortClosed):
        client.send(Message(1), timeout=None)
    client.close()


def test_an_exception_from_a_signal_handler_leaves_recv_and_closing_frees_every_fd():
    class Alarm(Exception):
        pass

    def child() -> None:
        Port().close()  # this process's receive service (its fds live as long as it)
        before = open_fds()
        port = Port()
        channel_end, other_end = Channel.create_pair()

        def ring(signum, frame):
            raise Alarm()

        signal.signal(signal.SIGALRM, ring)
        for handle in (port, channel_end):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Alarm):
                handle.recv()  # sleeping in poll when the handler raises
        # Both still work...
        port.send(Message(1, b"still works"))
        assert port.recv(timeout=5).payload == b"still works"
        other_end.send(Message(3))
        assert channel_end.recv(timeout=5).msg_type == 3
        # ...and closing them closes everything they opened.
        for handle in (port, channel_end, other_end):
            handle.close()
        assert open_fds() == before, "a recv left by an exception must not keep fds open"

    run_in_child(child)


def test_close_discards_queued_messages_and_closes_their_handles(no_fd_leak):
    port = Port()
    client = port.duplicate(SEND_RIGHTS)
    reads = []
    for _ in range(3):
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        reads.append(r)
        msg = Message(1)
        msg.attach_handle(FdHandle.adopt(w))
        client.send(msg)
    port.try_recv().close()  # one of them into the local buffer, then dropped by us
    client.send(Message(2))
    port.recv()  # drains the rest of the socket into the buffer
    port.close()
    for r in reads:
        assert os.read(r, 1) == b"", "every write end was closed: the reader sees EOF"
        os.close(r)
    with pytest.raises(PortClosed):
        client.send(Message(1))
    client.close()


def move_receive_right_to(port: Port, body) -> int:
    """Fork a child that gets ``port``'s RECEIVE right moved to it in a message,
    then runs ``body(receive_handle)``. Returns its pid; the parent keeps no
    receiving end."""
    to_child, in_child = Channel.create_pair()

    def child() -> None:
        to_child.close()
        port.release()  # our inherited copy: the receive side stayed with the parent
        (mine,) = in_child.recv(timeout=10).handles
        in_child.close()
        body(mine)

    pid = fork_child(child)
    in_child.close()
    msg = Message(0)
    msg.attach_handle(port)
    to_child.send(msg)
    to_child.close()
    return pid


def test_receiver_death_closes_the_port(no_fd_leak):
    port = Port(capacity=2)
    client = port.duplicate(SEND_RIGHTS)
    ready_r, ready_w = os.pipe()

    def receiver(mine: Port) -> None:
        client.release()
        mine.recv()
        os.write(ready_w, b"!")
        signal.pause()

    pid = move_receive_right_to(port, receiver)
    os.close(ready_w)
    client.send(Message(1))
    assert os.read(ready_r, 1) == b"!"
    os.close(ready_r)
    fill(client, 2)

    def blocked() -> None:
        with pytest.raises(PortClosed):
            client.send(Message(1), timeout=None)

    sender = fork_child(blocked)
    wait_asleep(sender)
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    assert wait_child(sender, timeout=10) == 0
    assert client.status is PortStatus.CLOSED
    with pytest.raises(PortClosed):
        client.send(Message(1), timeout=None)
    client.close()


def test_a_child_forked_after_the_port_was_received_on_cannot_receive_nor_keep_it_open(no_fd_leak):
    port = Port()
    client = port.duplicate(SEND_RIGHTS)
    client.send(Message(0))
    port.recv(timeout=5)  # this process receives on it
    ready_r, ready_w = os.pipe()

    def child() -> None:
        with pytest.raises(InvalidHandle, match="stayed in process"):
            port.recv(timeout=0)
        client.send(Message(2, b"from the child"))  # sending works from anywhere
        os.write(ready_w, b"!")
        signal.pause()  # holding every handle it inherited

    pid = fork_child(child)
    assert os.read(ready_r, 1) == b"!"
    assert bytes(port.recv(timeout=5).payload) == b"from the child"
    port.close()  # the receiver is gone: the child's copies do not keep the port open
    os.kill(pid, signal.SIGKILL)
    wait_child(pid)
    with pytest.raises(PortClosed):
        client.send(Message(1))
    for fd in (ready_r, ready_w):
        os.close(fd)
    client.close()


def test_only_one_process_receives_at_a_time(spawn_ready, no_fd_leak):
    import multiprocessing

    port = Port()
    ctx = multiprocessing.get_context("spawn")
    answer_r, answer_w = ctx.Pipe(duplex=False)
    port.send(Message(1))
    port.recv(timeout=5)  # this process receives
    child = ctx.Process(target=_try_to_receive, args=(port, answer_w))  # a pickled copy
    child.start()
    answer_w.close()
    assert answer_r.recv() == "InvalidHandle"
    child.join(30)
    child.close()
    answer_r.close()
    port.close()


def _try_to_receive(port: Port, answer) -> None:
    try:
        port.recv(timeout=0)
        answer.send("received")
    except InvalidHandle:
        answer.send("InvalidHandle")
    except Exception as e:  # noqa: BLE001
        answer.send(repr(e))


# -- senders killed at any instant ----------------------------------------------------


def test_a_sender_killed_holding_credits_does_not_shrink_the_port(no_fd_leak):
    port = Port(capacity=4)
    client = port.duplicate(SEND_RIGHTS)
    ready_r, ready_w = os.pipe()

    def holder() -> None:
        client.send(Message(1, b"one"))  # connected, granted room, one message queued
        os.write(ready_w, b"!")
        signal.pause()

    for _ in range(3):
        pid = fork_child(holder)
        assert os.read(ready_r, 1) == b"!"
        os.kill(pid, signal.SIGKILL)
        assert wait_child(pid) == -signal.SIGKILL
        assert port.recv(timeout=5).payload == b"one"
    os.close(ready_r)
    os.close(ready_w)
    assert_capacity_exact(port, client)
    client.close()
    port.close()


def test_a_sender_stopped_while_the_port_is_full_does_not_wedge_others(no_fd_leak):
    port = Port(capacity=3)
    client = port.duplicate(SEND_RIGHTS)
    pid = fork_child(lambda: [client.send(Message(9), timeout=None) for _ in range(100)])
    got = [port.recv(timeout=10) for _ in range(3)]
    os.kill(pid, signal.SIGSTOP)  # stopped wherever it is, holding what it holds
    wait_stopped(pid)
    drain(port)
    client.send(Message(5, b"mine"), timeout=10)  # its unused room is taken back for us
    msgs = drain(port)
    assert any(m.msg_type == 5 for m in msgs)
    os.kill(pid, signal.SIGKILL)
    wait_child(pid)
    assert all(m.msg_type == 9 for m in got)
    assert_capacity_exact(port, client)
    client.close()
    port.close()


def test_senders_killed_mid_stream_never_tear_or_wedge(no_fd_leak):
    port = Port(capacity=8)
    client = port.duplicate(SEND_RIGHTS)
    rng = random.Random(1234)
    for round_ in range(12):
        def sender(index: int) -> None:
            seq = 0
            while True:  # big ones too: their payload travels in a data segment
                size = 200_000 if seq % 5 == 4 else 0
                client.send(Message(1, payload_for(index, seq, size)), timeout=None)
                seq += 1

        pids = [fork_child(lambda i=i: sender(i)) for i in range(3)]
        got: dict[int, list[int]] = {i: [] for i in range(3)}
        for _ in range(rng.randrange(0, 60)):
            index, seq = check_payload(port.recv(timeout=20).payload)
            got[index].append(seq)
        for pid in pids:  # at whatever instant each one happens to be
            os.kill(pid, signal.SIGKILL)
        assert [wait_child(pid) for pid in pids] == [-9] * 3
        for msg in drain_after_hangups(port):
            index, seq = check_payload(msg.payload)
            got[index].append(seq)
        for seqs in got.values():
            assert seqs == list(range(len(seqs))), "no gap, no duplicate, no torn message"
    assert_capacity_exact(port, client)
    client.close()
    port.close()


def drain_after_hangups(port: Port) -> list[Message]:
    """Everything queued, once the receiver has seen its dead senders go."""
    out = []
    while True:
        try:
            out.append(port.recv(timeout=0.2))
        except Empty:
            return out


# -- handles -------------------------------------------------------------------------


def test_send_rights_by_fork_and_by_message(no_fd_leak):
    port = Port()
    inherited = port.duplicate(SEND_RIGHTS)
    run_in_child(lambda: inherited.send(Message(1, b"inherited")))
    to_child, carrier = Channel.create_pair()

    def child() -> None:
        to_child.close()
        (right,) = carrier.recv(timeout=10).handles
        assert isinstance(right, Port) and right.rights == SEND_RIGHTS
        assert right.id == port.id
        right.send(Message(3, struct.pack("<Q", right.id)))

    pid = fork_child(child)
    carrier.close()
    msg = Message(2)
    sent_right = port.duplicate(SEND_RIGHTS)
    msg.attach_handle(sent_right)
    to_child.send(msg)
    assert not sent_right.valid, "the moved handle is gone from the sender"
    assert wait_child(pid) == 0
    got = [port.recv(timeout=5), port.recv(timeout=5)]
    assert [m.msg_type for m in got] == [1, 3]
    assert struct.unpack("<Q", bytes(got[1].payload))[0] == port.id
    inherited.close()
    to_child.close()
    port.close()


def test_a_request_carries_its_reply_channel(no_fd_leak):
    server_port = Port()
    to_server = server_port.duplicate(SEND_RIGHTS)

    def server(mine: Port) -> None:
        to_server.close()
        request = mine.recv(timeout=20)
        (reply_to,) = request.handles
        reply_to.send(Message(2, bytes(request.payload).upper()))

    pid = move_receive_right_to(server_port, server)
    mine, theirs = Channel.create_pair()
    request = Message(1, b"hello")
    request.attach_handle(theirs)
    to_server.send(request)
    assert not theirs.valid
    with pytest.raises(InvalidHandle):
        theirs.recv(timeout=0)
    reply = mine.recv(timeout=20)
    assert bytes(reply.payload) == b"HELLO" and reply.sender.pid == pid
    assert wait_child(pid) == 0
    mine.close()
    to_server.close()


SEND_ONLY_CHILD = textwrap.dedent(
    """
    import os, socket, struct, sys
    import redstone_ipc.port  # registers the PORT handle type
    from redstone_ipc.message.wire import recv_message
    link = socket.socket(fileno=int(sys.argv[1]))
    before = set(int(n) for n in os.listdir("/proc/self/fd"))
    msg = recv_message(link)
    (port,) = msg.handles
    arrived = sorted(set(int(n) for n in os.listdir("/proc/self/fd")) - before)
    stolen = []
    for fd in arrived:  # try every fd that came with the handle, raw
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            data = s.recv(65536, socket.MSG_DONTWAIT)
            if data:
                stolen.append(data)
        except OSError:
            pass
        s.close()
    try:
        port.recv(timeout=0)
        refused = False
    except PermissionError:
        refused = True
    link.send(struct.pack("<II?", len(arrived), len(stolen), refused))
    """
)


def test_a_send_only_handle_cannot_receive_even_through_its_raw_fds(no_fd_leak):
    port = Port()
    port.send(Message(1, b"secret"))
    a, b = seqpacket_pair()
    child = subprocess.Popen(
        [sys.executable, "-c", SEND_ONLY_CHILD, str(b.fileno())],
        pass_fds=[b.fileno()],
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
    )
    b.close()
    msg = Message(0)
    msg.attach_handle(port.duplicate(SEND_RIGHTS))
    send_message(a, msg)
    assert select.select([a], [], [], 30)[0], "the child did not answer"
    fds, stolen, refused = struct.unpack("<II?", a.recv(64))
    assert child.wait(30) == 0
    a.close()
    assert fds == 1, "the door's sending end, shut for reading: no receiving end"
    assert stolen == 0 and refused
    assert bytes(port.try_recv().payload) == b"secret", "the message is still queued"
    port.close()


def test_the_receive_right_moves_to_another_process(no_fd_leak):
    port = Port()
    client = port.duplicate(SEND_RIGHTS)
    client.send(Message(1, b"to the old receiver"))
    assert port.recv(timeout=5).msg_type == 1  # the connection is made and used

    def child(receiver: Port) -> None:
        client.release()
        assert receiver.rights == Rights.SEND | Rights.RECEIVE | Rights.BASIC
        assert bytes(receiver.recv(timeout=20).payload) == b"to the new receiver"
        receiver.close()

    pid = move_receive_right_to(port, child)
    assert not port.valid
    assert client._object.receive is None, "no copy of the receiving end is left here"
    client.send(Message(1, b"to the new receiver"))  # our connection was ended: a new one
    assert wait_child(pid) == 0
    with pytest.raises(PortClosed):  # the new receiver closed it
        client.send(Message(1))
    client.close()


def test_a_receive_right_with_buffered_messages_is_not_sent_away(no_fd_leak):
    port = Port()
    carrier = Port()
    port.send(Message(1))
    port.send(Message(2))
    port.recv()  # both read: one is still queued in this process
    msg = Message(1)
    msg.attach_handle(port)
    with pytest.raises(IpcError, match="queued"):
        carrier.send(msg)
    assert port.valid
    assert port.try_recv().msg_type == 2
    carrier.send(msg)  # now it can go
    assert not port.valid
    carrier.close()


def test_fd_count_is_flat_after_ten_thousand_messages_with_handles():
    port = Port(capacity=16)
    client = port.duplicate(SEND_RIGHTS)
    other = Port()
    count = 10_000

    def sender() -> None:
        # This process's connection, and a wait for room: their fds first.
        for _ in range(port.capacity + 1):
            client.send(Message(0, b"connect"), timeout=None)
        before = open_fds() & open_fds()  # (an fd being closed now is no fd of ours)
        for i in range(count):
            msg = Message(i % 3, b"x" * (i % 50))
            msg.attach_handle(other.duplicate(SEND_RIGHTS))
            if i % 2:
                msg.attach_handle(FdHandle.adopt(os.eventfd(i)))
            client.send(msg, timeout=None)
        assert open_fds() & open_fds() == before

    warm = Message(0)  # the receiver's lazily made fds (its inbox, service thread) first
    warm.attach_handle(other.duplicate(SEND_RIGHTS))
    client.send(warm)
    port.recv().close()
    before = open_fds()
    pid = fork_child(sender)
    for _ in range(port.capacity + 1):
        assert bytes(port.recv(timeout=20)) == b"connect"
    for i in range(count):
        with port.recv(timeout=20) as msg:
            assert msg.msg_type == i % 3 and len(msg.handles) == 1 + i % 2
            assert msg.handles[0].id == other.id
    assert wait_child(pid, timeout=60) == 0
    with pytest.raises(Empty):
        port.try_recv()  # the receiver notices the sender's end (its connection goes)
    assert open_fds() == before
    for h in (client, other, port):
        h.close()


def test_malformed_port_handles_are_refused_and_closed(no_fd_leak):
    a, b = seqpacket_pair()
    head = struct.Struct("<4I IHHiI")
    desc = struct.Struct("<HHIQ")
    cases = [
        (0, int(SEND_RIGHTS), 16),  # no fd at all
        (1, int(SEND_RIGHTS), 16),  # one fd, not a socket
        (1, int(SEND_RIGHTS), 0),  # capacity 0
        (2, int(SEND_RIGHTS), 16),  # two fds but no RECEIVE
        (3, int(Rights.RECEIVE | Rights.SEND), 16),  # RECEIVE, but pipes for the door and lock
    ]
    for fd_count, rights, extra in cases:
        pipes = [os.pipe() for _ in range(fd_count)]
        fds = [r for r, _ in pipes]
        record = head.pack(0, 1, 1, 0, 0x50495352, 1, 0, 0, 0) + desc.pack(2, fd_count, rights, extra)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{fd_count}i", *fds))] if fds else []
        a.sendmsg([record], anc)
        with pytest.raises(ProtocolError):
            recv_message(b)
        for r, w in pipes:
            os.close(r)
            os.close(w)
    # A real door that can still read: refused, closed.
    rx, tx = seqpacket_pair()
    record = head.pack(0, 1, 1, 0, 0x50495352, 1, 0, 0, 0) + desc.pack(2, 1, int(SEND_RIGHTS), 16)
    a.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", tx.fileno()))])
    with pytest.raises(ProtocolError, match="able to receive"):
        recv_message(b)
    for s in (a, b, rx, tx):
        s.close()


# -- big messages --------------------------------------------------------------------


def _in_shared_segment(view: memoryview) -> bool:
    """Whether ``view`` points into a redstone data segment mapped here (shared
    memory the sender wrote), rather than into private memory (a copy)."""
    from redstone_ipc.linux.memfd import buffer_address

    address = buffer_address(view)
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *rest = line.split()
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                return "redstone-segment" in line and rest[0][3] == "s"
    return False


def test_a_multi_mib_message_crosses_processes_mapped_not_copied(no_fd_leak):
    port = Port(capacity=2)
    client = port.duplicate(SEND_RIGHTS)
    size = 24 << 20
    digest = hashlib.sha256(bytes(range(256)) * (size // 256)).digest()

    def sender() -> None:
        client.send(Message(1, bytes(range(256)) * (size // 256)), timeout=None)

    pid = fork_child(sender)
    msg = port.recv(timeout=30)
    assert wait_child(pid) == 0
    assert len(msg.payload) == size and msg.payload.readonly
    assert hashlib.sha256(msg.payload).digest() == digest
    assert _in_shared_segment(msg.payload), "the receiver reads the sender's pages"
    msg.close()
    client.close()
    port.close()


def test_a_loan_is_received_as_a_view_of_the_very_same_pages(no_fd_leak):
    port = Port(capacity=2)
    client = port.duplicate(SEND_RIGHTS)

    def sender() -> None:
        loan = client.loan(1 << 20)
        loan.view[:] = bytes(range(256)) * 4096
        client.send(Message(7, loan), timeout=None)
        assert loan.sent
        with pytest.raises(ValueError):
            client.send(Message(7, loan))  # a loan goes once

    pid = fork_child(sender)
    msg = port.recv(timeout=30)
    assert wait_child(pid) == 0
    assert msg.msg_type == 7 and msg.payload == bytes(range(256)) * 4096
    assert _in_shared_segment(msg.payload)
    msg.close()
    small = client.loan(10)  # even a small loan is not copied
    small.view[:] = b"0123456789"
    client.send(Message(8, small))
    got = port.recv(timeout=5)
    assert got.payload == b"0123456789" and _in_shared_segment(got.payload)
    got.close()
    unused = client.loan(4096)
    unused.release()  # given back unsent
    client.close()
    port.close()


# -- asyncio -------------------------------------------------------------------------


def test_asyncio_waits_in_the_event_loop_without_threads(no_fd_leak):
    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    go_r, go_w = os.pipe()

    def sender() -> None:
        os.read(go_r, 1)
        client.send(Message(1, b"first"), timeout=None)
        client.send(Message(2, b"second"), timeout=None)

    pid = fork_child(sender)
    os.close(go_r)

    async def main() -> None:
        threads = threading.active_count()
        waiting = asyncio.ensure_future(port.recv_async(timeout=20))
        other = asyncio.ensure_future(port.recv_async(timeout=20))
        await asyncio.sleep(0)
        assert threading.active_count() == threads, "no thread per wait"
        os.write(go_w, b"!")
        got = sorted([(await waiting).msg_type, (await other).msg_type])
        assert got == [1, 2]
        with pytest.raises(Empty):
            await port.recv_async(timeout=0.05)
        client.send(Message(3))  # full again: an async sender waits for room
        sending = asyncio.ensure_future(client.send_async(Message(4)))
        await asyncio.sleep(0)
        assert not sending.done()
        assert port.try_recv().msg_type == 3
        await asyncio.wait_for(sending, 20)
        with pytest.raises(QueueFull):
            await client.send_async(Message(5), timeout=0.05)
        assert (await port.recv_async()).msg_type == 4
        closing = asyncio.ensure_future(port.recv_async())
        await asyncio.sleep(0)
        port.close()
        with pytest.raises(PortClosed):
            await asyncio.wait_for(closing, 5)

    asyncio.run(main())
    os.close(go_w)
    assert wait_child(pid) == 0
    client.close()


def test_ids_are_port_ids():
    with Port() as port:
        assert PortId(port.id) == port.id


def test_a_received_port_handle_never_sleeps_on_a_blocking_door(no_fd_leak):
    """The sender of a handle chooses its fds' flags: a blocking door must not
    turn ``send(timeout=0)`` into a sleep without end."""
    port = Port(capacity=1)
    port.send(Message(1, b"fill"))  # full
    os.set_blocking(port._object.send_door.fileno(), True)  # what a hostile peer would hand over
    a, b = seqpacket_pair()
    msg = Message(2)
    msg.attach_handle(port.duplicate(SEND_RIGHTS))
    send_message(a, msg)

    def child() -> None:
        (client,) = recv_message(b).handles
        with pytest.raises(QueueFull):
            client.send(Message(3, b"no room"), timeout=0)

    run_in_child(child, timeout=20)
    port.close()
    a.close()
    b.close()
