"""Hostile senders (issue 11): a process that holds only a SEND right scribbles
over everything it can reach, while an honest one streams.

The hostile process is *spawned* (a fresh interpreter that received nothing
but a pickled SEND handle), connects by sending one message, then attacks
through what that connection gave it — which is what any SEND holder has:
its ring (slots, HEAD, CREDITS), its data segments and their tags, its
doorbell, its connection socket, its door, its own death. To reach those raw
fds and mappings it uses the sending internals
(``port._object.outlet.conn``, an ``Outbound``); nothing else here does.

The receiver runs in a forked child, so that a crash (a segfault from a read
out of bounds) shows as its exit status. It must never crash nor hang,
never deliver a torn honest message, keep every honest message in order,
report nothing but ProtocolError naming the hostile pid, leak no fd, and
end with its capacity exact. Every attack is seeded: a failure names the
seed that replays it.
"""

from __future__ import annotations

import array
import multiprocessing
import os
import random
import select
import signal
import socket
import struct
import time
from typing import Any, Callable

import pytest

from conftest import fork_child, open_fds, wait_child
from redstone_ipc import (
    Empty,
    FdHandle,
    IpcError,
    Message,
    Port,
    ProtocolError,
    QueueFull,
)
from redstone_ipc.port import SEND_RIGHTS
from redstone_ipc.transport import layout as L
from test_reliability import Baton, assert_same_fds, drain_port

pytestmark = pytest.mark.timeout(90)

HONEST, HOSTILE, HONEST_DONE, HOSTILE_DONE = 1, 66, 99, 98
HONEST_COUNT = 240


# -- the honest sender: self-checking payloads ---------------------------------------


def honest_payload(seq: int) -> bytes:
    size = 100_000 if seq % 7 == 3 else 8 + seq * 37 % 200
    return struct.pack("<II", seq, size) + bytes([seq * 13 % 251]) * (size - 8)


def check_honest(msg: Message) -> int:
    data = bytes(msg)
    seq, size = struct.unpack_from("<II", data)
    assert len(data) == size and data == honest_payload(seq), f"torn honest message {seq}"
    if seq % 5 == 0:  # with a handle: the eventfd it sent, holding seq + 1
        (counter,) = msg.handles
        assert os.eventfd_read(counter.fileno()) == seq + 1, "a handle not its own"
    else:
        assert not msg.handles
    return seq


def honest_sender(client: Port, count: int = HONEST_COUNT) -> None:
    for seq in range(count):
        msg = Message(HONEST, honest_payload(seq))
        if seq % 5 == 0:
            msg.attach_handle(FdHandle.adopt(os.eventfd(seq + 1)))
        client.send(msg, timeout=30)
    client.send(Message(HONEST_DONE, struct.pack("<I", count)), timeout=30)


# -- the hostile process ------------------------------------------------------------------


def _slot(size=0, handle_count=0, msg_type=HOSTILE, reserved=0, priority=0, txid=0, flags=0,
          fd_count=0, segment=0, granule=0) -> bytes:
    return L.SLOT.pack(size, handle_count, msg_type, reserved, priority, txid, flags, fd_count,
                       segment, granule)


class Hostile:
    """What a SEND holder reaches once connected, and ways to abuse it."""

    def __init__(self, port: Port, rng: random.Random) -> None:
        self.port = port
        self.rng = rng
        self.conn: Any = None
        self.connect()

    def connect(self) -> None:
        """(Re)connect with one ordinary message; after a drop, the first send
        says so (ProtocolError), the next one connects again."""
        if self.conn is not None and not self.conn.closed and self.conn._w[L.OFF_RX_CLOSED >> 2]:
            # Dropped, but CREDITS it forged high stay positive after the
            # receiver's poison, and a send's fast path trusts CREDITS alone
            # (only this process's own messages can be lost that way): stop
            # lying, so that the next send sees the close and connects again.
            self.set_credits(-(2**30))
        for _ in range(2):  # (a connection it forged its way out of credits may get none)
            try:
                self.port.send(Message(HOSTILE, b"hello"), timeout=0.5)
                break
            except IpcError:
                continue
        self.conn = self.port._object.outlet.conn

    # raw words of the ring
    def head(self) -> int:
        return self.conn._q[L.OFF_HEAD >> 3]

    def set_head(self, value: int) -> None:
        self.conn._q[L.OFF_HEAD >> 3] = value & 0xFFFF_FFFF_FFFF_FFFF
        self.conn._head = value & 0xFFFF_FFFF_FFFF_FFFF

    def set_credits(self, value: int) -> None:
        self.conn._w[L.OFF_CREDITS >> 2] = value & 0xFFFF_FFFF

    def credits(self) -> int:
        return self.conn.credits()

    def write_slot(self, n: int, data: bytes) -> None:
        off = L.CONTROL_SIZE + (n % self.conn.nslots) * L.SLOT_SIZE
        self.conn.mm[off:off + len(data)] = data

    def ring(self) -> None:
        os.eventfd_write(self.conn._doorbell, 1)

    def publish(self, *slots: bytes, take_credits: bool = True) -> None:
        """Publish raw slots, taking credits as an honest sender would (or not)."""
        h = self.head()
        for i, data in enumerate(slots):
            if take_credits:
                self.set_credits(self.credits() - 1)
            self.write_slot(h + i, data)
        self.set_head(h + len(slots))
        self.ring()

    def record(self, data: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.conn.sock.sendmsg([data], anc, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def dropped(self, timeout: float = 2.0) -> bool:
        """Wait (a hostile may poll) until the receiver ended this connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.closed or self.conn._w[L.OFF_RX_CLOSED >> 2]:
                return True
            time.sleep(0.005)
        return False

    def send_big(self) -> int:
        """One ordinary big message (its payload in a data segment): the id of
        the segment the receiver maps (what it broke before may get it dropped
        now: then it connects again)."""
        for _ in range(2):
            try:
                self.port.send(Message(HOSTILE, bytes(100_000)), timeout=1)
                break
            except IpcError:
                self.connect()
        self.conn = self.port._object.outlet.conn
        return self.conn._current.id if self.conn._current is not None else 1


def wrong_fds(rng: random.Random) -> list[int]:
    """A few fds of the wrong kinds for anything: pipes, sockets, memfds,
    eventfds, /dev/null."""
    fds: list[int] = []
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(5)
        if kind == 0:
            fds.extend(os.pipe())
        elif kind == 1:
            a, b = socket.socketpair(socket.AF_UNIX, rng.choice([socket.SOCK_STREAM, socket.SOCK_SEQPACKET]))
            fds.extend([a.detach(), b.detach()])
        elif kind == 2:
            fd = os.memfd_create("x", os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, rng.choice([0, 4096, L.segment_size(L.MIN_SEGMENT), 1 << 20]))
            fds.append(fd)
        elif kind == 3:
            fds.append(os.eventfd(rng.randrange(4)))
        else:
            fds.append(os.open("/dev/null", os.O_RDWR))
    return fds


def attack_ring_garbage(h: Hostile) -> None:
    """Random bytes in slots and impossible HEAD values."""
    rng = h.rng
    for _ in range(6):
        choice = rng.randrange(6)
        if choice == 0:
            h.publish(rng.randbytes(L.SLOT_SIZE))
        elif choice == 1:
            h.set_head(rng.choice([2**64 - 1, 2**63, h.head() + h.conn.nslots + 1, 0]))
            h.ring()
        elif choice == 2:
            for i in range(h.conn.nslots):
                h.write_slot(i, rng.randbytes(L.SLOT_SIZE))
            h.set_head(h.head() + rng.randrange(1, h.conn.nslots + 1))
            h.ring()
        elif choice == 3:
            h.set_head(h.head() - 1)
            h.ring()
        elif choice == 4:
            h.publish(*(rng.randbytes(L.SLOT_SIZE) for _ in range(3)), take_credits=False)
        else:  # a plausible head, garbage after it: valid when the size fits
            size = rng.randrange(300)
            h.publish(_slot(size=size) + rng.randbytes(L.SLOT_SIZE - L.SLOT_HEAD))
            if size <= L.INLINE_MAX:
                continue
        h.dropped()
        h.connect()


def attack_lying_slots(h: Hostile) -> None:
    """Slots whose fields lie: sizes, flags, segments, offsets, counts."""
    seg = h.send_big()
    end = h.conn._segments[seg].size // L.GRANULE  # the granule just past the data
    lies = [
        _slot(size=L.INLINE_MAX + 1),  # inline, too big
        _slot(flags=0x80),  # unknown flag
        _slot(flags=L.SLOT_DATA, size=10, segment=77),  # a segment never announced
        _slot(flags=L.SLOT_DATA, size=1000, segment=seg, granule=(1 << 32) - 1),  # far out
        _slot(flags=L.SLOT_DATA, size=2**32 - 1, segment=seg),  # bigger than the segment
        _slot(flags=L.SLOT_DATA, size=0, segment=seg, granule=end),  # empty, just past the end
        _slot(flags=L.SLOT_DATA, size=64, segment=seg, granule=end),
        _slot(flags=L.SLOT_DATA | L.SLOT_LOAN, size=0, segment=seg, granule=end),
        _slot(flags=L.SLOT_DATA | L.SLOT_LOAN, size=65, segment=seg, granule=end - 1),
        _slot(flags=L.SLOT_FDS, handle_count=0),  # FDS without handles
        _slot(handle_count=3),  # handles without FDS
        _slot(flags=L.SLOT_FDS, handle_count=1, fd_count=200),  # no record, many fds
        _slot(flags=L.SLOT_FDS, handle_count=254, fd_count=254),
        _slot(reserved=5),
        _slot(flags=L.SLOT_LOAN, size=8),  # a loan without a segment
    ]
    h.rng.shuffle(lies)
    for lie in lies:
        h.publish(lie)
        h.dropped()
        h.connect()
        seg = h.send_big()
        end = h.conn._segments[seg].size // L.GRANULE


def attack_credits(h: Hostile) -> None:
    """CREDITS forged high (then used), or negative; publishing without
    taking credits; publishing more than was granted."""
    rng = h.rng
    for _ in range(4):
        choice = rng.randrange(4)
        if choice == 0:
            h.set_credits(2**31 - 1)
            h.publish(*(_slot(size=4) for _ in range(h.conn.nslots)), take_credits=False)
        elif choice == 1:
            h.set_credits(-rng.randrange(1, 2**31))
            h.publish(_slot(size=4), take_credits=False)
        elif choice == 2:
            h.publish(*(_slot(size=4) for _ in range(max(1, min(h.credits(), 2 * h.conn.nslots)))),
                      take_credits=False)
        else:
            h.set_credits(1000)
        h.dropped(1.0)  # (some are only seen when room is taken back: keep going)
        h.connect()


def attack_segments(h: Hostile) -> None:
    """Scribble over a mapped segment (header, tags, data), and announce bogus
    segments: wrong kinds of fd, unsealed, lying sizes and headers."""
    rng = h.rng
    seg = h.send_big()
    writer = h.conn._segments[seg]
    writer.mm[:L.SEGMENT_HEADER] = rng.randbytes(L.SEGMENT_HEADER)  # header: read once, at map
    writer.tags[:] = rng.randbytes(len(writer.tags))  # tags: the receiver only writes them
    for _ in range(3):  # and its own payloads keep coming, through a scribbled segment
        h.send_big()
    for _ in range(5):
        size = L.segment_size(L.MIN_SEGMENT)
        make, sid = rng.choice([  # every one of them wrong, each in its own way
            (lambda: wrong_fds(rng)[0], 50),
            (lambda: _memfd(size, seal=False, header=(L.SEGMENT_MAGIC, 1, 0, 50, 0, L.MIN_SEGMENT)), 50),
            (lambda: _memfd(size + 4096, seal=True, header=(L.SEGMENT_MAGIC, 1, 0, 50, 0, L.MIN_SEGMENT)), 50),
            (lambda: _memfd(size, seal=True, header=(L.SEGMENT_MAGIC, 1, 0, 50, 0, 1 << 40)), 50),
            (lambda: _memfd(size, seal=True, header=(L.SEGMENT_MAGIC, 1, 0, 51, 0, L.MIN_SEGMENT)), 50),
            (lambda: _memfd(size, seal=True, header=(L.SEGMENT_MAGIC, 1, 0, seg, 0, L.MIN_SEGMENT)), seg),
        ])
        fd = make()
        h.record(L.SEGMENT_RECORD.pack(L.REC_SEGMENT, sid), [fd])
        os.close(fd)
        h.publish(_slot(flags=L.SLOT_DATA, size=100, segment=sid))
        h.dropped()
        h.connect()
        seg = h.send_big()


def _memfd(size: int, seal: bool, header: tuple | None = None) -> int:
    fd = os.memfd_create("redstone-segment", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if header is not None:
        os.pwrite(fd, L.SEGMENT.pack(*header), 0)
    if seal:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def attack_socket(h: Hostile) -> None:
    """Garbage records with fds of the wrong kinds, handles records that lie,
    then a slot that makes the receiver read them; a shut-down socket."""
    rng = h.rng
    for _ in range(5):
        fds = wrong_fds(rng)
        choice = rng.randrange(3)
        if choice == 0:
            h.record(rng.randbytes(rng.randrange(1, 64)), fds)
        elif choice == 1:  # a handles record whose descriptors name the wrong kinds
            count = len(fds)
            desc = b"".join(struct.pack("<HHIQ", rng.randrange(1, 8), 1, rng.randrange(256),
                                        rng.randrange(2**64)) for _ in range(count))
            h.record(L.HANDLES_HEAD.pack(L.REC_HANDLES, count) + desc, fds)
        else:
            h.record(L.HANDLES_HEAD.pack(L.REC_HANDLES, 1) + struct.pack("<HHIQ", 6, 1, 0x07, 4096), fds)
        count = len(fds)
        h.publish(_slot(flags=L.SLOT_FDS, handle_count=max(1, count if choice else 1), fd_count=count))
        for fd in fds:
            os.close(fd)
        h.dropped()
        h.connect()
    h.publish(_slot(size=3) + b"bye")  # published, then the socket goes
    h.conn.sock.shutdown(socket.SHUT_RDWR)
    h.dropped()
    h.connect()


def attack_doorbell(h: Hostile) -> None:
    """Write the doorbell as fast as it goes, publishing nothing (and a WANT
    flood on the door, which every SEND holder shares)."""
    deadline = time.monotonic() + 1.5
    want = L.DOOR_RECORD.pack(L.DOOR_MAGIC, L.VERSION, L.DOOR_WANT, 0, 0, h.conn.token)
    door = h.port._object.send_door
    while time.monotonic() < deadline:
        for _ in range(200):
            h.ring()
        for _ in range(10):
            try:
                door.send(want, socket.MSG_DONTWAIT)
            except OSError:
                break


def attack_exit_mid_write(h: Hostile) -> None:
    """Die in the middle: half a slot written, HEAD not stored yet; or a slot
    published whose handles' record never went."""
    if h.rng.randrange(2):
        h.write_slot(h.head(), _slot(size=200)[:20])
    else:
        h.publish(_slot(flags=L.SLOT_FDS, handle_count=1, fd_count=1))
    os.kill(os.getpid(), signal.SIGKILL)


ATTACKS: dict[str, Callable[[Hostile], None]] = {
    "ring garbage": attack_ring_garbage,
    "lying slots": attack_lying_slots,
    "forged credits": attack_credits,
    "data segments": attack_segments,
    "socket records": attack_socket,
    "doorbell flood": attack_doorbell,
    "exit mid-write": attack_exit_mid_write,
}


def hostile_main(port: Port, attack: str, seed: int) -> None:  # a fresh interpreter
    import faulthandler

    faulthandler.dump_traceback_later(40, exit=True)  # a hang shows where it is
    assert port.rights == SEND_RIGHTS
    ATTACKS[attack](Hostile(port, random.Random(seed)))


# -- the receiver ----------------------------------------------------------------------------


def receive_everything(port: Port, hostile_pid: int, finished_fd: int) -> dict[str, int]:
    """Receive until the honest sender is done and the hostile one gone (a
    byte on ``finished_fd``) and nothing more comes; check what came."""
    got: list[int] = []
    errors = hostile = 0
    done = False
    deadline = time.monotonic() + 60
    while True:
        try:
            msg = port.recv(timeout=0.3)
        except ProtocolError as e:
            assert f"pid {hostile_pid}" in str(e), f"an error not naming the hostile one: {e}"
            errors += 1
            continue
        except Empty:
            if done and select.select([finished_fd], [], [], 0)[0]:
                break
            assert time.monotonic() < deadline, f"the receiver stalled after {len(got)} honest messages"
            continue
        if msg.msg_type == HONEST:
            got.append(check_honest(msg))
        elif msg.msg_type == HONEST_DONE:
            assert struct.unpack("<I", msg.payload)[0] == HONEST_COUNT
            done = True
        else:
            hostile += 1  # whatever it managed to send that was well-formed
        msg.close()
    assert got == list(range(HONEST_COUNT)), "the honest sender lost messages or their order"
    return {"errors": errors, "hostile": hostile}


def assert_capacity_exact_here(port: Port) -> None:
    """The port takes exactly ``capacity`` messages, then QueueFull."""
    assert drain_port(port) == []
    for i in range(port.capacity):
        port.send(Message(5), timeout=5)
    with pytest.raises(QueueFull):
        port.send(Message(5), timeout=0)
    assert len(drain_port(port)) == port.capacity


# Attacks that need not end in a ProtocolError (a flood breaks no rule; a
# death before HEAD is stored publishes nothing).
# Forged credits are caught when room is taken back: not always needed here
# (test_a_hostile_sender_fills_the_port_to_capacity_and_no_more needs it).
NO_ERROR_NEEDED = {"doorbell flood", "exit mid-write", "forged credits"}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_sender_cannot_hurt_the_receiver_nor_the_honest_sender(
    spawn_ready, no_fd_leak, attack, seed
):
    port = Port(capacity=16)
    client = port.duplicate(SEND_RIGHTS)
    ready, go, finished, report, pid_pipe = (Baton() for _ in range(5))

    def receiver() -> None:
        client.close()
        with pytest.raises(Empty):
            port.try_recv()  # receiving here from now on
        before = open_fds()
        ready.give()
        hostile = struct.unpack("<i", os.read(pid_pipe.r, 4))[0]
        counts = receive_everything(port, hostile, finished.r)
        assert_same_fds(before, "fds left behind by the attacks")
        assert_capacity_exact_here(port)
        os.write(report.w, struct.pack("<ii", counts["errors"], counts["hostile"]))

    receiver_pid = fork_child(receiver)
    ready.take()
    honest_pid = fork_child(lambda: (go.take(), honest_sender(client)))
    ctx = multiprocessing.get_context("spawn")
    hostile = ctx.Process(target=hostile_main, args=(client.duplicate(SEND_RIGHTS), attack, seed))
    hostile.start()
    os.write(pid_pipe.w, struct.pack("<i", hostile.pid))
    go.give()
    hostile.join(60)
    hostile_status = hostile.exitcode
    if hostile_status is None:
        hostile.kill()
        hostile.join()
    hostile.close()
    finished.give()
    honest_status = wait_child(honest_pid, 60)
    status = wait_child(receiver_pid, 60)
    assert status == 0, f"the receiver failed ({status}) under {attack!r}, seed {seed}"
    assert honest_status == 0, "the honest sender failed"
    assert hostile_status is not None, "the hostile process hung"
    assert hostile_status in (0, -signal.SIGKILL), f"the hostile process failed, seed {seed}"
    errors, _ = struct.unpack("<ii", os.read(report.r, 8))
    if attack not in NO_ERROR_NEEDED:
        assert errors >= 1, "the hostile sender was never caught"
    for baton in (ready, go, finished, report, pid_pipe):
        baton.close()
    client.close()
    port.close()


def hoarder_main(port: Port, how: str, ready: Any, stay: Any) -> None:  # a fresh interpreter
    """Connect (its one message queued), then cheat on the credits: hide the
    unused ones (CREDITS forged negative), or forge CREDITS high and publish
    past what it was allowed. Then stay, connected."""
    h = Hostile(port, random.Random(0))
    if how == "hides its credits":
        h.set_credits(-1000)
    else:
        h.set_credits(1000)
        h.publish(*(_slot(size=4) for _ in range(2 * h.conn.nslots)), take_credits=False)
    ready.send("cheated")
    stay.recv()


@pytest.mark.parametrize("how", ["hides its credits", "publishes past its credits"])
def test_a_hostile_sender_fills_the_port_to_capacity_and_no_more(spawn_ready, no_fd_leak, how):
    """A sender that cheats on its credits cannot keep the others out of a port
    that holds fewer than ``capacity`` messages, nor queue more than that: an
    honest sender is refused exactly when ``capacity`` messages are queued,
    and the receiver then finds exactly ``capacity`` messages."""
    port = Port(capacity=8)
    client = port.duplicate(SEND_RIGHTS)
    ready, go, report = Baton(), Baton(), Baton()

    def receiver() -> None:
        client.close()
        with pytest.raises(Empty):
            port.try_recv()  # receiving here (its service thread answers senders)
        ready.give()
        go.take()  # busy until then: not receiving
        kinds = []
        while True:
            try:
                kinds.append(port.try_recv().msg_type)
            except ProtocolError as e:
                assert "dropped the connection" in str(e)
            except Empty:
                break
        honest = [k for k in kinds if k == HONEST]
        os.write(report.w, struct.pack("<ii", len(kinds), len(honest)))

    receiver_pid = fork_child(receiver)
    ready.take()
    ctx = multiprocessing.get_context("spawn")
    cheated_r, cheated_w = ctx.Pipe(duplex=False)
    stay_r, stay_w = ctx.Pipe(duplex=False)
    hoarder = ctx.Process(target=hoarder_main,
                          args=(client.duplicate(SEND_RIGHTS), how, cheated_w, stay_r))
    hoarder.start()
    assert cheated_r.poll(30) and cheated_r.recv() == "cheated"
    sent = 0
    while True:  # the honest sender fills what is left
        try:
            client.send(Message(HONEST, b"honest"), timeout=2)
        except QueueFull:  # (SendTimedOut)
            break
        sent += 1
    go.give()
    assert wait_child(receiver_pid, 30) == 0
    total, honest = struct.unpack("<ii", os.read(report.r, 8))
    assert honest == sent, "an acknowledged message was lost"
    assert total == port.capacity, (
        f"the honest sender was refused with {total} of {port.capacity} messages queued"
    )
    stay_w.send("bye")
    hoarder.join(10)
    hoarder.close()
    for conn in (cheated_r, cheated_w, stay_r, stay_w):
        conn.close()
    for baton in (ready, go, report):
        baton.close()
    client.close()
    port.close()
