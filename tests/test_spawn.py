"""Handles reach processes started by multiprocessing's spawn method.

A spawned child is a fresh interpreter: it inherits nothing. Handles given to
it as ``Process`` arguments, or sent through a ``multiprocessing`` pipe, are
pickled with ``multiprocessing.reduction.DupFd``: the child gets its own copy
of each capability, validated on arrival like a received message.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from conftest import open_fds
from redstone_ipc import (
    Channel,
    Message,
    PermissionDenied,
    Pipe,
    Port,
    Rights,
    SharedMemory,
)

pytestmark = pytest.mark.timeout(90)

spawn = multiprocessing.get_context("spawn")


def app_process(send_right: Port, writer, shared: SharedMemory) -> None:
    """Runs in a spawned interpreter: uses three kinds of handle it was given."""
    with shared.map() as m:
        m[:7] = b"spawned"
    frame = SharedMemory.create(4096)
    with frame.map() as m:
        m[:5] = b"frame"
    msg = Message.with_data(1, str(os.getpid()).encode())
    msg.attach_handle(frame.replace(Rights.READ | Rights.MAP | Rights.TRANSFER))
    send_right.send(msg, timeout=20)
    writer.write(b"via pipe", timeout=20)


def one_round() -> None:
    port = Port()
    reader, writer = Pipe.create()
    shared = SharedMemory.create(4096)
    send_right = port.duplicate(Rights.SEND | Rights.TRANSFER)
    child = spawn.Process(target=app_process, args=(send_right, writer, shared))
    child.start()
    send_right.close()
    writer.close()

    msg = port.recv(timeout=60)
    assert msg.sender.pid == child.pid, "the kernel vouches for the spawned sender"
    (frame,) = msg.handles
    with frame.map(writable=False) as m:
        assert m[:5] == b"frame"
    with pytest.raises(PermissionDenied):
        frame.map(writable=True)
    assert reader.read(100, timeout=60) == b"via pipe"
    child.join(60)
    assert child.exitcode == 0
    assert reader.read(100, timeout=10) == b"", "the child's writer copy died with it"
    with shared.map(writable=False) as m:
        assert m[:7] == b"spawned"
    for h in (frame, reader, shared):
        h.close()
    msg.close()
    port.close()


def test_handles_passed_as_spawn_arguments_work_in_the_child():
    one_round()  # the first round also starts multiprocessing's helpers
    settled = open_fds()
    one_round()
    assert open_fds() == settled, "a second round leaves no fd behind"


def echo_server(conn) -> None:
    endpoint = conn.recv()  # a ChannelEndpoint, pickled through the pipe
    conn.close()
    request = endpoint.recv(timeout=30)
    reply = Message.with_data(2, bytes(request.payload).upper())
    reply.txid = request.txid
    endpoint.send(reply, timeout=30)
    endpoint.close()


def test_an_endpoint_sent_through_a_multiprocessing_pipe():
    mine, theirs = Channel.create_pair()
    parent_conn, child_conn = spawn.Pipe()
    child = spawn.Process(target=echo_server, args=(child_conn,))
    child.start()
    child_conn.close()
    parent_conn.send(theirs)  # pickled now: the child gets its own copy
    theirs.close()  # ours goes, so the channel is 1:1 again
    parent_conn.close()
    reply = mine.call(Message.with_data(1, b"hello"), timeout=60)
    assert bytes(reply.payload) == b"HELLO"
    child.join(60)
    assert child.exitcode == 0
    from redstone_ipc import PeerClosed

    with pytest.raises(PeerClosed):
        mine.recv(timeout=10)
    mine.close()


def test_pickling_needs_the_transfer_right():
    import pickle

    with SharedMemory.create(4096) as shm:
        local = shm.duplicate(Rights.READ | Rights.MAP)
        with pytest.raises(PermissionDenied, match="TRANSFER"):
            pickle.dumps(local)
        local.close()
