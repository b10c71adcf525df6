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


def test_pickling_for_multiprocessing_needs_the_transfer_right():
    from multiprocessing.reduction import ForkingPickler

    with SharedMemory.create(4096) as shm:
        local = shm.duplicate(Rights.READ | Rights.MAP)
        with pytest.raises(PermissionDenied, match="TRANSFER"):
            ForkingPickler.dumps(local)
        local.close()


def queue_consumer(queue, done) -> None:
    shm = queue.get(timeout=30)  # a SharedMemory, pickled by Queue.put's feeder thread
    with shm.map() as m:
        m[:5] = b"queue"
    shm.close()
    done.set()


def test_a_handle_put_on_a_multiprocessing_queue():
    queue = spawn.Queue()
    done = spawn.Event()
    child = spawn.Process(target=queue_consumer, args=(queue, done))
    child.start()
    with SharedMemory.create(4096) as shm:
        queue.put(shm)  # keep shm open: the feeder thread pickles it later
        assert done.wait(60), "the consumer never got the handle"
        with shm.map(writable=False) as m:
            assert m[:5] == b"queue"
    child.join(60)
    assert child.exitcode == 0
    queue.close()
    queue.join_thread()


def forkserver_app(send_right: Port) -> None:
    send_right.send(Message.with_data(3, b"from the forkserver"), timeout=20)


def test_handles_passed_as_forkserver_arguments():
    forkserver = multiprocessing.get_context("forkserver")
    port = Port()
    child = forkserver.Process(
        target=forkserver_app, args=(port.duplicate(Rights.SEND | Rights.TRANSFER),)
    )
    child.start()
    msg = port.recv(timeout=60)
    assert bytes(msg.payload) == b"from the forkserver"
    assert msg.sender.pid == child.pid
    child.join(60)
    assert child.exitcode == 0
    port.close()


# -- pickling anywhere else fails at once, pointing to publish/connect ----------


def every_handle():
    from redstone_ipc import Channel, FdHandle

    a, b = Channel.create_pair()
    reader, writer = Pipe.create()
    return [Port(), SharedMemory.create(4096), reader, writer, a, b, FdHandle.adopt(os.dup(0))]


def test_plain_pickle_refuses_every_handle_at_dumps_time(no_fd_leak):
    import pickle

    handles = every_handle()
    for handle in handles:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match=r"publish\(name, handle\).*connect\(name\)"):
                pickle.dumps(handle, protocol)
        assert handle.valid, "a refused pickle leaves the handle alone"
        handle.close()


def test_copy_and_deepcopy_refuse_too():
    import copy

    with SharedMemory.create(4096) as shm:
        for fn in (copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="cannot be pickled"):
                fn(shm)


def test_every_handle_class_is_registered_with_multiprocessing():
    """ForkingPickler looks reducers up by exact type: a subclass defined
    later (here, or by a user) is registered as it is created."""
    from multiprocessing.reduction import ForkingPickler

    from redstone_ipc import Handle

    class MyShm(SharedMemory):
        __slots__ = ()

    classes = [MyShm]
    pending = list(Handle.__subclasses__())
    while pending:
        cls = pending.pop()
        classes.append(cls)
        pending.extend(cls.__subclasses__())
    for cls in classes:
        assert cls in ForkingPickler._extra_reducers, cls
