"""Bad records, built by hand on a raw socket: a clear error, nothing lost.

Each case sends a malformed record (with fds riding along) and then a good
one. The receiver must raise ProtocolError or MessageTooLarge naming the
problem, close every fd that came with the bad record, and then receive the
good record normally.
"""

from __future__ import annotations

import array
import os
import resource
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import open_fds, run_in_child
from redstone_ipc import Message, MessageTooLarge, ProtocolError, Rights
from redstone_ipc.linux.cmsg import seqpacket_pair
from redstone_ipc.message.wire import recv_message, send_message

pytestmark = pytest.mark.timeout(60)

MAGIC = 0x50495352
HEAD = "<4I IHHiI"
DESC = "<HHIQ"
FD, SHM = 1, 6
ALL_FD_RIGHTS = int(Rights.READ | Rights.WRITE | Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT)


def head(size=0, count=0, msg_type=1, reserved=0, magic=MAGIC, version=1, flags=0, prio=0, txid=0):
    return struct.pack(HEAD, size, count, msg_type, reserved, magic, version, flags, prio, txid)


def desc(obj_type=FD, fd_count=1, rights=ALL_FD_RIGHTS, extra=0):
    return struct.pack(DESC, obj_type, fd_count, rights, extra)


def raw_send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def assert_still_works(a: socket.socket, b: socket.socket) -> None:
    """A good record sent after a bad one is received normally."""
    send_message(a, Message.with_data(3, b"still works"))
    assert bytes(recv_message(b).payload) == b"still works"


def pipe_fds(n: int) -> list[int]:
    """``n`` fresh fds (pipe ends) to ride along; closed here after sending."""
    fds: list[int] = []
    while len(fds) < n:
        fds.extend(os.pipe())
    for extra in fds[n:]:
        os.close(extra)
    return fds[:n]


def sealed_memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def write_only(fd: int) -> int:
    """The same memfd reopened write-only (the original is closed)."""
    wo = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.close(fd)
    return wo


GROW_SHRINK = 2 | 4
WRITE_SEALS = 8 | GROW_SHRINK


def cases():
    """(name, record bytes, factory of the fds to attach, expected error, match)."""
    return [
        ("short", b"\x01\x02\x03", lambda: pipe_fds(2), ProtocolError, "truncated record"),
        ("bad magic", head(magic=0xDEAD), lambda: [], ProtocolError, "not a redstone-ipc"),
        ("reserved", head(reserved=7), lambda: pipe_fds(1), ProtocolError, "reserved"),
        ("unknown flags", head(flags=0x80), lambda: [], ProtocolError, "unknown flags"),
        ("size too big", head(size=10) + b"abc", lambda: [], ProtocolError, "header size 10"),
        ("size too small", head(size=1, count=1) + desc() + b"abc", lambda: pipe_fds(1), ProtocolError, "header size 1"),
        ("count without descriptors", head(count=2) + desc(), lambda: pipe_fds(2), ProtocolError,
         "truncated record"),
        ("fds missing", head(count=2) + desc() + desc(), lambda: pipe_fds(1), ProtocolError,
         "name 2 fds but 1 arrived"),
        ("fds extra", head(count=1) + desc(), lambda: pipe_fds(3), ProtocolError,
         "name 1 fds but 3 arrived"),
        ("fds without handles", head(), lambda: pipe_fds(2), ProtocolError, "name 0 fds but 2"),
        ("unknown type", head(count=1) + desc(obj_type=99), lambda: pipe_fds(1), ProtocolError,
         "unknown handle type 99"),
        ("rights not allowed", head(count=1) + desc(rights=int(Rights.MAP | Rights.READ)),
         lambda: pipe_fds(1), ProtocolError, "not allowed for a FD handle"),
        ("shm that is a pipe", head(count=2) + desc() + desc(SHM, 1, int(Rights.READ | Rights.MAP), 4096),
         lambda: pipe_fds(2), ProtocolError, "not a memfd"),
        ("shm size lies", head(count=1) + desc(SHM, 1, int(Rights.READ | Rights.WRITE | Rights.MAP), 8192),
         lambda: [sealed_memfd(4096, GROW_SHRINK)], ProtocolError, "declares 8192 bytes"),
        ("shm size unsealed", head(count=1) + desc(SHM, 1, int(Rights.READ | Rights.WRITE | Rights.MAP), 4096),
         lambda: [sealed_memfd(4096, 0)], ProtocolError, "not sealed"),
        ("read-only shm that is writable", head(count=1) + desc(SHM, 1, int(Rights.READ | Rights.MAP), 4096),
         lambda: [sealed_memfd(4096, GROW_SHRINK)], ProtocolError, "read-only SHM"),
        ("payload memfd unsealed", head(size=4096, flags=1), lambda: [sealed_memfd(4096, GROW_SHRINK)],
         ProtocolError, "not sealed against writes"),
        ("payload memfd size lies", head(size=100, flags=1), lambda: [sealed_memfd(4096, WRITE_SEALS)],
         ProtocolError, "holds 4096 bytes"),
        ("payload memfd and inline bytes", head(size=3, flags=1) + b"abc",
         lambda: [sealed_memfd(3, WRITE_SEALS)], ProtocolError, "inline payload"),
        ("payload memfd write-only", head(size=4096, flags=1),
         lambda: [write_only(sealed_memfd(4096, WRITE_SEALS))], ProtocolError, "cannot be mapped"),
        ("payload memfd missing", head(size=3, flags=1), lambda: [], ProtocolError,
         "no payload memfd"),
        ("empty record", b"", lambda: [], ProtocolError, "empty record"),
    ]


@pytest.mark.parametrize("case", cases(), ids=[c[0] for c in cases()])
def test_a_bad_record_raises_closes_its_fds_and_the_socket_goes_on(case):
    _, record, make_fds, error, match = case
    a, b = seqpacket_pair()
    before = open_fds()
    fds = make_fds()
    raw_send(a, record, fds)
    for fd in fds:
        os.close(fd)  # only the copies in flight remain: the receiver must close them

    with pytest.raises(error, match=match):
        recv_message(b)
    assert open_fds() == before, "every fd that came with the bad record is closed"

    assert_still_works(a, b)
    a.close()
    b.close()


def test_a_record_longer_than_the_buffer_is_message_too_large():
    a, b = seqpacket_pair()
    before = open_fds()
    fds = pipe_fds(2)
    raw_send(a, head(size=200, count=2) + desc() + desc() + bytes(200), fds)
    for fd in fds:
        os.close(fd)
    with pytest.raises(MessageTooLarge, match="longer than"):
        recv_message(b, max_record=64)
    assert open_fds() == before
    assert_still_works(a, b)
    a.close()
    b.close()


def test_fds_the_kernel_could_not_deliver_are_a_protocol_error():
    """MSG_CTRUNC: a receiver at its fd limit gets the record without all fds."""
    a, b = seqpacket_pair()

    def child() -> None:
        a.close()
        limit = max(open_fds()) + 8
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        fillers = []
        while True:  # take every free slot, then give two back
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        os.close(fillers.pop())
        os.close(fillers.pop())
        before = open_fds()
        with pytest.raises(ProtocolError, match="dropped"):
            recv_message(b)
        assert open_fds() == before
        assert bytes(recv_message(b).payload) == b"after"

    fds = pipe_fds(6)
    raw_send(a, head(count=6) + desc() * 6, fds)
    for fd in fds:
        os.close(fd)
    send_message(a, Message.with_data(3, b"after"))
    run_in_child(child)
    a.close()
    b.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"", head(count=1) + desc(), head(count=2, size=4), head(size=8)]),
    garbage=st.binary(max_size=200),
    nfds=st.integers(0, 4),
)
def test_garbage_never_leaks_and_never_breaks_the_socket(prefix, garbage, nfds):
    a, b = seqpacket_pair()
    before = open_fds()
    record = prefix + garbage
    fds = pipe_fds(nfds)
    if record or fds:
        raw_send(a, record or b"\0", fds)
        for fd in fds:
            os.close(fd)
        try:
            msg = recv_message(b)
        except (ProtocolError, MessageTooLarge):
            pass
        else:
            msg.close()  # garbage that happens to be valid is a valid message
    assert open_fds() == before
    assert_still_works(a, b)
    a.close()
    b.close()


def test_an_empty_record_is_not_mistaken_for_end_of_stream():
    """A zero-length record with messages queued behind it and the peer gone."""
    a, b = seqpacket_pair()
    raw_send(a, b"", [])
    send_message(a, Message.with_data(3, b"behind"))
    a.close()
    with pytest.raises(ProtocolError, match="empty record"):
        recv_message(b)
    assert bytes(recv_message(b).payload) == b"behind"
    assert recv_message(b) is None, "then the real end of stream"
    b.close()
