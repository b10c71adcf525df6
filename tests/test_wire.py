"""Messages on the wire: round trips, handle moves, across real processes."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fork_child, open_fds, run_in_child, wait_child
from redstone_ipc import FdHandle, Message, Rights, SharedMemory
from redstone_ipc.linux.cmsg import seqpacket_pair
from redstone_ipc.message.wire import recv_message, send_message

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    a, b = seqpacket_pair()
    yield a, b
    a.close()
    b.close()


def make_handle(kind: str) -> tuple[object, bytes]:
    """A handle of ``kind`` and a token written into its object, to check later."""
    token = os.urandom(8)
    if kind == "memfd":
        fd = os.memfd_create("test", os.MFD_CLOEXEC)
        os.write(fd, token)
        return FdHandle.adopt(fd), token
    if kind == "pipe":
        r, w = os.pipe2(os.O_CLOEXEC)
        os.write(w, token)
        os.close(w)
        return FdHandle.adopt(r, Rights.READ | Rights.TRANSFER), token
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[:8] = token
    if kind == "shm-ro":
        return shm.replace(Rights.READ | Rights.MAP | Rights.TRANSFER), token
    return shm, token


def check_handle(kind: str, handle: object, token: bytes) -> None:
    """The received handle names the same kernel object as the sent one."""
    if kind == "memfd":
        assert os.pread(handle.fileno(), 8, 0) == token
    elif kind == "pipe":
        assert os.read(handle.fileno(), 8) == token
    else:
        with handle.map(writable=False) as m:
            assert m[:8] == token


kinds = st.sampled_from(["memfd", "pipe", "shm", "shm-ro"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=4096),
    msg_type=st.integers(0, 2**32 - 1),
    priority=st.integers(-(2**31), 2**31 - 1),
    txid=st.integers(0, 2**32 - 1),
    handle_kinds=st.lists(kinds, max_size=6),
)
def test_round_trip_over_a_socketpair(pair, payload, msg_type, priority, txid, handle_kinds):
    a, b = pair
    before = open_fds()
    msg = Message.with_data(msg_type, payload)
    sent = [make_handle(k) for k in handle_kinds]
    for handle, _ in sent:
        msg.attach_handle(handle)
    rights = [h.rights for h, _ in sent]

    send_message(a, msg, priority=priority, txid=txid)
    assert all(not h.valid for h, _ in sent), "sent handles move away"

    got = recv_message(b)
    assert got.header == msg.header
    assert bytes(got.payload) == payload
    assert (got.priority, got.txid) == (priority, txid)
    assert got.sender.pid == os.getpid()
    assert [h.rights for h in got.handles] == rights
    for kind, h, (_, token) in zip(handle_kinds, got.handles, sent):
        check_handle(kind, h, token)
        assert fcntl.fcntl(h.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "received fds are CLOEXEC"
    got.close()
    assert open_fds() == before


def test_a_handle_moves_to_a_forked_child(pair, no_fd_leak):
    a, b = pair
    r, w = os.pipe2(os.O_CLOEXEC)
    writer = FdHandle.adopt(w, Rights.WRITE | Rights.TRANSFER)

    def child() -> None:
        a.close()
        os.close(r)
        msg = recv_message(b)
        assert msg.sender.pid == os.getppid()
        assert bytes(msg.payload) == b"take this pipe"
        (h,) = msg.handles
        os.write(h.fileno(), b"written by the child")
        h.close()

    pid = fork_child(child)
    msg = Message.with_data(1, b"take this pipe")
    msg.attach_handle(writer)
    send_message(a, msg)
    assert not writer.valid, "the parent's copy is gone"
    assert wait_child(pid) == 0
    # Every write end is closed now (ours moved, the child's closed): EOF follows.
    assert os.read(r, 100) == b"written by the child"
    assert os.read(r, 100) == b""
    os.close(r)


def test_the_sender_is_the_kernels_word(pair):
    a, b = pair

    def child() -> None:
        send_message(a, Message.with_data(5, b"who am i"))

    pid = fork_child(child)
    msg = recv_message(b)
    assert wait_child(pid) == 0
    assert msg.sender.pid == pid
    assert (msg.sender.uid, msg.sender.gid) == (os.getuid(), os.getgid())


def test_a_payload_above_the_record_limit_travels_in_a_sealed_memfd(pair, no_fd_leak):
    a, b = pair
    big = os.urandom(3 << 20)

    def child() -> None:
        send_message(a, Message.with_data(9, big))

    pid = fork_child(child)
    msg = recv_message(b)
    assert wait_child(pid) == 0
    assert msg.header.size == len(big)
    view = memoryview(msg.payload)
    assert view.readonly, "the receiver maps the payload read-only, without a copy"
    assert view == big
    view.release()
    msg.close()


def test_a_failed_send_keeps_every_handle(pair, no_fd_leak):
    a, b = pair
    a.setblocking(False)
    filler = Message.with_data(0, bytes(60_000))
    with pytest.raises(BlockingIOError):
        while True:
            send_message(a, filler)
    shm = SharedMemory.create(4096)
    msg = Message.with_data(1, b"x")
    msg.attach_handle(shm)
    with pytest.raises(BlockingIOError):
        send_message(a, msg)
    assert shm.valid and shm.map(writable=False).size == 4096
    shm.close()
    while True:  # drain what the filler queued
        try:
            recv_message(b, flags=socket.MSG_DONTWAIT)
        except BlockingIOError:
            break


def test_a_read_only_shm_handle_stays_read_only_in_the_receiver(pair, no_fd_leak):
    a, b = pair
    shm = SharedMemory.create(8192)
    producer = shm.map()  # writable before the read-only handle leaves
    producer[:4] = b"v1.0"
    msg = Message.new(2)
    msg.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
    send_message(a, msg)

    def child() -> None:
        import mmap as mmap_mod

        from redstone_ipc import PermissionDenied

        got = recv_message(b)
        (ro,) = got.handles
        with pytest.raises(PermissionDenied):
            ro.map(writable=True)
        fd = ro.fileno()
        with pytest.raises(PermissionError):  # the fd itself is O_RDONLY
            mmap_mod.mmap(fd, 8192, flags=mmap_mod.MAP_SHARED)
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)  # allowed: same uid
        try:
            with pytest.raises(PermissionError):  # ... but the seal refuses
                mmap_mod.mmap(rw, 8192, flags=mmap_mod.MAP_SHARED)
            with pytest.raises(PermissionError):
                os.pwrite(rw, b"evil", 0)
        finally:
            os.close(rw)
        with ro.map(writable=False) as m:
            assert m[:4] == b"v1.0"

    run_in_child(child)
    producer[:4] = b"v2.0"  # the producer's earlier mapping keeps working
    assert producer[:4] == b"v2.0"
    producer.unmap()
    shm.close()


def test_a_received_read_only_handle_can_be_sent_on(pair, no_fd_leak):
    """Forwarding: parent -> child -> parent, read-only all the way."""
    a, b = pair
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[:3] = b"fwd"
    msg = Message.new(1)
    msg.attach_handle(shm.replace(Rights.READ | Rights.MAP | Rights.TRANSFER))
    send_message(a, msg)

    def child() -> None:
        got = recv_message(b)
        onward = Message.new(2)
        onward.attach_handle(got.handles[0])
        send_message(b, onward)  # back to the parent

    run_in_child(child)
    (ro,) = recv_message(a).handles
    assert ro.rights == Rights.READ | Rights.MAP | Rights.TRANSFER
    with ro.map(writable=False) as m:
        assert m[:3] == b"fwd"
    ro.close()


def test_the_header_size_is_taken_when_the_message_is_sent(pair):
    a, b = pair
    data = bytearray(b"short")
    msg = Message.with_data(1, data)
    data.extend(b" and then longer")
    send_message(a, msg)
    got = recv_message(b)
    assert bytes(got.payload) == b"short and then longer"
    assert got.header.size == msg.header.size == len(data)


def test_a_send_in_flight_keeps_the_fds_of_a_handle_closed_meanwhile(no_fd_leak):
    """Closing an attached handle in another thread mid-send must not close
    (and let the process reuse) an fd the kernel has not copied yet."""
    from redstone_ipc import HANDLE_TABLE

    r, w = os.pipe2(os.O_CLOEXEC)
    h = FdHandle.adopt(w)
    obj = h._object
    HANDLE_TABLE.pin([obj])  # what send_message does around sendmsg
    h.close()
    os.fstat(w)  # still open: the send in flight owns it
    HANDLE_TABLE.unpin([obj])
    with pytest.raises(OSError):
        os.fstat(w)  # closed once the send is over
    os.close(r)


@pytest.mark.parametrize("with_handle", [False, True])
def test_out_of_range_header_fields_are_refused_before_sending(pair, with_handle, no_fd_leak):
    a, b = pair
    msg = Message.with_data(1, b"x")
    shm = SharedMemory.create(4096) if with_handle else None
    if shm is not None:
        msg.attach_handle(shm)
    with pytest.raises(ValueError, match="priority"):
        send_message(a, msg, priority=2**31)
    if shm is not None:
        assert shm.valid
        shm.close()
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(64)  # nothing was sent
