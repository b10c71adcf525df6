"""Channels between real processes: pairs, capacity per direction, call, closing.

Children are forked; each closes the endpoint it does not use, as with a pipe.
Where a test must know that a process or thread is asleep in the kernel
before acting, it reads /proc (see ``test_port.wait_asleep``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import struct
import threading
import time

import pytest

from conftest import fork_child, open_fds, run_in_child, wait_child
from redstone_ipc import (
    Empty,
    IpcError,
    InvalidHandle,
    Message,
    PeerClosed,
    PermissionDenied,
    QueueFull,
    Rights,
    TimedOut,
)
from redstone_ipc.channel import Channel, ChannelEndpoint, ChannelPair
from redstone_ipc.port import Port
from test_port import check_payload, payload_for, wait_asleep
from test_reliability import join_all, run_threads, wait_all_blocked

pytestmark = pytest.mark.timeout(60)


def echo_server(mine: ChannelEndpoint, other: ChannelEndpoint) -> None:
    """Answer every message with the same payload reversed and the same txid."""
    other.close()
    while True:
        try:
            msg = mine.recv()
        except PeerClosed:
            return
        reply = Message(msg.msg_type, bytes(msg.payload)[::-1])
        reply.txid = msg.txid
        mine.send(reply, timeout=None)


def drain(ep: ChannelEndpoint) -> list[Message]:
    out = []
    while True:
        try:
            out.append(ep.try_recv())
        except Empty:
            return out


# -- the pair ----------------------------------------------------------------------


def test_create_pair_gives_two_connected_endpoints(no_fd_leak):
    pair = Channel.create_pair()
    assert isinstance(pair, ChannelPair)
    a, b = pair
    assert (a, b) == (pair.endpoint0, pair.endpoint1)
    for ep in pair:
        assert isinstance(ep, ChannelEndpoint)
        assert ep.rights == Rights.SEND | Rights.RECEIVE | Rights.TRANSFER | Rights.WAIT
        assert ep.capacity == 16 and not ep.peer_closed
        with pytest.raises(PermissionDenied):
            ep.duplicate()  # 1:1: never duplicable
    a.send(Message(1, b"to b"))
    b.send(Message(2, b"to a"), priority=3)
    assert bytes(b.recv(timeout=5).payload) == b"to b"
    got = a.recv(timeout=5)
    assert (bytes(got.payload), got.priority, got.sender.pid) == (b"to a", 3, os.getpid())
    for bad in (0, 2**32, None):
        with pytest.raises(ValueError):
            Channel.create_pair(bad)
    a.close()
    assert b.peer_closed
    with pytest.raises(PeerClosed):
        b.recv(timeout=5)
    b.close()


def test_each_direction_has_its_own_capacity(no_fd_leak):
    a, b = Channel.create_pair(capacity=3)
    for i in range(3):
        a.send(Message(i))
    with pytest.raises(QueueFull):
        a.send(Message(9), timeout=0)
    for i in range(3):  # the other direction is not affected
        b.send(Message(i))
    with pytest.raises(QueueFull):
        b.send(Message(9), timeout=0)
    assert [m.msg_type for m in drain(b)] == [0, 1, 2]
    assert [m.msg_type for m in drain(a)] == [0, 1, 2]
    a.close()
    b.close()


def test_send_recv_and_priorities_across_processes(no_fd_leak):
    a, b = Channel.create_pair(capacity=8)

    def child() -> None:
        a.close()
        for seq in range(200):
            b.send(Message(1, payload_for(1, seq)), priority=seq % 2, timeout=None)
        b.close()

    pid = fork_child(child)
    b.close()
    seqs = {0: [], 1: []}
    while True:
        try:
            msg = a.recv(timeout=20)
        except PeerClosed:
            break
        assert msg.sender.pid == pid
        _, seq = check_payload(msg.payload)
        seqs[msg.priority].append(seq)
    assert seqs[0] == list(range(0, 200, 2)) and seqs[1] == list(range(1, 200, 2))
    assert wait_child(pid) == 0
    a.close()


def test_blocking_send_is_released_by_the_peer_receiving(no_fd_leak):
    a, b = Channel.create_pair(capacity=1)
    a.send(Message(1))
    pid = fork_child(lambda: (b.close(), a.send(Message(2), timeout=None)))
    wait_asleep(pid)
    assert b.try_recv().msg_type == 1
    assert wait_child(pid) == 0
    assert b.recv(timeout=5).msg_type == 2
    start = time.monotonic()
    a.send(Message(3))
    with pytest.raises(QueueFull):
        a.send(Message(4), timeout=0.2)
    assert 0.19 <= time.monotonic() - start < 5
    a.close()
    b.close()


# -- call ----------------------------------------------------------------------------


def test_call_returns_its_reply_and_leaves_other_messages_queued(no_fd_leak):
    client, server_end = Channel.create_pair()

    def server() -> None:
        client.close()
        assert server_end.recv(timeout=20).msg_type == 9
        request = server_end.recv(timeout=20)
        assert request.txid != 0
        for i in range(3):  # unrelated traffic first, including a foreign txid
            noise = Message(10 + i, b"noise")
            noise.txid = 0 if i != 1 else request.txid + 1000
            server_end.send(noise)
        reply = Message(2, bytes(request.payload).upper())
        reply.txid = request.txid
        server_end.send(reply, priority=-5)  # even a low-priority reply goes to its caller
        server_end.send(Message(20, b"after"))
        server_end.recv(timeout=20)  # wait for the client to be done

    pid = fork_child(server)
    server_end.close()
    client.send(Message(9, b"unrelated, before"))
    reply = client.call(Message(1, b"question"), timeout=20)
    assert bytes(reply.payload) == b"QUESTION" and reply.msg_type == 2
    assert reply.txid != 0
    rest = [client.recv(timeout=20) for _ in range(4)]
    assert [m.msg_type for m in rest] == [10, 11, 12, 20], "the others stay queued, in order"
    client.send(Message(0))
    assert wait_child(pid) == 0
    client.close()


def test_concurrent_calls_from_threads_each_get_their_own_reply(no_fd_leak):
    client, server_end = Channel.create_pair(capacity=4)

    def server() -> None:
        client.close()
        pending = [server_end.recv(timeout=20) for _ in range(6)]
        for request in reversed(pending):  # answer out of order
            reply = Message(request.msg_type, bytes(request.payload) * 2)
            reply.txid = request.txid
            server_end.send(reply, timeout=None)
        server_end.send(Message(99, b"unrelated"), timeout=None)
        server_end.recv(timeout=20)

    pid = fork_child(server)
    server_end.close()
    results: dict[int, bytes] = {}
    unrelated = []

    def caller(i: int) -> None:
        results[i] = bytes(client.call(Message(i, b"%d" % i), timeout=20).payload)

    def receiver() -> None:
        unrelated.append(client.recv(timeout=20))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=receiver))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert results == {i: b"%d%d" % (i, i) for i in range(6)}
    assert [m.msg_type for m in unrelated] == [99], "recv never takes a caller's reply"
    client.send(Message(0))
    assert wait_child(pid) == 0
    client.close()


def test_call_timeout_and_the_late_reply(no_fd_leak):
    client, server_end = Channel.create_pair()
    start = time.monotonic()
    with pytest.raises(TimedOut):
        client.call(Message(1, b"anyone?"), timeout=0.2)
    assert 0.19 <= time.monotonic() - start < 5
    request = server_end.recv(timeout=5)
    late = Message(2, b"late")
    late.txid = request.txid
    server_end.send(late)
    got = client.recv(timeout=5)  # nobody waits for it any more: an ordinary message
    assert got.msg_type == 2 and got.txid == request.txid
    with pytest.raises(PermissionDenied):
        client.replace(Rights.SEND | Rights.TRANSFER).call(Message(1))
    server_end.close()


def test_call_raises_peer_closed_when_the_server_dies(no_fd_leak):
    client, server_end = Channel.create_pair()

    def server() -> None:
        client.close()
        server_end.recv(timeout=20)
        os.kill(os.getpid(), signal.SIGKILL)

    pid = fork_child(server)
    server_end.close()
    with pytest.raises(PeerClosed):
        client.call(Message(1), timeout=20)
    assert wait_child(pid) == -signal.SIGKILL
    client.close()


# -- closing ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "exit", "SIGKILL"])
def test_the_peer_going_away_drains_then_peer_closed(no_fd_leak, how):
    a, b = Channel.create_pair(capacity=8)
    ready_r, ready_w = os.pipe()

    def child() -> None:
        a.close()
        for seq in range(5):
            b.send(Message(1, payload_for(2, seq)))
        if how == "close":
            b.close()
            os.write(ready_w, b"!")
            signal.pause()
        elif how == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)

    pid = fork_child(child)
    b.close()
    os.close(ready_w)
    if how == "close":
        assert os.read(ready_r, 1) == b"!"
    else:
        wait_child(pid)
    got = [check_payload(a.recv(timeout=20).payload)[1] for _ in range(5)]
    assert got == [0, 1, 2, 3, 4], "what was queued is received first"
    with pytest.raises(PeerClosed):
        a.recv(timeout=20)
    with pytest.raises(PeerClosed):
        a.try_recv()
    with pytest.raises(PeerClosed):
        a.send(Message(1))
    if how == "close":
        os.kill(pid, signal.SIGKILL)
        wait_child(pid)
    os.close(ready_r)
    a.close()


def test_a_sender_waiting_for_room_wakes_when_the_peer_dies(no_fd_leak):
    a, b = Channel.create_pair(capacity=1)

    def receiver() -> None:
        a.close()
        b.recv()  # it receives (the child is where b is received), then stops
        signal.pause()

    pid = fork_child(receiver)
    b.close()
    a.send(Message(0))  # received
    a.send(Message(1))  # queued: the channel is full
    result: list[object] = []
    sender = threading.Thread(target=lambda: result.append(_catch(a.send, Message(2), timeout=None)))
    sender.start()
    wait_asleep(os.getpid(), sender.native_id)
    os.kill(pid, signal.SIGKILL)
    sender.join(10)
    assert not sender.is_alive() and isinstance(result[0], PeerClosed)
    wait_child(pid)
    a.close()


def _catch(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return e
    return None


def test_closing_an_endpoint_wakes_its_own_waiting_threads(no_fd_leak):
    a, b = Channel.create_pair()
    threads, results = run_threads(2, a.recv)
    wait_all_blocked(threads)
    a.close()
    join_all(threads, 5)
    assert all(isinstance(e, InvalidHandle) for e in results) and len(results) == 2
    with pytest.raises(PeerClosed):
        b.recv(timeout=5)
    b.close()


# -- handles ---------------------------------------------------------------------------


def test_an_endpoint_moves_to_another_process(no_fd_leak):
    a, b = Channel.create_pair()
    to_port, port = Channel.create_pair()  # the carrier: the child receives on its end

    def child() -> None:
        a.close()
        b.close()
        to_port.close()
        (ep,) = port.recv(timeout=20).handles
        assert isinstance(ep, ChannelEndpoint) and ep.capacity == 16
        while True:
            try:
                msg = ep.recv()
            except PeerClosed:
                return
            reply = Message(2, bytes(msg.payload) + b" (moved)")
            reply.txid = msg.txid
            ep.send(reply)

    pid = fork_child(child)
    port.close()
    msg = Message(1)
    msg.attach_handle(b)
    to_port.send(msg)
    assert not b.valid
    with pytest.raises(InvalidHandle):
        b.send(Message(1))
    assert bytes(a.call(Message(1, b"hi"), timeout=20).payload) == b"hi (moved)"
    a.close()
    assert wait_child(pid) == 0
    to_port.close()


def test_a_transferred_endpoint_without_send_is_enforced_by_the_kernel(no_fd_leak):
    a, b = Channel.create_pair()
    carrier = Port()
    receive_only = b.replace(Rights.RECEIVE | Rights.TRANSFER)
    msg = Message(1)
    msg.attach_handle(receive_only)
    carrier.send(msg)
    (got,) = carrier.recv().handles
    assert got.rights == Rights.RECEIVE | Rights.TRANSFER
    a.send(Message(5))
    assert got.recv(timeout=5).msg_type == 5
    assert got._object.send_door is None, "no fd that could reach the peer came with it"
    with pytest.raises(PermissionDenied):
        got.send(Message(1))
    with pytest.raises(PeerClosed):
        a.recv(timeout=5)  # nothing will ever come from that side again
    for h in (a, got, carrier):
        h.close()


def test_an_endpoint_with_buffered_messages_is_not_sent_away(no_fd_leak):
    a, b = Channel.create_pair()
    carrier = Port()
    a.send(Message(1))
    a.send(Message(2))
    b.recv()  # reads both; one stays queued here
    msg = Message(1)
    msg.attach_handle(b)
    with pytest.raises(IpcError, match="queued"):
        carrier.send(msg)
    assert b.try_recv().msg_type == 2
    carrier.send(msg)
    assert not b.valid
    for h in (a, carrier):
        h.close()


def test_fd_count_is_flat_after_many_calls_with_handles():
    client, server_end = Channel.create_pair()
    pid = fork_child(lambda: echo_server(server_end, client))
    server_end.close()
    client.call(Message(1, b"warm up"), timeout=20)
    before = open_fds()
    for i in range(5000):
        request = Message(1, b"%d" % i)
        reply_pair = Channel.create_pair(2)
        request.attach_handle(reply_pair.endpoint1)  # a handle rides along (3 fds)
        reply = client.call(request, timeout=20)
        assert bytes(reply.payload) == (b"%d" % i)[::-1]
        reply_pair.endpoint0.close()
    assert open_fds() == before
    client.close()
    assert wait_child(pid) == 0


# -- big messages, asyncio -----------------------------------------------------------------


def test_a_multi_mib_message_both_ways(no_fd_leak):
    client, server_end = Channel.create_pair(capacity=2)
    size = 12 << 20
    blob = os.urandom(1 << 16) * (size >> 16)
    pid = fork_child(lambda: echo_server(server_end, client))
    server_end.close()
    reply = client.call(Message(1, blob), timeout=30)
    assert len(reply.payload) == size
    assert hashlib.sha256(reply.payload).digest() == hashlib.sha256(blob[::-1]).digest()
    client.close()
    assert wait_child(pid) == 0


def test_asyncio_send_recv_and_call(no_fd_leak):
    client, server_end = Channel.create_pair(capacity=1)
    pid = fork_child(lambda: echo_server(server_end, client))
    server_end.close()

    async def main() -> None:
        threads = threading.active_count()
        replies = await asyncio.gather(
            *(client.call_async(Message(i, b"abc%d" % i), timeout=20) for i in range(5))
        )
        assert [bytes(r.payload) for r in replies] == [b"%dcba" % i for i in range(5)]
        assert threading.active_count() == threads
        await client.send_async(Message(7, b"xy"))
        assert bytes((await client.recv_async(timeout=20)).payload) == b"yx"
        with pytest.raises(Empty):
            await client.recv_async(timeout=0.05)

    asyncio.run(main())
    client.close()
    assert wait_child(pid) == 0


def test_fork_inheritance_like_a_pipe(no_fd_leak):
    a, b = Channel.create_pair()
    run_in_child(lambda: (a.close(), b.send(Message(1, struct.pack("<i", os.getpid())))))
    msg = a.recv(timeout=5)
    assert struct.unpack("<i", bytes(msg.payload))[0] == msg.sender.pid != os.getpid()
    assert not a.peer_closed, "we still hold b ourselves"
    b.close()
    assert a.peer_closed
    a.close()
