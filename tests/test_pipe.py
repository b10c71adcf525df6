"""Pipes between real processes: rights (checked by the library, and by the
kernel on every route to the fd, as root and as nobody), end of stream, a
vanished reader without SIGPIPE, capacity, atomic writes between processes,
handle transfer and checks of received ends, splice, asyncio, timeouts.

Every test runs under the ``no_fd_leak`` fixture: the fds open in this
process are the same before and after.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import fork_child, open_fds, wait_child
from redstone_ipc import (
    PAGE_SIZE,
    InvalidAddress,
    InvalidHandle,
    IpcError,
    Message,
    ObjectType,
    PeerClosed,
    PermissionDenied,
    ProtocolError,
    Rights,
    SharedMemory,
    TimedOut,
)
from redstone_ipc.linux.cmsg import seqpacket_pair
from redstone_ipc.message.wire import recv_message, send_message
from redstone_ipc.pipe import PIPE_BUF, CapacityError, Pipe, PipeReader, PipeWriter
from redstone_ipc.pipe._end import _PipeReaderObject, _PipeWriterObject

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_fd_leak")]

REPO = Path(__file__).resolve().parent.parent
BASIC = Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT


def read_until_eof(reader: PipeReader, timeout: float = 10.0) -> bytes:
    chunks = []
    while chunk := reader.read(1 << 16, timeout=timeout):
        chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(reader: PipeReader, n: int, timeout: float = 10.0) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = reader.readinto(view[got:], timeout=timeout)
        assert k, f"end of stream after {got} of {n} bytes"
        got += k
    return bytes(buf)


def wait_until_polling(thread: threading.Thread, limit: float = 10.0) -> None:
    """Return once ``thread`` sleeps in poll(2), as the kernel reports it."""
    tid = thread.native_id
    end = time.monotonic() + limit
    while time.monotonic() < end:
        state = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = Path(f"/proc/self/task/{tid}/wchan").read_text()
        if state == "S" and "poll" in wchan:
            return
        threading.Event().wait(0.001)  # observe the kernel's state, not a guess
    raise AssertionError("the thread never went to sleep in poll")


def run_script(script: str, *fds: int, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (nothing inherited but ``fds``)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, fds)],
        pass_fds=fds, env=env, capture_output=True, text=True, timeout=timeout,
    )


# -- creation and rights --------------------------------------------------------------


def test_create_gives_a_reader_and_a_writer_with_default_rights():
    reader, writer = Pipe.create()
    assert isinstance(reader, PipeReader) and isinstance(writer, PipeWriter)
    assert reader.rights == Rights.READ | BASIC
    assert writer.rights == Rights.WRITE | BASIC
    assert reader.type == ObjectType.PIPE_READER and writer.type == ObjectType.PIPE_WRITER
    assert writer.write(b"hello") == 5
    assert reader.read(100) == b"hello"
    with pytest.raises(TypeError):
        Pipe()
    reader.close()
    writer.close()


def test_a_reader_cannot_write_and_a_writer_cannot_read():
    reader, writer = Pipe.create()
    with reader, writer:
        with pytest.raises(PermissionDenied):
            reader.write(b"x")
        with pytest.raises(PermissionDenied):
            reader.splice_from(0, 1)
        with pytest.raises(PermissionDenied):
            asyncio.run(reader.write_async(b"x"))
        with pytest.raises(PermissionDenied):
            writer.read(1)
        with pytest.raises(PermissionDenied):
            writer.readinto(bytearray(1))
        with pytest.raises(PermissionDenied):
            writer.splice_to(1, 1)
        with pytest.raises(PermissionDenied):
            asyncio.run(writer.read_async(1))
        # The kernel agrees: the fds are one-way.
        with pytest.raises(BrokenPipeError):
            os.write(reader.fileno(), b"x")
        writer.write(b"for the reader")
        assert os.read(writer.fileno(), 100) == b"", "a writer's fd reads as end of stream"
        assert reader.read(100) == b"for the reader"


def test_rights_only_shrink_and_each_operation_checks_its_own():
    reader, writer = Pipe.create()
    waiter = reader.duplicate(Rights.WAIT | Rights.TRANSFER)
    with pytest.raises(PermissionDenied):
        waiter.read(1)
    assert waiter.fileno() == reader.fileno()
    blind = reader.duplicate(Rights.READ)
    with pytest.raises(PermissionDenied):
        blind.fileno()  # no WAIT
    with pytest.raises(PermissionDenied):
        Message().attach_handle(blind)  # no TRANSFER
    with pytest.raises(PermissionDenied):
        blind.duplicate()  # no DUPLICATE
    with pytest.raises(PermissionDenied):
        reader.duplicate(Rights.READ | Rights.WRITE)  # cannot grow
    mute = writer.duplicate(BASIC)
    with pytest.raises(PermissionDenied):
        mute.write(b"x")
    writer.write(b"ok")
    assert blind.read(2) == b"ok"
    for h in (reader, writer, waiter, blind, mute):
        h.close()


def test_a_closed_handle_is_invalid():
    reader, writer = Pipe.create()
    writer.close()
    writer.close()  # closing twice is harmless
    with pytest.raises(InvalidHandle):
        writer.write(b"x")
    with pytest.raises(InvalidHandle):
        writer.capacity
    assert reader.read(1) == b""
    reader.close()
    with pytest.raises(InvalidHandle):
        reader.read(1)


# -- rights the kernel enforces: no fd route around a right not granted ------------------

INJECTED = b"INJECTED"


def _fd_paths(fd: int) -> list[str]:
    """Every name under which this process can reopen its own ``fd``."""
    return [f"/proc/self/fd/{fd}", f"/proc/{os.getpid()}/fd/{fd}", f"/dev/fd/{fd}",
            f"/proc/thread-self/fd/{fd}"]


def _attempt(worked: list[str], route: str, call) -> None:
    """Run one attack; record ``route`` if it got anything (a truthy result)."""
    try:
        if call():
            worked.append(route)
    except OSError:
        pass


def _as_socket(fd: int, use) -> object:
    """``use(sock)`` on a socket object over a duplicate of ``fd`` (any fd: it may not be one)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        sock.setblocking(False)
        return use(sock)


def try_to_write(fd: int) -> list[str]:
    """Every route the holder of a reader's fd might take to put bytes into the
    pipe; returns the ones that worked (none must)."""
    worked: list[str] = []
    for path in _fd_paths(fd):
        for mode in (os.O_WRONLY, os.O_RDWR):
            for extra in (0, os.O_NONBLOCK):

                def reopen(path: str = path, flags: int = mode | extra) -> bool:
                    new = os.open(path, flags | os.O_CLOEXEC)
                    try:
                        os.write(new, INJECTED)
                    finally:
                        os.close(new)
                    return True  # opened for writing at all is a breach

                _attempt(worked, f"open({path}, {mode | extra:#o})", reopen)
    _attempt(worked, "write", lambda: os.write(fd, INJECTED))
    _attempt(worked, "writev", lambda: os.writev(fd, [INJECTED]))
    _attempt(worked, "send", lambda: _as_socket(fd, lambda s: s.send(INJECTED, socket.MSG_NOSIGNAL)))
    _attempt(worked, "sendmsg", lambda: _as_socket(fd, lambda s: s.sendmsg([INJECTED], [], socket.MSG_NOSIGNAL)))
    _attempt(worked, "sendto", lambda: _as_socket(fd, lambda s: s.sendto(INJECTED, socket.MSG_NOSIGNAL, "")))

    def splice_in() -> int:
        r, w = os.pipe()
        try:
            os.write(w, INJECTED)
            return os.splice(r, fd, len(INJECTED), flags=os.SPLICE_F_NONBLOCK)
        finally:
            os.close(r)
            os.close(w)

    def sendfile_in() -> int:
        src = os.memfd_create("inject")
        try:
            os.write(src, INJECTED)
            return os.sendfile(fd, src, 0, len(INJECTED))
        finally:
            os.close(src)

    _attempt(worked, "splice", splice_in)
    _attempt(worked, "sendfile", sendfile_in)
    return worked


def try_to_read(fd: int) -> list[str]:
    """Every route the holder of a writer's fd might take to get bytes out of
    the pipe; returns the ones that got any (none must)."""
    worked: list[str] = []
    for path in _fd_paths(fd):
        for mode in (os.O_RDONLY, os.O_RDWR):

            def reopen(path: str = path, flags: int = mode) -> bool:
                new = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    try:
                        os.read(new, 100)
                    except OSError:
                        pass
                finally:
                    os.close(new)
                return True  # opened for reading at all is a breach

            _attempt(worked, f"open({path}, {mode:#o})", reopen)
    _attempt(worked, "read", lambda: os.read(fd, 100))
    _attempt(worked, "readv", lambda: os.readv(fd, [bytearray(100)]))
    _attempt(worked, "recv peek", lambda: _as_socket(fd, lambda s: s.recv(100, socket.MSG_PEEK)))
    _attempt(worked, "recv", lambda: _as_socket(fd, lambda s: s.recv(100)))
    _attempt(worked, "recvmsg", lambda: _as_socket(fd, lambda s: s.recvmsg(100)[0]))
    _attempt(worked, "recv_into", lambda: _as_socket(fd, lambda s: s.recv_into(bytearray(100))))

    def splice_out() -> int:
        r, w = os.pipe()
        try:
            return os.splice(fd, w, 100, flags=os.SPLICE_F_NONBLOCK)
        finally:
            os.close(r)
            os.close(w)

    _attempt(worked, "splice", splice_out)
    return worked


def become_nobody() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
    assert (os.getuid(), os.geteuid(), os.getgid()) == (nobody.pw_uid, nobody.pw_uid, nobody.pw_gid)


def _attack(kind: str, end: PipeReader | PipeWriter) -> list[str]:
    assert isinstance(end, PipeReader if kind == "reader" else PipeWriter), end
    with end:
        return (try_to_write if kind == "reader" else try_to_read)(end.fileno())


def _deliver_by_message(kind: str, end: PipeReader | PipeWriter) -> None:
    """Fork an attacker that gets ``end`` only in a Message; it must find no way in."""
    mine, theirs = seqpacket_pair()

    def attacker() -> None:
        mine.close()
        (received,) = recv_message(theirs).handles
        worked = _attack(kind, received)
        send_message(theirs, Message.with_data(0, "\n".join(worked).encode()))

    pid = fork_child(attacker)  # before it gets the end: only the message carries it
    msg = Message.new(1)
    msg.attach_handle(end)
    send_message(mine, msg)
    report = bytes(recv_message(mine).payload).decode()
    assert report == "", f"a {kind}'s holder got through by: {report}"
    assert wait_child(pid) == 0
    mine.close()
    theirs.close()


def spawned_attacker(kind: str, end: PipeReader | PipeWriter) -> None:
    """Runs in a spawned interpreter that got ``end`` by pickle."""
    worked = _attack(kind, end)
    assert not worked, f"a {kind}'s holder got through by: {worked}"


def _deliver_by_pickle(kind: str, end: PipeReader | PipeWriter) -> None:
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=spawned_attacker, args=(kind, end))
    child.start()
    end.close()
    child.join(60)
    assert child.exitcode == 0, f"the spawned {kind} attacker got through (or failed)"


def _rights_lab(kind: str, deliver, as_nobody: bool) -> None:
    """The whole scenario, in a forked process (as ``nobody`` if asked): the
    pipe's creator hands one end to an attacker, then checks the stream."""
    if as_nobody:
        become_nobody()
    reader, writer = Pipe.create()
    if kind == "writer":
        writer.write(b"secret")  # what a writer's holder would like to steal
        deliver(kind, writer.duplicate())
    else:
        deliver(kind, reader.duplicate())
        writer.write(b"legit")
    writer.close()
    got = read_until_eof(reader)
    reader.close()
    assert got == (b"secret" if kind == "writer" else b"legit"), got


@pytest.mark.parametrize("kind", ["reader", "writer"])
@pytest.mark.parametrize("as_nobody", [False, True], ids=["root", "nobody"])
def test_a_received_end_grants_no_other_right_by_any_fd_route(kind, as_nobody):
    """The holder of a reader alone cannot write into the pipe, the holder of a
    writer alone cannot read from it: not by reopening /proc/self/fd/N in
    another mode, nor by any system call on its fd. As root, and as nobody
    (with a pipe nobody created, so file permissions do not stand in the way)."""
    if as_nobody and os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    assert wait_child(fork_child(lambda: _rights_lab(kind, _deliver_by_message, as_nobody)), 60) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_an_end_pickled_into_a_spawned_interpreter_grants_no_other_right(kind):
    assert wait_child(fork_child(lambda: _rights_lab(kind, _deliver_by_pickle, False)), 100) == 0


def test_not_enforced_a_holder_can_shut_its_end_down_for_everyone():
    """What the module's notes say the kernel does not prevent: the holders of
    an end share one socket, and shutting it down ends the stream for all.
    Even so, neither gets the other direction."""
    reader, writer = Pipe.create()
    other_writer = writer.duplicate()
    writer.write(b"before")
    with socket.socket(fileno=os.dup(writer.fileno())) as raw:
        raw.shutdown(socket.SHUT_WR)
        assert raw.recv(100, socket.MSG_DONTWAIT) == b""
    assert read_until_eof(reader) == b"before", "the end of the stream, for every reader"
    with pytest.raises(PeerClosed):
        other_writer.write(b"after", timeout=5)
    for h in (reader, writer, other_writer):
        h.close()

    reader, writer = Pipe.create()
    other_writer = writer.duplicate()
    with socket.socket(fileno=os.dup(writer.fileno())) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 10)  # the kernel doubles it
    assert other_writer.capacity == 16 << 10, "the capacity changed for every holder"
    with socket.socket(fileno=os.dup(writer.fileno())) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 10)
    assert other_writer.write(b"a" * PIPE_BUF, timeout=0) == PIPE_BUF
    assert other_writer.write(b"b" * PIPE_BUF, timeout=0) < PIPE_BUF, "a PIPE_BUF write was split"
    other_writer.close()
    with socket.socket(fileno=os.dup(reader.fileno())) as raw:
        raw.shutdown(socket.SHUT_RD)
        with pytest.raises(BrokenPipeError):
            raw.send(b"x", socket.MSG_NOSIGNAL)
    with pytest.raises(PeerClosed):
        writer.write(b"x", timeout=5)  # closed for every writer
    reader.close()
    writer.close()


# -- end of stream ----------------------------------------------------------------------


def test_eof_only_once_every_writer_handle_is_closed():
    reader, writer = Pipe.create()
    second = writer.duplicate()
    writer.write(b"a")
    writer.close()
    assert reader.read(10) == b"a"
    with pytest.raises(TimedOut):
        reader.read(10, timeout=0)  # a writer is left: no EOF
    second.write(b"b")
    second.close()
    assert reader.read(10) == b"b"
    assert reader.read(10) == b""
    assert reader.readinto(bytearray(4)) == 0
    reader.close()


def test_eof_once_every_writer_process_has_exited():
    reader, writer = Pipe.create()
    pids = []
    for i in range(3):

        def child(i: int = i) -> None:
            reader.close()  # the copy this child inherited
            writer.write(f"child {i}\n".encode())

        pids.append(fork_child(child))
    writer.close()
    data = read_until_eof(reader)  # returns only when the last child's fd is gone
    assert sorted(data.splitlines()) == [b"child 0", b"child 1", b"child 2"]
    assert [wait_child(pid) for pid in pids] == [0, 0, 0]
    reader.close()


def test_eof_when_the_writer_process_is_killed_by_sigkill():
    reader, writer = Pipe.create()

    def child() -> None:
        reader.close()
        writer.write(b"alive")
        select.select([], [], [])  # sleep until killed

    pid = fork_child(child)
    writer.close()
    assert read_exactly(reader, 5) == b"alive"
    os.kill(pid, signal.SIGKILL)
    assert reader.read(10, timeout=10) == b"", "the kernel closed the dead writer's fd"
    assert wait_child(pid) == -signal.SIGKILL
    reader.close()


# -- a vanished reader: PeerClosed, never SIGPIPE ------------------------------------------


def test_peer_closed_when_the_reader_is_gone():
    reader, writer = Pipe.create()
    reader.close()
    with pytest.raises(PeerClosed) as info:
        writer.write(b"x")
    assert isinstance(info.value, ConnectionError) and info.value.written == 0
    assert writer.write(b"") == 0  # nothing to write: the kernel does not look
    writer.close()


SIGPIPE_CHILD = r"""
import asyncio, os, signal, socket, sys, threading
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a write like os.write now kills
from redstone_ipc import PeerClosed
from redstone_ipc.message.wire import recv_message
import redstone_ipc.pipe  # registers the pipe handle types with the wire decoder

sock = socket.socket(fileno=int(sys.argv[1]))
(writer,) = recv_message(sock).handles  # its pipe has no reader any more

def expect_peer_closed(call, label):
    try:
        call()
    except PeerClosed:
        print(label, "survived", flush=True)
    else:
        print(label, "did not raise", flush=True)

expect_peer_closed(lambda: writer.write(b"x" * 100), "write")
expect_peer_closed(lambda: writer.write(b"x" * 100_000, timeout=1), "write-timeout")
t = threading.Thread(target=expect_peer_closed, args=(lambda: writer.write(b"x"), "thread"))
t.start(); t.join()
memfd = os.memfd_create("src")
os.write(memfd, b"data")
expect_peer_closed(lambda: writer.splice_from(memfd, 4, offset=0), "splice")
expect_peer_closed(lambda: asyncio.run(writer.write_async(b"x")), "async")
print("pending", signal.SIGPIPE in signal.sigpending(), flush=True)
os.write(writer.fileno(), b"x")  # the control: unguarded, this kills the process
print("unreachable", flush=True)
"""


def test_a_writer_with_sigpipe_at_sig_dfl_survives_with_peer_closed():
    mine, theirs = seqpacket_pair()
    reader, writer = Pipe.create()
    reader.close()
    msg = Message.new(1)
    msg.attach_handle(writer)
    send_message(mine, msg)
    result = run_script(SIGPIPE_CHILD, theirs.fileno())
    mine.close()
    theirs.close()
    lines = result.stdout.splitlines()
    assert lines == [
        "write survived",
        "write-timeout survived",
        "thread survived",
        "splice survived",
        "async survived",
        "pending False",
    ], result.stderr
    assert result.returncode == -signal.SIGPIPE, "the control write must have been lethal"


def test_a_blocked_writer_wakes_with_peer_closed_when_the_reader_goes():
    reader, writer = Pipe.create()
    capacity = writer.capacity

    def child() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        reader.close()
        try:
            writer.write(b"x" * (capacity + PIPE_BUF))  # cannot fit: blocks
        except PeerClosed as e:
            assert e.written >= capacity - PIPE_BUF, e.written
        else:
            raise AssertionError("write returned without a reader")

    pid = fork_child(child)
    writer.close()
    assert reader.read(1) == b"x"  # the child is writing, and the pipe stays full
    reader.close()
    assert wait_child(pid) == 0


# -- capacity ------------------------------------------------------------------------------

PIECE_MAX = 36 << 10  # the largest piece the kernel queues a write in


def fill(writer: PipeWriter, size: int) -> tuple[int, int]:
    """Write ``size``-byte pieces without waiting until the pipe is full: (bytes, writes)."""
    data = b"f" * size
    total = count = 0
    while True:
        try:
            n = writer.write(data, timeout=0)
        except TimedOut:
            return total, count
        total += n
        count += 1
        if n < size:
            return total, count


def test_default_capacity_is_64_kib_like_a_linux_pipe():
    reader, writer = Pipe.create()
    assert writer.capacity == reader.capacity == 65536
    written = writer.write(b"x" * 200_000, timeout=0)
    assert 0.97 * 65536 <= written <= 65536 + PIECE_MAX
    with pytest.raises(TimedOut):
        writer.write(b"z", timeout=0)

    def another_writer_process() -> None:
        with pytest.raises(TimedOut):
            writer.write(b"z", timeout=0)  # the budget is shared

    assert wait_child(fork_child(another_writer_process)) == 0
    assert read_exactly(reader, written) == b"x" * written
    assert writer.write(b"room again", timeout=0) == 10
    reader.close()
    writer.close()


@pytest.mark.parametrize(
    "asked, granted", [(256 << 10, 256 << 10), (20_000, 20_480), (3 * 4096 + 1, 4 * 4096), (1, 12288)]
)
def test_capacity_is_rounded_up_to_4_kib_and_at_least_12_kib(asked, granted):
    reader, writer = Pipe.create(capacity=asked)
    assert writer.capacity == reader.capacity == granted
    written = writer.write(b"y" * (granted + PIECE_MAX + 1), timeout=0)
    assert 0.97 * granted <= written <= granted + PIECE_MAX
    with pytest.raises(TimedOut):
        writer.write(b"z", timeout=0)
    assert len(read_exactly(reader, written)) == written
    reader.close()
    writer.close()


@pytest.mark.parametrize("capacity", [12288, 65536, "max"])
def test_how_much_a_pipe_holds_depends_on_the_size_of_its_writes(capacity):
    """The promises of the module's notes on capacity, at the smallest, the
    default and the largest capacity."""
    capacity = Pipe.max_capacity() if capacity == "max" else capacity
    reader, writer = Pipe.create(capacity)
    try:
        total, _ = fill(writer, 1 << 16)
        assert 0.97 * capacity <= total <= capacity + PIECE_MAX, "large writes"
        assert len(read_exactly(reader, total)) == total
        total, _ = fill(writer, PIPE_BUF)
        assert 0.8 * capacity <= total <= capacity + PIPE_BUF, "PIPE_BUF writes"
        assert len(read_exactly(reader, total)) == total
        total, count = fill(writer, 1)
        assert capacity / 1024 <= count <= capacity / 512, "tiny writes, at least 512 bytes each"
        assert read_exactly(reader, total) == b"f" * count
    finally:
        reader.close()
        writer.close()


def test_a_received_reader_reports_the_capacity_it_was_made_with():
    mine, theirs = seqpacket_pair()
    reader, writer = Pipe.create(capacity=100_000)
    msg = Message.new(1)
    msg.attach_handle(reader)
    send_message(mine, msg)
    (received,) = recv_message(theirs).handles
    assert received.capacity == writer.capacity == 102_400
    for h in (received, writer, mine, theirs):
        h.close()


def test_a_capacity_above_the_system_limit_is_a_clear_error():
    limit = 2 * int(Path("/proc/sys/net/core/wmem_max").read_text()) // 4096 * 4096
    assert Pipe.max_capacity() == limit
    with pytest.raises(CapacityError) as info:
        Pipe.create(capacity=limit + 1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, IpcError)
    assert "wmem_max" in str(info.value)
    for bad in (0, -1, 1.5, True, "4096"):
        with pytest.raises(CapacityError):
            Pipe.create(capacity=bad)
    reader, writer = Pipe.create(capacity=limit)  # the limit itself is fine
    assert writer.capacity == limit
    reader.close()
    writer.close()


# -- transfer in messages ------------------------------------------------------------------


def test_a_writer_moves_to_another_process_and_is_dead_in_the_sender():
    mine, theirs = seqpacket_pair()

    def child() -> None:
        mine.close()
        msg = recv_message(theirs)
        (writer,) = msg.handles
        assert isinstance(writer, PipeWriter) and writer.rights == Rights.WRITE | BASIC
        writer.write(b"hello from the child")

    pid = fork_child(child)  # forked before the pipe exists: only the message carries it
    reader, writer = Pipe.create()
    msg = Message.new(7)
    msg.attach_handle(writer)
    send_message(mine, msg)
    assert not writer.valid
    with pytest.raises(InvalidHandle):
        writer.write(b"x")
    # EOF arrives when the child exits: the sender's fd was closed by the move.
    assert read_until_eof(reader) == b"hello from the child"
    assert wait_child(pid) == 0
    reader.close()
    mine.close()
    theirs.close()


READER_CHILD = r"""
import hashlib, socket, sys
from redstone_ipc import Message
from redstone_ipc.message.wire import recv_message, send_message
from redstone_ipc.pipe import PipeReader
sock = socket.socket(fileno=int(sys.argv[1]))
(reader,) = recv_message(sock).handles
assert isinstance(reader, PipeReader), reader
digest = hashlib.sha256()
total = 0
while chunk := reader.read(1 << 16):
    digest.update(chunk)
    total += len(chunk)
send_message(sock, Message.with_data(total, digest.digest()))
"""


def test_a_reader_moves_to_a_fresh_interpreter_and_reads_to_eof():
    mine, theirs = seqpacket_pair()
    reader, writer = Pipe.create()
    msg = Message.new(1)
    msg.attach_handle(reader)
    send_message(mine, msg)
    assert not reader.valid
    data = os.urandom(300_000)  # more than the pipe holds: the child must drain it
    result: list[subprocess.CompletedProcess] = []

    def run() -> None:
        result.append(run_script(READER_CHILD, theirs.fileno()))

    thread = threading.Thread(target=run)
    thread.start()
    assert writer.write(data, timeout=20) == len(data)
    writer.close()
    thread.join()
    assert result[0].returncode == 0, result[0].stderr
    reply = recv_message(mine)
    assert reply.msg_type == len(data)
    assert bytes(reply.payload) == hashlib.sha256(data).digest()
    mine.close()
    theirs.close()


def pipe_end_pair(shut_reader: int | None = socket.SHUT_WR, shut_writer: int | None = socket.SHUT_RD,
                  kind: int = socket.SOCK_STREAM) -> tuple[socket.socket, socket.socket]:
    """A hand-made pair shaped like a pipe's ends (or not, as asked): (reader, writer)."""
    r, w = socket.socketpair(socket.AF_UNIX, kind)
    if shut_reader is not None:
        r.shutdown(shut_reader)
    if shut_writer is not None:
        w.shutdown(shut_writer)
    return r, w


def test_a_wrong_kind_of_fd_is_a_protocol_error_and_stays_the_callers():
    r, w = os.pipe()
    plain_r, plain_w = pipe_end_pair(None, None)  # not shut down at all
    good_r, good_w = pipe_end_pair()
    seq_r, seq_w = pipe_end_pair(kind=socket.SOCK_SEQPACKET)
    dgram_r, dgram_w = pipe_end_pair(None, None, kind=socket.SOCK_DGRAM)
    # A writer with bytes queued for it to read: sent before the shutdown.
    loaded_r, loaded_w = socket.socketpair()
    loaded_r.send(b"readable by the writer")
    loaded_r.shutdown(socket.SHUT_WR)
    loaded_w.shutdown(socket.SHUT_RD)
    # A writer too small for atomic PIPE_BUF writes.
    small_r, small_w = pipe_end_pair()
    small_w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listener = socket.create_server(("127.0.0.1", 0))
    tcp = socket.create_connection(listener.getsockname())
    tcp_peer, _ = listener.accept()
    tcp.shutdown(socket.SHUT_WR)
    unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_listener.bind("")  # an abstract address
    unix_listener.listen()
    unconnected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    f = tempfile.TemporaryFile()
    fifo_dir = tempfile.mkdtemp()
    fifo = os.path.join(fifo_dir, "fifo")
    os.mkfifo(fifo)
    rdwr = os.open(fifo, os.O_RDWR)
    memfd = os.memfd_create("not a pipe")
    cases = [
        (_PipeReaderObject, r),  # a kernel pipe's read end: reopenable, so never a pipe end here
        (_PipeWriterObject, w),
        (_PipeReaderObject, plain_r.fileno()),  # open both ways
        (_PipeWriterObject, plain_w.fileno()),
        (_PipeReaderObject, good_w.fileno()),  # the writer, sent as a reader
        (_PipeWriterObject, good_r.fileno()),  # the reader, sent as a writer
        (_PipeReaderObject, seq_r.fileno()),  # records, not a stream
        (_PipeWriterObject, seq_w.fileno()),
        (_PipeReaderObject, dgram_r.fileno()),
        (_PipeWriterObject, loaded_w.fileno()),
        (_PipeWriterObject, small_w.fileno()),
        (_PipeReaderObject, tcp.fileno()),  # not AF_UNIX
        (_PipeReaderObject, unix_listener.fileno()),
        (_PipeWriterObject, unconnected.fileno()),
        (_PipeWriterObject, f.fileno()),  # a regular file
        (_PipeReaderObject, rdwr),  # a FIFO
        (_PipeReaderObject, memfd),
    ]
    try:
        for cls, fd in cases:
            with pytest.raises(ProtocolError):
                cls.from_transfer([fd], cls.DEFAULT_RIGHTS, 0)
            os.fstat(fd)  # still open: closing it is the caller's business
        with pytest.raises(ProtocolError):
            _PipeReaderObject.from_transfer([good_r.fileno()] * 2, _PipeReaderObject.DEFAULT_RIGHTS, 0)
        assert os.get_blocking(good_r.fileno()), "a refused fd is left as it was"
    finally:
        for fd in (r, w, rdwr, memfd):
            os.close(fd)
        for s in (plain_r, plain_w, good_r, good_w, seq_r, seq_w, dgram_r, dgram_w, loaded_r, loaded_w,
                  small_r, small_w, listener, tcp, tcp_peer, unix_listener, unconnected):
            s.close()
        f.close()
        os.unlink(fifo)
        os.rmdir(fifo_dir)


def _raw_record(obj_type: int, rights: int, fd: int, sock: socket.socket) -> None:
    head = struct.pack("<4I IHHiI", 0, 1, 9, 0, 0x50495352, 1, 0, 0, 0)
    desc = struct.pack("<HHIQ", obj_type, 1, rights, 0)
    sock.sendmsg([head + desc], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def test_a_bad_pipe_handle_on_the_wire_is_refused_and_its_fd_closed():
    mine, theirs = seqpacket_pair()
    r, w = pipe_end_pair()  # what a peer written in C makes: see docs/wire-format.md
    before = open_fds()
    # The write end, declared a reader.
    _raw_record(ObjectType.PIPE_READER, int(_PipeReaderObject.DEFAULT_RIGHTS), w.fileno(), mine)
    with pytest.raises(ProtocolError):
        recv_message(theirs)
    # A reader claiming WRITE.
    _raw_record(ObjectType.PIPE_READER, int(Rights.READ | Rights.WRITE), r.fileno(), mine)
    with pytest.raises(ProtocolError):
        recv_message(theirs)
    # A kernel pipe's read end.
    kr, kw = os.pipe()
    _raw_record(ObjectType.PIPE_READER, int(_PipeReaderObject.DEFAULT_RIGHTS), kr, mine)
    os.close(kr)
    os.close(kw)
    with pytest.raises(ProtocolError):
        recv_message(theirs)
    assert open_fds() == before, "every fd that arrived was closed"
    # The right kind goes through and works.
    _raw_record(ObjectType.PIPE_READER, int(_PipeReaderObject.DEFAULT_RIGHTS), r.fileno(), mine)
    (reader,) = recv_message(theirs).handles
    stray = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    w.sendmsg([b"raw"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stray]))])
    os.close(stray)
    fds = open_fds()
    assert reader.read(3) == b"raw"
    assert open_fds() == fds, "an fd a raw writer sends along is not installed here"
    with pytest.raises(TimedOut):
        reader.read(1, timeout=0)  # the blocking socket that arrived was made non-blocking
    assert not os.get_blocking(r.fileno()), "the flag belongs to the open file: shared"
    reader.close()
    for s in (r, w, mine, theirs):
        s.close()


# -- splice --------------------------------------------------------------------------------


def test_splice_moves_shared_memory_through_a_pipe_between_processes():
    mine, theirs = seqpacket_pair()
    size = 4 * PAGE_SIZE
    src = SharedMemory.create(size)
    with src.map() as m:
        pattern = os.urandom(size)
        m[:] = pattern

    def child() -> None:
        mine.close()
        shm, writer = recv_message(theirs).handles
        assert shm.rights == Rights.READ | Rights.TRANSFER  # read-only, yet spliceable
        moved = 0
        while moved < size:
            moved += writer.splice_from(shm, size - moved, offset=moved)
        writer.close()
        shm.close()

    pid = fork_child(child)
    reader, writer = Pipe.create()
    msg = Message.new(1)
    msg.attach_handle(src.duplicate(Rights.READ | Rights.TRANSFER))
    msg.attach_handle(writer)
    send_message(mine, msg)
    dst = SharedMemory.create(size)
    moved = 0
    while n := reader.splice_to(dst, size - moved, offset=moved, timeout=10):
        moved += n
    assert moved == size
    assert reader.splice_to(dst, 1, offset=0) == 0, "end of stream"
    with dst.map(writable=False) as m:
        assert m[:] == pattern
    assert wait_child(pid) == 0
    for h in (reader, src, dst):
        h.close()
    mine.close()
    theirs.close()


def test_splice_checks_shared_memory_rights_and_bounds():
    reader, writer = Pipe.create()
    shm = SharedMemory.create(PAGE_SIZE)
    no_read = shm.duplicate(Rights.MAP | Rights.TRANSFER)
    read_only = shm.duplicate(Rights.READ | Rights.MAP)
    with pytest.raises(PermissionDenied):
        writer.splice_from(no_read, 10, offset=0)  # needs READ on the source
    writer.write(b"0123456789")
    with pytest.raises(PermissionDenied):
        reader.splice_to(read_only, 10, offset=0)  # needs WRITE on the destination
    with pytest.raises(ValueError):
        reader.splice_to(shm, 10)  # shared file position: offset required
    with pytest.raises(InvalidAddress):
        reader.splice_to(shm, 10, offset=PAGE_SIZE - 5)
    with pytest.raises(InvalidAddress):
        writer.splice_from(shm, 10, offset=-1)
    assert reader.splice_to(shm, 10, offset=PAGE_SIZE - 10) == 10
    with shm.map(writable=False) as m:
        assert m[PAGE_SIZE - 10 :] == b"0123456789"
    for h in (reader, writer, shm, no_read, read_only):
        h.close()


def test_splice_between_a_pipe_and_sockets():
    reader, writer = Pipe.create()
    a, b = socket.socketpair()
    payload = os.urandom(50_000)
    a.sendall(payload)
    got = 0
    while got < len(payload):
        got += writer.splice_from(b, len(payload) - got, timeout=10)
    assert read_exactly(reader, len(payload)) == payload
    # And back out: pipe -> socket.
    writer.write(b"through the pipe")
    assert reader.splice_to(a, 100) == 16
    assert b.recv(100) == b"through the pipe"
    # TCP works the same.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.sendall(b"tcp bytes")
    assert writer.splice_from(server, 100, timeout=10) == 9
    assert reader.splice_to(server, 100) == 9
    assert client.recv(100) == b"tcp bytes"
    for s in (a, b, listener, client, server):
        s.close()
    reader.close()
    writer.close()


def test_splice_with_files_pipes_and_handles():
    reader, writer = Pipe.create()
    with tempfile.TemporaryFile() as f:
        f.write(b"0123456789")
        f.flush()
        assert writer.splice_from(f, 4, offset=2) == 4  # an object with fileno()
        assert read_exactly(reader, 4) == b"2345"
        os.lseek(f.fileno(), 0, os.SEEK_SET)
        assert writer.splice_from(f.fileno(), 3) == 3  # a raw fd, at its position
        assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == 3
        assert writer.splice_from(f, 100, offset=10) == 0  # the file's end
        assert reader.splice_to(f, 3, offset=20) == 3
        assert os.pread(f.fileno(), 3, 20) == b"012"
    # Pipe to pipe, naming the other end by its handle.
    r2, w2 = Pipe.create()
    writer.write(b"relay")
    assert reader.splice_to(w2, 10) == 5
    assert r2.read(10) == b"relay"
    with pytest.raises(TypeError):
        reader.splice_to("not an fd", 1)
    for h in (reader, writer, r2, w2):
        h.close()


def test_splice_timeouts_and_peer_closed():
    reader, writer = Pipe.create()
    a, b = socket.socketpair()
    b.setblocking(False)
    with pytest.raises(TimedOut):
        reader.splice_to(a, 10, timeout=0)  # the pipe is empty
    start = time.monotonic()
    with pytest.raises(TimedOut):
        writer.splice_from(b, 10, timeout=0.2)  # the socket is empty
    assert time.monotonic() - start >= 0.2
    a.send(b"late")  # data arriving during a bounded wait is taken
    assert writer.splice_from(b, 10, timeout=5) == 4
    reader.close()
    with pytest.raises(PeerClosed):
        writer.splice_from(b, 10, timeout=0)
    writer.close()
    a.close()
    b.close()


def test_splice_to_a_closed_destination_takes_nothing_from_the_pipe():
    reader, writer = Pipe.create()
    writer.write(b"keep")
    a, b = socket.socketpair()
    b.close()
    with pytest.raises(BrokenPipeError):
        reader.splice_to(a, 4, timeout=5)
    assert reader.read(10) == b"keep"
    a.close()
    reader.close()
    writer.close()


def test_splice_into_sealed_shared_memory_is_refused_before_taking_any_byte():
    reader, writer = Pipe.create()
    shm = SharedMemory.create(PAGE_SIZE)
    msg = Message.new(1)
    msg.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))  # seals the region
    mine, theirs = seqpacket_pair()
    send_message(mine, msg)
    recv_message(theirs).close()
    writer.write(b"keep")
    with pytest.raises(PermissionDenied):
        reader.splice_to(shm, 4, offset=0)
    assert reader.read(10) == b"keep"
    for h in (reader, writer, shm, mine, theirs):
        h.close()


def test_splice_to_waits_past_its_timeout_for_bytes_it_took_until_the_destination_fails():
    reader, writer = Pipe.create(capacity=256 << 10)
    writer.write(b"s" * (200 << 10))
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read: it fills
    client.setblocking(False)
    errors: list[BaseException] = []

    def splice() -> None:
        try:
            reader.splice_to(client, 1 << 20, timeout=0.1)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=splice)
    thread.start()
    wait_until_polling(thread)
    thread.join(0.5)
    assert thread.is_alive(), "it took bytes from the pipe: it waits to deliver them"
    server.close()  # unread bytes: the kernel resets the connection
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], (ConnectionResetError, BrokenPipeError)), errors
    for s in (listener, client):
        s.close()
    reader.close()
    writer.close()


def test_splice_to_a_slow_tcp_socket_delivers_every_byte_it_takes():
    """Through the relay, the destination can fill up after bytes left the
    pipe: they are delivered all the same, and counted."""
    reader, writer = Pipe.create(capacity=256 << 10)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # fills at once
    client.setblocking(False)
    data = os.urandom(1 << 20)
    received = bytearray()

    def drain() -> None:  # a slow peer: small reads
        while len(received) < len(data):
            chunk = server.recv(1000)
            assert chunk, "the connection closed early"
            received.extend(chunk)

    feeder = threading.Thread(target=writer.write, args=(data,), kwargs={"timeout": 30})
    feeder.start()
    peer = threading.Thread(target=drain)
    peer.start()
    moved = 0
    while moved < len(data):
        n = reader.splice_to(client, len(data) - moved, timeout=30)
        assert 0 < n <= 1 << 16, n  # one relay-full at most
        moved += n
    feeder.join(30)
    peer.join(30)
    assert moved == len(data) and bytes(received) == data
    for s in (listener, client, server):
        s.close()
    reader.close()
    writer.close()


def test_splice_from_a_socket_into_a_small_pipe_read_by_another_process():
    reader, writer = Pipe.create(capacity=12288)
    a, b = socket.socketpair()
    data = os.urandom(1 << 20)
    digest = hashlib.sha256(data).digest()

    def child() -> None:
        writer.close()
        a.close()
        b.close()
        assert hashlib.sha256(read_until_eof(reader)).digest() == digest

    pid = fork_child(child)
    reader.close()
    feeder = threading.Thread(target=a.sendall, args=(data,))
    feeder.start()
    moved = 0
    while moved < len(data):
        n = writer.splice_from(b, len(data) - moved, timeout=30)
        assert 0 < n <= 12288, n  # at most one capacity per call
        moved += n
    feeder.join(30)
    writer.close()
    assert wait_child(pid) == 0
    a.close()
    b.close()


# -- asyncio -------------------------------------------------------------------------------


def test_asyncio_reads_what_another_process_writes():
    reader, writer = Pipe.create()
    data = os.urandom(1 << 20)

    def child() -> None:
        reader.close()
        for i in range(0, len(data), 10_000):
            writer.write(data[i : i + 10_000])

    pid = fork_child(child)
    writer.close()

    async def main() -> bytes:
        chunks = []
        while chunk := await reader.read_async(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    assert asyncio.run(main()) == data
    assert wait_child(pid) == 0
    reader.close()


def test_asyncio_writes_more_than_the_pipe_holds_to_another_process():
    reader, writer = Pipe.create()
    data = os.urandom(1 << 20)
    digest = hashlib.sha256(data).digest()

    def child() -> None:
        writer.close()
        assert hashlib.sha256(read_until_eof(reader)).digest() == digest

    pid = fork_child(child)
    reader.close()

    async def main() -> int:
        return await writer.write_async(memoryview(data))

    assert asyncio.run(main()) == len(data)
    writer.close()
    assert wait_child(pid) == 0


def test_asyncio_many_tasks_wait_on_one_reader():
    reader, writer = Pipe.create()

    async def main() -> list[bytes]:
        tasks = [asyncio.create_task(reader.read_async(1)) for _ in range(3)]
        await asyncio.sleep(0)  # let all three register
        writer.write(b"abc")
        return sorted(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == [b"a", b"b", b"c"]
    reader.close()
    writer.close()


def test_asyncio_cancellation_leaves_the_loop_clean_and_the_reader_usable():
    reader, writer = Pipe.create()

    async def main() -> bytes:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read_async(1), 0.1)
        loop = asyncio.get_running_loop()
        assert not loop.remove_reader(reader.fileno()), "nothing left registered"
        writer.write(b"z")
        return await reader.read_async(1)

    assert asyncio.run(main()) == b"z"
    reader.close()
    writer.close()


def test_asyncio_closing_the_handle_wakes_the_waiting_task():
    reader, writer = Pipe.create()

    async def main() -> None:
        task = asyncio.create_task(reader.read_async(1))
        await asyncio.sleep(0)
        assert not task.done()
        reader.close()
        with pytest.raises(InvalidHandle):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
    writer.close()


def test_asyncio_write_waits_for_room_and_tasks_take_turns():
    reader, writer = Pipe.create()
    block = 100_000  # more than the pipe holds: each write_async needs several syscalls

    async def main() -> bytes:
        writers = [asyncio.create_task(writer.write_async(bytes([65 + i]) * block)) for i in range(3)]
        chunks = []
        while sum(map(len, chunks)) < 3 * block:
            chunks.append(await reader.read_async(1 << 16))
        assert await asyncio.gather(*writers) == [block] * 3
        return b"".join(chunks)

    data = asyncio.run(main())
    runs = [data[i : i + block] for i in range(0, len(data), block)]
    assert sorted(r[:1] for r in runs) == [b"A", b"B", b"C"]
    assert all(r == r[:1] * block for r in runs), "each write's bytes are contiguous"
    reader.close()
    writer.close()


def test_a_thread_and_a_task_take_turns_on_one_writer():
    reader, writer = Pipe.create()
    block = 200_000

    async def main() -> bytes:
        thread = threading.Thread(target=writer.write, args=(b"T" * block,))
        thread.start()  # blocks in write once the pipe is full, holding the turn
        task = asyncio.create_task(writer.write_async(b"A" * block))
        chunks = []
        while sum(map(len, chunks)) < 2 * block:
            chunks.append(await reader.read_async(1 << 16))
        assert await task == block
        thread.join()
        return b"".join(chunks)

    data = asyncio.run(main())
    assert data in (b"T" * block + b"A" * block, b"A" * block + b"T" * block)
    reader.close()
    writer.close()


# -- timeouts and blocking -------------------------------------------------------------------


def test_timeouts_raise_timed_out_and_partial_writes_return_their_count():
    reader, writer = Pipe.create()
    with pytest.raises(TimedOut):
        reader.read(1, timeout=0)
    start = time.monotonic()
    with pytest.raises(TimeoutError):  # TimedOut is a TimeoutError
        reader.readinto(bytearray(1), timeout=0.2)
    assert 0.2 <= time.monotonic() - start < 5
    # More than fits: the bytes written before the deadline are returned.
    written = writer.write(b"x" * 200_000, timeout=0.1)
    assert 0.97 * writer.capacity <= written <= writer.capacity + PIECE_MAX
    start = time.monotonic()
    with pytest.raises(TimedOut):
        writer.write(b"y", timeout=0.2)
    assert 0.2 <= time.monotonic() - start < 5
    with pytest.raises(TimedOut):  # a negative timeout: only try (the rule for time)
        writer.write(b"y", timeout=-1)
    with pytest.raises(ValueError):
        reader.read(1, timeout=float("nan"))
    reader.close()
    writer.close()


def test_async_timeouts_give_the_sync_results(no_fd_leak):
    """read_async/write_async take ``timeout`` as read/write do: TimedOut when
    nothing was done in time, the count when some bytes went out."""

    async def main() -> None:
        reader, writer = Pipe.create()
        start = time.monotonic()
        with pytest.raises(TimedOut):
            await reader.read_async(1, timeout=0.2)
        assert 0.2 <= time.monotonic() - start < 5
        with pytest.raises(TimedOut):
            await reader.read_async(1, timeout=0)
        written = await writer.write_async(b"x" * 200_000, timeout=0.1)
        assert 0.97 * writer.capacity <= written <= writer.capacity + PIECE_MAX
        with pytest.raises(TimedOut):
            await writer.write_async(b"y", timeout=0.1)  # full: nothing written
        assert len(await reader.read_async(1 << 20, timeout=1)) > 0
        # Another task holding the write turn: a bounded write gives up on it.
        reader2, writer2 = Pipe.create()
        big = asyncio.create_task(writer2.write_async(b"z" * 500_000))
        await asyncio.sleep(0.05)  # it holds the turn, waiting for room
        with pytest.raises(TimedOut, match="busy"):
            await writer2.write_async(b"w", timeout=0.1)
        got = 0
        while got < 500_000:
            got += len(await reader2.read_async(1 << 20, timeout=5))
        assert await big == 500_000
        for end in (reader, writer, reader2, writer2):
            end.close()

    asyncio.run(main())


def test_a_blocked_read_sleeps_in_the_kernel():
    reader, writer = Pipe.create()
    cpu = time.thread_time()
    with pytest.raises(TimedOut):
        reader.read(1, timeout=0.3)
    assert time.thread_time() - cpu < 0.05, "waiting must not burn CPU"
    reader.close()
    writer.close()


def test_a_blocked_read_wakes_when_another_process_writes():
    reader, writer = Pipe.create()
    mine, theirs = seqpacket_pair()

    def child() -> None:
        recv_message(theirs)  # the parent is about to block
        writer.write(b"wake up")

    pid = fork_child(child)
    writer.close()
    send_message(mine, Message.new(0))
    assert reader.read(100) == b"wake up"  # timeout=None: sleeps until then
    assert wait_child(pid) == 0
    reader.close()
    mine.close()
    theirs.close()


# -- atomic writes --------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [12288, None])
def test_writes_of_at_most_pipe_buf_from_several_processes_never_interleave(capacity):
    """Four writer processes, records of up to PIPE_BUF bytes (half of them
    exactly PIPE_BUF), at the smallest capacity and the default one: every
    record arrives whole, and in its writer's order."""
    reader, writer = Pipe.create(capacity)
    writers, records = 4, 1500

    def produce(i: int) -> None:
        reader.close()
        rnd = random.Random(i)
        for seq in range(records):
            size = PIPE_BUF if seq % 2 else rnd.randint(8, PIPE_BUF)
            writer.write(struct.pack("<HHI", size, i, seq) + bytes([65 + i]) * (size - 8))

    pids = [fork_child(lambda i=i: produce(i)) for i in range(writers)]
    writer.close()
    data = read_until_eof(reader, timeout=30)
    assert [wait_child(pid, 60) for pid in pids] == [0] * writers
    expected = [0] * writers
    at = 0
    while at < len(data):
        size, i, seq = struct.unpack_from("<HHI", data, at)
        assert i < writers and seq == expected[i], f"a record was cut at byte {at}"
        assert data[at + 8 : at + size] == bytes([65 + i]) * (size - 8), f"record {i}/{seq} is mixed"
        expected[i] += 1
        at += size
    assert expected == [records] * writers
    reader.close()


# -- threads -----------------------------------------------------------------------------------


def test_threads_writing_at_once_keep_each_write_contiguous():
    reader, writer = Pipe.create()
    block, per_thread, threads = 20_000, 20, 4

    def produce(letter: int) -> None:
        for _ in range(per_thread):
            assert writer.write(bytes([letter]) * block) == block

    workers = [threading.Thread(target=produce, args=(65 + i,)) for i in range(threads)]
    for t in workers:
        t.start()
    data = read_exactly(reader, block * per_thread * threads)
    for t in workers:
        t.join()
    for i in range(0, len(data), block):
        run = data[i : i + block]
        assert run == run[:1] * block, f"write at {i} was interleaved"
    reader.close()
    writer.close()


def test_threads_reading_at_once_share_the_stream():
    reader, writer = Pipe.create()
    total = 500_000
    counts: list[int] = []

    def consume() -> None:
        n = 0
        while chunk := reader.read(4096, timeout=10):
            n += len(chunk)
        counts.append(n)

    workers = [threading.Thread(target=consume) for _ in range(3)]
    for t in workers:
        t.start()
    writer.write(os.urandom(total))
    writer.close()
    for t in workers:
        t.join()
    assert sum(counts) == total and len(counts) == 3
    reader.close()


def test_closing_the_last_handle_wakes_a_thread_blocked_on_it():
    reader, writer = Pipe.create()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            reader.read(1)  # no timeout
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=blocked)
    thread.start()
    wait_until_polling(thread)
    reader.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], InvalidHandle)
    writer.close()  # and the fixture checks that the reader's fds are closed


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_closing_its_copy_does_not_disturb_the_parent():
    reader, writer = Pipe.create()
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(reader.read(10)))
    thread.start()
    wait_until_polling(thread)  # the parent's wake-up eventfd exists now

    def child() -> None:
        reader.close()  # destroys the child's copy: must not wake the parent
        writer.close()

    assert wait_child(fork_child(child)) == 0
    wake_fd = reader._object._wake_fd  # white box: the parent's eventfd stays quiet
    assert not select.select([wake_fd], [], [], 0)[0]
    assert thread.is_alive()
    writer.write(b"still here")
    thread.join(10)
    assert got == [b"still here"]
    reader.close()
    writer.close()


# -- data integrity -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=70_000), max_size=8))
def test_every_byte_arrives_in_order(chunks):
    before = open_fds()
    reader, writer = Pipe.create(capacity=PAGE_SIZE * 4)

    def produce() -> None:
        for chunk in chunks:
            assert writer.write(chunk) == len(chunk)
        writer.close()

    thread = threading.Thread(target=produce)
    thread.start()
    assert read_until_eof(reader) == b"".join(chunks)
    thread.join()
    reader.close()
    assert open_fds() == before


def test_write_accepts_any_buffer():
    reader, writer = Pipe.create()
    numbers = array.array("i", range(10))
    assert writer.write(numbers) == numbers.itemsize * 10  # counted in bytes
    assert reader.read(100) == numbers.tobytes()
    with pytest.raises(BufferError):
        writer.write(memoryview(b"abcdef")[::2])  # not contiguous: refused, nothing written
    with pytest.raises(TimedOut):
        reader.read(1, timeout=0)
    reader.close()
    writer.close()
