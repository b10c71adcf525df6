"""Handle.export() and adopt_handle(): handles for processes that are not Python.

Export moves a handle out as raw parts (type, rights, extra, duplicated fds)
the caller owns; adopt turns parts back into a handle, checked as a
receiver checks a message's handle. The C peer that uses them is in
``test_cpeer.py``; here, the contract itself, and a foreign process that is
a plain ``python -c`` started by ``subprocess`` (no multiprocessing).
"""

from __future__ import annotations

import fcntl
import gc
import mmap
import os
import select
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from _proc import LineReader
from redstone_ipc import (
    Channel,
    ChannelEndpoint,
    ExportedHandle,
    FdHandle,
    InvalidHandle,
    IpcError,
    Message,
    ObjectType,
    PermissionDenied,
    Port,
    ProtocolError,
    Rights,
    SharedMemory,
    adopt_handle,
)
from redstone_ipc.linux import memfd

pytestmark = pytest.mark.timeout(60)

SEND = Rights.SEND | Rights.TRANSFER


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def shut_for_reading(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    return any(ev & select.POLLRDHUP for _, ev in p.poll(0))


# -- export ------------------------------------------------------------------------


def test_export_moves_a_send_right_out_as_the_door_alone(no_fd_leak):
    port = Port(capacity=5)
    client = port.duplicate(SEND)
    exported = client.export()
    assert not client.valid  # moved, as by a send
    assert (exported.type, exported.rights, exported.extra) == (ObjectType.PORT, SEND, 5)
    (door,) = exported.fds
    sock = socket.socket(fileno=os.dup(door))
    try:
        assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_SEQPACKET)
        assert shut_for_reading(door)  # the kernel keeps a SEND holder from reading
    finally:
        sock.close()
    assert not os.get_inheritable(door)  # close-on-exec: Popen(pass_fds=...) hands it over
    assert exported.descriptor() == (2).to_bytes(2, "little") + (1).to_bytes(2, "little") + \
        int(SEND).to_bytes(4, "little") + (5).to_bytes(8, "little")
    back = exported.adopt(Port)  # the way back, e.g. when the foreign process never took it
    assert exported.closed and back.rights == SEND
    back.send(Message(1, b"through the adopted door"), timeout=5)
    assert bytes(port.recv(timeout=5)) == b"through the adopted door"
    back.close()
    port.close()


def test_export_needs_transfer_and_a_failed_export_leaves_the_handle(no_fd_leak):
    port = Port()
    no_transfer = port.duplicate(Rights.SEND)
    with pytest.raises(PermissionDenied):
        no_transfer.export()
    assert no_transfer.valid
    no_transfer.close()
    with pytest.raises(InvalidHandle):
        no_transfer.export()
    # A RECEIVE right does not leave while messages are queued here (as a send).
    port.send(Message(1, b"queued"))
    with pytest.raises(IpcError, match="cannot leave"):
        port.export()
    assert port.valid
    assert bytes(port.recv(timeout=5)) == b"queued"
    port.close()


def test_export_of_a_duplicate_keeps_the_original(no_fd_leak):
    shm = SharedMemory.create(4096)
    with shm.duplicate().export() as exported:
        assert shm.valid and exported.type is ObjectType.SHM and exported.extra == 4096
        assert os.fstat(exported.fds[0]).st_ino == shm.id
    shm.close()


def test_exporting_a_read_only_region_seals_it_first(no_fd_leak):
    shm = SharedMemory.create(8192)
    m = shm.map()  # writable: made before the seal, it keeps working
    with shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER).export() as exported:
        (fd,) = exported.fds
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert memfd.get_seals(fd) & memfd.SEAL_FUTURE_WRITE
        with pytest.raises(PermissionError):  # the foreign process can never write
            mmap.mmap(fd, 8192, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        reader = mmap.mmap(fd, 8192, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        m[:5] = b"hello"
        assert reader[:5] == b"hello"
        reader.close()
    m.unmap()
    shm.close()


def test_an_exported_endpoint_is_its_peer_door_its_own_door_and_its_lock(no_fd_leak):
    a, b = Channel.create_pair(capacity=3)
    exported = b.export()
    assert not b.valid
    assert exported.type is ObjectType.CHANNEL
    assert exported.rights == Rights.SEND | Rights.RECEIVE | Rights.TRANSFER | Rights.WAIT
    peer_door, door, lock = exported.fds
    a_obj = a._object
    assert os.fstat(peer_door).st_ino == a_obj.door_key  # where b sends: a's door
    assert shut_for_reading(peer_door)
    assert not shut_for_reading(door)  # b's door's receiving end
    assert stat.S_ISREG(os.fstat(lock).st_mode)  # the owner lock (a memfd)
    assert exported.extra & 0xFFFF_FFFF == 3
    assert exported.extra >> 32 == os.fstat(a_obj.send_door.fileno()).st_ino  # b's own door
    b2 = exported.adopt(ChannelEndpoint)
    a.send(Message(1, b"to b"), timeout=5)
    assert bytes(b2.recv(timeout=5)) == b"to b"
    b2.send(Message(2, b"to a"), timeout=5)
    assert bytes(a.recv(timeout=5)) == b"to a"
    a.close()
    b2.close()


# -- adopt -------------------------------------------------------------------------


def _unsealed_memfd(size: int) -> int:
    fd = os.memfd_create("test-unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _sealed_memfd(size: int) -> int:
    return memfd.memfd_create("test-sealed", size)


def _pipe_read_end() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


BAD_PARTS = {
    "unknown type": (99, 0, 0, [_pipe_read_end], ProtocolError),
    "rights the type never allows": (6, int(Rights.SEND), 4096, [lambda: _sealed_memfd(4096)], ProtocolError),
    "an unsealed region": (6, int(Rights.READ | Rights.WRITE), 4096, [lambda: _unsealed_memfd(4096)],
                           ProtocolError),
    "a size that is not the region's": (6, int(Rights.READ | Rights.WRITE), 8192,
                                        [lambda: _sealed_memfd(4096)], ProtocolError),
    "a read-only region that is writable": (6, int(Rights.READ | Rights.MAP), 4096,
                                            [lambda: _sealed_memfd(4096)], ProtocolError),
    "a pipe for a door": (2, int(SEND), 16, [_pipe_read_end], ProtocolError),
    "a RECEIVE port without its lock": (2, int(SEND | Rights.RECEIVE), 16, [_pipe_read_end], ProtocolError),
    "two fds for one": (1, int(Rights.READ), 0, [_pipe_read_end, _pipe_read_end], ProtocolError),
    "extra beyond a u64": (1, int(Rights.READ), 1 << 64, [_pipe_read_end], ProtocolError),
}


@pytest.mark.parametrize("case", sorted(BAD_PARTS))
def test_adopt_checks_like_a_receiver_and_closes_every_fd_on_error(case, no_fd_leak):
    obj_type, rights, extra, makers, error = BAD_PARTS[case]
    fds = [make() for make in makers]
    with pytest.raises(error):
        adopt_handle(obj_type, rights, extra, fds)
    assert not any(fd_is_open(fd) for fd in fds)


def test_adopt_refuses_repeated_fds_and_the_wrong_kind(no_fd_leak):
    fd = _pipe_read_end()
    with pytest.raises(ValueError, match="distinct"):
        adopt_handle(1, int(Rights.READ), 0, [fd, fd])
    assert not fd_is_open(fd)
    fd = _sealed_memfd(4096)
    with pytest.raises(TypeError, match="SharedMemory, not a Port"):
        adopt_handle(6, int(Rights.READ | Rights.WRITE | Rights.MAP), 4096, [fd], kind=Port)
    assert not fd_is_open(fd)


def test_adopt_takes_fds_made_outside(no_fd_leak):
    fd = _sealed_memfd(4096)
    os.pwrite(fd, b"made by hand", 0)
    shm = adopt_handle(6, int(Rights.READ | Rights.WRITE | Rights.MAP | Rights.TRANSFER), 4096, [fd],
                       kind=SharedMemory)
    with shm.map() as m:
        assert m[:12] == b"made by hand"
    shm.close()
    assert not fd_is_open(fd)  # the handle owned it
    ev = adopt_handle(1, int(Rights.READ | Rights.WRITE), 0, [os.eventfd(3)], kind=FdHandle)
    assert os.eventfd_read(ev.fileno()) == 3
    ev.close()


def test_an_exported_handle_owns_its_fds_until_closed_or_adopted(no_fd_leak):
    exported = SharedMemory.create(4096).export()
    (fd,) = exported.fds
    exported.close()
    exported.close()  # idempotent
    assert exported.closed and not fd_is_open(fd)
    with pytest.raises(ValueError, match="closed or adopted"):
        exported.fds
    with pytest.raises(ValueError):
        exported.adopt()
    forgotten = SharedMemory.create(4096).export()
    (fd,) = forgotten.fds
    with pytest.warns(ResourceWarning, match="unclosed"):
        del forgotten
        gc.collect()
    assert not fd_is_open(fd)
    parts = ExportedHandle(ObjectType.FD, Rights.READ, 0, [os.eventfd(0)])
    assert isinstance(parts.adopt(), FdHandle) and parts.closed


# -- a foreign process ------------------------------------------------------------------


_RECEIVER = textwrap.dedent("""
    import sys
    from redstone_ipc import Port, adopt_handle
    obj_type, rights, extra, *fds = map(int, sys.argv[1:])
    port = adopt_handle(obj_type, rights, extra, fds, kind=Port)
    print("adopted", flush=True)
    for _ in range(2):
        msg = port.recv(timeout=20)
        print(bytes(msg).decode(), msg.sender.pid, flush=True)
    port.close()
""")


def test_a_process_started_on_its_own_receives_on_an_exported_port(no_fd_leak):
    """The RECEIVE right moves to a process that is not a multiprocessing child:
    the senders' connections are ended (moved) and made again, to it."""
    port = Port(capacity=4)
    sender = port.duplicate(SEND)
    sender.send(Message(1, b"before"), timeout=5)  # connected to this process's receive side
    assert bytes(port.recv(timeout=5)) == b"before"
    exported = port.export()
    assert not port.valid
    args = [str(int(exported.type)), str(int(exported.rights)), str(exported.extra)]
    child = subprocess.Popen([sys.executable, "-c", _RECEIVER, *args, *map(str, exported.fds)],
                             pass_fds=exported.fds, stdout=subprocess.PIPE)
    exported.close()
    try:
        out = LineReader(child.stdout)
        assert out.line() == "adopted"
        sender.send(Message(1, b"after"), timeout=10)  # its connection was moved: made again
        sender.send(Message(1, b"again"), timeout=10)
        me = os.getpid()
        assert out.line().split() == ["after", str(me)]
        assert out.line().split() == ["again", str(me)]
        assert child.wait(timeout=20) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    sender.close()
