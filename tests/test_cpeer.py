"""A peer written in C, from docs/wire-format.md, against the Python library.

``tests/cpeer/`` holds a plain C11 + POSIX implementation of both sides of
a ring connection (``rsipc.c``) and a driver (``cpeer.c``). Each test
compiles it with the machine's C compiler (skipped, with the reason, where
there is none), hands it handles with ``Handle.export()`` and
``subprocess.Popen(pass_fds=...)``, and checks every message both ways,
capacity to the message, the waits for room (TX_WAITING, DOOR_WANT,
REC_WAKE) in both directions, the receive side's owner lock, and what the
Python receiver does when the C sender breaks the protocol.

The driver reports progress as lines on its stdout and waits for the
test's lines on stdin where the test must act first (see ``cpeer.c``).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _proc import LineReader, blocked_syscall
from redstone_ipc import (
    Channel,
    Empty,
    FdHandle,
    Message,
    PeerClosed,
    Port,
    ProtocolError,
    QueueFull,
    Rights,
    SharedMemory,
)

pytestmark = pytest.mark.timeout(90)

SOURCES = Path(__file__).parent / "cpeer"
SEND = Rights.SEND | Rights.TRANSFER
_POLLING_SYSCALLS = {
    "x86_64": {7, 271},  # poll, ppoll
    "aarch64": {73},  # ppoll
}.get(platform.machine(), set())


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def cpeer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C peer, compiled into a temporary directory."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (CC, cc, gcc or clang) on PATH: the C peer cannot be built")
    exe = tmp_path_factory.mktemp("cpeer") / "cpeer"
    built = subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-o", str(exe), "cpeer.c", "rsipc.c"],
        cwd=SOURCES, capture_output=True, text=True, timeout=120,
    )
    # A compiler that is there but fails is a failure of the peer, not a skip.
    assert built.returncode == 0, f"{cc} failed:\n{built.stderr}"
    return str(exe)


class Peer:
    """The C peer running as a child process: its lines, our lines."""

    def __init__(self, exe: str, *args: Any, fds: tuple[int, ...]) -> None:
        self.proc = subprocess.Popen(
            [exe, *map(str, args)], pass_fds=fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.out = LineReader(self.proc.stdout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float = 20.0) -> str:
        line = self.out.line(timeout)
        assert not line.startswith("FAIL"), f"the C peer failed: {line}"
        return line

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_asleep(self, timeout: float = 10.0) -> None:
        """Until the peer sleeps in poll (waiting for room or for messages)."""
        deadline = time.monotonic() + timeout
        while not _in_poll(self.pid):
            assert time.monotonic() < deadline, "the C peer never went to sleep in poll"
            time.sleep(0.001)

    def finish(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the C peer did not exit in time") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def _in_poll(pid: int, tid: int | None = None) -> bool:
    fields = blocked_syscall(pid, tid)
    return bool(fields) and fields[0].isdigit() and int(fields[0]) in _POLLING_SYSCALLS


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Peers started by a test; killed and closed at its end, whatever happened."""
    started: list[Peer] = []
    yield started
    for peer in started:
        peer.close()


def start(peers: list[Peer], exe: str, mode: str, exported: Any, *more: Any) -> Peer:
    """Start the peer with an exported handle's fds (then closed here: it has them)."""
    try:
        peer = Peer(exe, mode, *exported.fds, *more, fds=exported.fds)
    finally:
        exported.close()
    peers.append(peer)
    return peer


def pattern(size: int, mul: int, add: int) -> bytes:
    return bytes((i * mul + add) & 0xFF for i in range(size))


# -- C sends to a Port -----------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 3, 8])
def test_a_c_sender_publishes_to_a_port_and_waits_for_room(no_fd_leak, cpeer, peers, capacity):
    port = Port(capacity=capacity)
    peer = start(peers, cpeer, "port", port.duplicate(SEND).export(), capacity)

    # Inline, in a data segment, with handles: each as the C side wrote it,
    # and from the C process as the kernel saw it.
    hello = port.recv(timeout=20)
    assert (hello.msg_type, bytes(hello), hello.priority, hello.txid) == (1, b"hello from C", 3, 0)
    assert hello.sender.pid == peer.pid
    big = port.recv(timeout=20)
    assert big.msg_type == 2 and big.payload == pattern(100_000, 7, 3)
    with port.recv(timeout=20) as carrying:
        assert (carrying.msg_type, bytes(carrying)) == (3, b"handles")
        shm, event = carrying.handles
        assert isinstance(shm, SharedMemory) and isinstance(event, FdHandle)
        assert shm.rights == Rights.READ | Rights.WRITE | Rights.MAP | Rights.TRANSFER
        with shm.map() as m:
            assert m[:12] == b"written by C" and len(m) == 8192
        assert os.eventfd_read(event.fileno()) == 42
    del hello, big  # the data-segment payload is a view: let it go
    assert peer.line() == "SENT 3"

    # Capacity, exactly, across senders: the C sender publishes until it has
    # no credit (the receiver may hold back a few freed credits, given back
    # in batches), a Python sender gets exactly the rest, then nobody gets in.
    peer.say("FILL")
    full, filled = peer.line().split()
    filled_by_c = int(filled)
    assert full == "FULL" and 1 <= filled_by_c <= capacity
    assert port.stats()["depth"] == filled_by_c
    other = port.duplicate(Rights.SEND)
    for i in range(capacity - filled_by_c):
        other.send(Message(9, f"other {i}".encode()), priority=-1, timeout=0)
    with pytest.raises(QueueFull):
        other.send(Message(9, b"one too many"), timeout=0)
    assert port.stats()["depth"] == capacity

    # Waiting for room: it sleeps (TX_WAITING, DOOR_WANT) until we receive.
    more = capacity + 3
    peer.say(f"MORE {more}")
    peer.wait_asleep()
    from_c = [f"fill {i}".encode() for i in range(filled_by_c)] + [f"more {i}".encode() for i in range(more)]
    got_c: list[bytes] = []
    got_other: list[bytes] = []
    while len(got_c) < len(from_c) or len(got_other) < capacity - filled_by_c:
        msg = port.recv(timeout=20)
        if msg.sender.pid == peer.pid:
            got_c.append(bytes(msg))
        else:
            got_other.append(bytes(msg))
        assert port.stats()["depth"] <= capacity
    assert got_c == from_c  # every message, in order
    assert got_other == [f"other {i}".encode() for i in range(capacity - filled_by_c)]
    other.close()
    waited = peer.line()
    assert waited.startswith("WAITED ") and int(waited.split()[1]) >= 1
    assert peer.line() == "DONE"
    assert peer.finish() == 0
    with pytest.raises(Empty):
        port.try_recv()  # its hang-up is read: its connection and credits are gone
    assert port.stats()["senders"] == 1  # this process's own connection only
    port.close()


# -- C talks on a Channel: sends requests, receives replies on its own door -------------


def test_a_c_endpoint_sends_requests_and_receives_replies_in_its_own_ring(no_fd_leak, cpeer, peers):
    capacity = 4
    a, b = Channel.create_pair(capacity=capacity)
    peer = start(peers, cpeer, "channel", b.export(), capacity)
    assert not b.valid  # moved to the C process, with its receive side

    request = a.recv(timeout=20)
    assert (request.msg_type, request.txid, bytes(request)) == (10, 1, b"ping")
    assert request.sender.pid == peer.pid
    a.reply(request, Message(11, b"PONG"), timeout=20)  # the C side accepts our CONNECT
    assert peer.line() == f"REPLY 1 PONG pid={os.getpid()}"

    request = a.recv(timeout=20)
    assert (request.txid, bytes(request)) == (2, b"big")
    a.reply(request, Message(11, pattern(300_000, 13, 5)), timeout=20)  # in our data segment
    assert peer.line() == "REPLY 2 300000 ok"

    request = a.recv(timeout=20)
    assert (request.txid, bytes(request)) == (3, b"handles")
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[:11] = b"from Python"
    answer = Message(11, b"h")
    answer.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))  # sealed, read-only
    answer.attach_handle(FdHandle.adopt(os.eventfd(7)))
    a.reply(request, answer, timeout=20)
    assert peer.line() == "REPLY 3 shm=from Python rights=0x45 writable=no eventfd=7"
    shm.close()

    # Capacity of the C side's queue, exactly; then a Python sender that
    # waits for room is woken by the C receiver as it reads.
    request = a.recv(timeout=20)
    assert (request.txid, bytes(request)) == (4, b"flood")
    total = 2 * capacity + 1
    accepted = 0
    while True:
        try:
            a.send(Message(12, f"flood {accepted}".encode()), timeout=0)
        except QueueFull:
            break
        accepted += 1
    assert accepted == capacity
    errors: list[BaseException] = []

    def send_the_rest() -> None:
        try:
            for i in range(accepted, total):
                a.send(Message(12, f"flood {i}".encode()), timeout=20)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=send_the_rest)
    thread.start()
    deadline = time.monotonic() + 10
    while not _in_poll(os.getpid(), thread.native_id):  # asleep, waiting for room
        assert time.monotonic() < deadline, "the sending thread never waited for room"
        time.sleep(0.001)
    peer.say(f"GO {total}")
    thread.join(30)
    assert not thread.is_alive() and not errors, errors
    report = peer.line().split()
    assert report[:2] == ["FLOOD", str(total)]
    fields = dict(item.split("=") for item in report[2:])
    assert int(fields["most"]) <= capacity  # never more queued than the capacity
    assert int(fields["wakes"]) >= 1  # it woke our sleeping sender
    assert fields["dropped"] == "0"

    request = a.recv(timeout=20)
    assert (request.txid, bytes(request)) == (5, b"bye")
    assert peer.line() == "BYE"
    assert peer.finish() == 0
    with pytest.raises(PeerClosed):  # its door and connection went with it
        a.recv(timeout=20)
    with pytest.raises(PeerClosed):
        a.send(Message(1, b"anyone?"), timeout=5)
    a.close()


def test_the_c_receiver_respects_the_owner_lock(no_fd_leak, cpeer, peers):
    """A receive side already served here stays here: a copy of the RECEIVE
    right in the C process finds the owner lock taken."""
    port = Port()
    port.send(Message(1, b"served here"))
    assert bytes(port.recv(timeout=5)) == b"served here"  # this process owns the receive side
    copy = port.duplicate(Rights.SEND | Rights.RECEIVE | Rights.TRANSFER)
    peer = start(peers, cpeer, "channel", copy.export(), port.capacity)  # [door, door rx, lock]
    assert peer.line() == "BUSY"
    assert peer.finish() == 3
    port.send(Message(1, b"still here"))
    assert bytes(port.recv(timeout=5)) == b"still here"
    port.close()


# -- C breaks the protocol: the Python receiver drops it, and only it ---------------------


@pytest.mark.parametrize("kind, error", [
    ("head", "published message"),
    ("record", "not sent before the slot"),
    ("shm", "size is not sealed"),
])
def test_a_c_sender_that_breaks_the_protocol_is_dropped_alone(no_fd_leak, cpeer, peers, kind, error):
    port = Port(capacity=4)
    peer = start(peers, cpeer, "bad", port.duplicate(SEND).export(), 4, kind)
    assert bytes(port.recv(timeout=20)) == b"good"
    peer.say("BREAK")
    assert peer.line() == f"BROKE {kind}"
    with pytest.raises(ProtocolError, match=error) as raised:
        port.recv(timeout=20)
    assert f"pid {peer.pid}" in str(raised.value)
    assert peer.line() == "CLOSED 3 hangup=yes"  # RX_CLOSED = 3, and the socket hung up
    assert peer.finish() == 0
    port.send(Message(1, b"the port goes on"), timeout=5)
    assert bytes(port.recv(timeout=5)) == b"the port goes on"
    assert port.stats()["senders"] <= 1
    port.close()
