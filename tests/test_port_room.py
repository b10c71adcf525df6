"""Room besides credits: data segments for large payloads, the socket for handles.

A payload too big for a slot travels in the sender's data segment and is
received as a view of those very pages, so while the receiver keeps it,
that room stays taken. The sender then makes a bigger segment (up to
``layout.MAX_SEGMENTS``), and only when every segment is full of payloads
the receiver keeps does it wait, until one is released.

Handles travel as records on the connection socket, which the kernel
bounds: a sender that finds it full waits for the receiver to read, like
a sender without credits, and its ``QueueFull`` says so.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import threading

import pytest

from conftest import fork_child, wait_child
from test_port import wait_asleep, wait_stopped
from redstone_ipc import Empty, FdHandle, Message, QueueFull, SendTimedOut
from redstone_ipc.message.message import COPY_LIMIT
from redstone_ipc.port import SEND_RIGHTS, Port
from redstone_ipc.transport import layout

pytestmark = pytest.mark.timeout(60)

SIZE = 80 << 10  # above COPY_LIMIT: received as a view of the sender's segment


assert SIZE > COPY_LIMIT


def numbered(i: int) -> bytes:
    return struct.pack("<I", i) * (SIZE // 4)


def number_of(msg: Message) -> int:
    data = bytes(msg)
    (i,) = struct.unpack_from("<I", data)
    assert data == numbered(i), "torn payload"
    return i


def test_a_receiver_may_keep_many_large_payloads_while_the_sender_goes_on(no_fd_leak):
    port = Port(capacity=256)
    client = port.duplicate(SEND_RIGHTS)
    count = 100  # 8 MiB kept at once: many segments

    def sender() -> None:
        for i in range(count):
            client.send(Message(1, numbered(i)), timeout=10)

    pid = fork_child(sender)
    kept = [port.recv(timeout=10) for _ in range(count)]
    assert wait_child(pid) == 0, "the sender never had to wait for the payloads kept"
    assert [number_of(m) for m in kept] == list(range(count))
    for m in kept:
        m.close()
    client.close()
    port.close()


def test_a_sender_out_of_data_room_says_so_and_a_release_lets_it_go_on(no_fd_leak):
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)
    kept = []
    with pytest.raises(QueueFull, match="holds earlier payloads"):
        for i in range(4096):
            client.send(Message(1, numbered(i)), timeout=0)
            kept.append(port.recv(timeout=0))
    assert 50 < len(kept) < 4096  # stopped by the data segments, not the capacity
    with pytest.raises(QueueFull, match="holds earlier payloads"):
        client.send(Message(1, numbered(0)), timeout=0)  # still: nothing went back
    for m in kept:  # the payloads go back (closing, or dropping the last view)
        m.close()
    client.send(Message(1, numbered(len(kept))), timeout=0)
    assert number_of(port.recv(timeout=0)) == len(kept)
    client.close()
    port.close()


def test_an_async_sender_waits_for_data_room_in_the_event_loop(no_fd_leak):
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)
    kept = []
    try:
        while True:
            client.send(Message(1, numbered(len(kept))), timeout=0)
            kept.append(port.recv(timeout=0))
    except QueueFull:
        pass

    async def release_later() -> None:
        await asyncio.sleep(0.05)  # the sender must be waiting by now, in this loop
        for m in kept:
            m.close()

    async def main() -> None:
        releasing = asyncio.ensure_future(release_later())
        # Credits are plenty; only data room lacks. The wait must yield to
        # the loop, or the coroutine that releases never runs.
        await client.send_async(Message(2, numbered(7)), timeout=20)
        assert releasing.done()

    asyncio.run(main())
    assert number_of(port.recv(timeout=0)) == 7
    client.close()
    port.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_sender_waiting_for_data_room_is_woken_by_every_release(no_fd_leak, seed):
    """The receiver releases payloads at random moments, many of them while
    the sender is deciding to sleep: a lost wake would hang the sender."""
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)
    count = 3000

    def sender() -> None:
        for i in range(count):
            client.send(Message(1, numbered(i)), timeout=None)

    pid = fork_child(sender)
    rng = random.Random(seed)
    kept: list[Message] = []
    got = 0
    while got < count:
        try:
            msg = port.recv(timeout=0)
        except Empty:
            for m in kept:  # the sender may wait for these: let them all go
                m.close()
            kept.clear()
            msg = port.recv(timeout=30)
        assert number_of(msg) == got
        got += 1
        kept.append(msg)
        if rng.random() < 0.01:
            cut = rng.randrange(len(kept) + 1)
            for m in kept[:cut]:
                m.close()
            del kept[:cut]
    for m in kept:
        m.close()
    assert wait_child(pid) == 0
    client.close()
    port.close()


# -- the connection socket ---------------------------------------------------------

HANDLED = 1500  # more records than a connection socket holds (about 400 here)


def with_fd(i: int) -> Message:
    r, w = os.pipe()
    os.write(w, struct.pack("<I", i))
    os.close(w)
    msg = Message(1, struct.pack("<I", i))
    msg.attach_handle(FdHandle.adopt(r))
    return msg


def check_with_fd(msg: Message, i: int) -> None:
    assert struct.unpack("<I", bytes(msg)) == (i,)
    (handle,) = msg.handles
    assert os.read(handle.fileno(), 8) == struct.pack("<I", i), "the fd sent with it"
    msg.close()


def test_a_sender_waits_while_the_socket_is_full_of_handles_and_goes_on(no_fd_leak):
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)

    def sender() -> None:
        for i in range(HANDLED):
            client.send(with_fd(i), timeout=None)

    pid = fork_child(sender)
    wait_asleep(pid)  # it filled the socket (credits are plenty) and sleeps
    for i in range(HANDLED):
        check_with_fd(port.recv(timeout=30), i)
    assert wait_child(pid) == 0
    client.close()
    port.close()


def test_a_full_socket_is_queue_full_with_timeout_zero_and_loses_nothing(no_fd_leak):
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)
    sent = 0
    with pytest.raises(QueueFull, match="no room for more handles"):
        while sent < HANDLED:
            msg = with_fd(sent)
            client.send(msg, timeout=0)
            sent += 1
    assert 0 < sent < HANDLED
    assert msg.handles[0].fileno() >= 0, "a failed send leaves the handles with the caller"
    msg.close()
    for i in range(sent):
        check_with_fd(port.recv(timeout=5), i)
    client.send(with_fd(sent), timeout=0)  # room again
    check_with_fd(port.recv(timeout=5), sent)
    client.close()
    port.close()


def test_an_async_sender_waits_for_socket_room_in_the_event_loop(no_fd_leak):
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)

    async def receive_later(count: int) -> None:
        await asyncio.sleep(0.05)
        for i in range(count):
            check_with_fd(await port.recv_async(timeout=5), i)

    async def main() -> None:
        sent = 0
        try:
            while True:
                client.send(with_fd(sent), timeout=0)
                sent += 1
        except QueueFull:
            pass
        receiving = asyncio.ensure_future(receive_later(sent + 1))
        await client.send_async(with_fd(sent), timeout=20)
        await asyncio.wait_for(receiving, 20)

    asyncio.run(main())
    client.close()
    port.close()


def test_a_loan_waits_for_data_room_as_a_send_does(no_fd_leak):
    port = Port(capacity=4096)
    client = port.duplicate(SEND_RIGHTS)
    kept = []
    try:
        while True:
            client.send(Message(1, numbered(len(kept))), timeout=0)
            kept.append(port.recv(timeout=0))
    except QueueFull:
        pass
    with pytest.raises(QueueFull, match="holds earlier payloads"):
        client.loan(SIZE, timeout=0)
    with pytest.raises(SendTimedOut, match="holds earlier payloads"):
        client.loan(SIZE, timeout=0.05)

    def release() -> None:
        for m in kept:
            m.close()

    releasing = threading.Timer(0.05, release)  # the loan below sleeps meanwhile
    releasing.start()
    loan = client.loan(SIZE, timeout=20)
    releasing.join()
    loan.view[:] = numbered(5)
    client.send(Message(3, loan), timeout=0)
    assert number_of(port.recv(timeout=0)) == 5
    client.close()
    port.close()


# -- the door --------------------------------------------------------------------


def test_a_new_sender_waits_while_the_receivers_door_is_full(no_fd_leak):
    """A stopped receiver hears no one; records pile up on its door until the
    kernel refuses more. A sender's first message (its connection record)
    then waits for the door as any send waits for room."""
    port = Port(capacity=16)
    client = port.duplicate(SEND_RIGHTS)
    ready_r, ready_w = os.pipe()
    got_r, got_w = os.pipe()

    def receiver() -> None:
        with pytest.raises(Empty):
            port.try_recv()  # the receive side is this process's now
        os.write(ready_w, b"r")
        msg = port.recv(timeout=30)
        os.write(got_w, bytes(msg))

    pid = fork_child(receiver)
    os.close(ready_w)
    os.close(got_w)
    assert os.read(ready_r, 1) == b"r"
    os.kill(pid, signal.SIGSTOP)
    wait_stopped(pid)
    exported = port.duplicate(SEND_RIGHTS).export()
    door = socket.socket(fileno=os.dup(exported.fds[0]))
    exported.close()
    junk = layout.DOOR_RECORD.pack(layout.DOOR_MAGIC, layout.VERSION, layout.DOOR_WANT, 0, 0, 1)
    try:
        while True:  # WANTs of no connection: a receiver ignores them
            door.send(junk, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass
    with pytest.raises(QueueFull, match="door is full"):
        client.send(Message(1, b"knock"), timeout=0)
    with pytest.raises(SendTimedOut, match="door is full"):
        client.send(Message(1, b"knock"), timeout=0.05)
    sending = threading.Thread(target=client.send, args=(Message(1, b"knock"),), kwargs={"timeout": 30})
    sending.start()
    wait_asleep(os.getpid(), sending.native_id)
    os.kill(pid, signal.SIGCONT)
    sending.join(30)
    assert not sending.is_alive()
    assert os.read(got_r, 16) == b"knock"
    assert wait_child(pid) == 0
    for fd in (ready_r, got_r):
        os.close(fd)
    door.close()
    client.close()
    port.close()
