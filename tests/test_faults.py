"""Randomized fault injection: SIGKILL at random instants, hundreds of times.

Senders, receiving processes, callers, and holders of mappings and locks are
killed wherever they happen to be; after each round the survivors check
that no message was torn or duplicated, each sender's order held, the
port's capacity is exact and no fd was left behind. The whole file runs in
bounded time (about half a minute on 2 busy cores); ``REDSTONE_FAULT_SEED``
replays a run, ``REDSTONE_FAULT_SCALE`` (default 1) multiplies the rounds.
Each test prints its figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import random
import signal
import struct
import threading
import time

import pytest

from conftest import fork_child, open_fds, wait_child
from redstone_ipc import (
    Channel,
    Empty,
    FdHandle,
    Message,
    Mutex,
    PeerClosed,
    Port,
    PortClosed,
    QueueFull,
    SharedMemory,
)
from redstone_ipc.port import SEND_RIGHTS
from test_reliability import assert_same_fds

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("REDSTONE_FAULT_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
SCALE = float(os.environ.get("REDSTONE_FAULT_SCALE", "1"))


def rounds(n: int) -> int:
    return max(1, int(n * SCALE))


def report(what: str, **figures: int) -> None:
    print(f"\n[faults] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
          + f" (REDSTONE_FAULT_SEED={SEED})")


# -- self-checking messages -----------------------------------------------------------


def payload(sender: int, seq: int) -> bytes:
    size = 100_000 if seq % 11 == 5 else 12 + (seq * 31 + sender) % 200
    return struct.pack("<III", sender, seq, size) + bytes([(sender * 7 + seq) % 251]) * (size - 12)


def message(sender: int, seq: int) -> Message:
    msg = Message(1, payload(sender, seq))
    if seq % 4 == 1:
        msg.attach_handle(FdHandle.adopt(os.eventfd(seq + 1, os.EFD_CLOEXEC)))
    return msg


def check(msg: Message) -> tuple[int, int]:
    data = bytes(msg)
    sender, seq, size = struct.unpack_from("<III", data)
    assert len(data) == size and data == payload(sender, seq), f"torn message {sender}/{seq}"
    if seq % 4 == 1:
        (counter,) = msg.handles
        assert os.eventfd_read(counter.fileno()) == seq + 1, "a handle not its own"
    else:
        assert not msg.handles, "handles not its own"
    return sender, seq


def stream(client: Port, sender: int) -> None:
    seq = 0
    while True:
        client.send(message(sender, seq), timeout=None)
        seq += 1


class Ledger:
    """What each sender got delivered: every sequence once, in order."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.delivered = 0

    def take(self, msg: Message) -> tuple[int, int]:
        sender, seq = check(msg)
        expected = self.next.get(sender, 0)
        assert seq == expected, f"sender {sender}: got {seq} after {expected - 1} (a gap, a duplicate, or out of order)"
        self.next[sender] = seq + 1
        self.delivered += 1
        msg.close()
        return sender, seq


def drain_until_gone(port: Port, ledger: Ledger, connected: int) -> None:
    """Receive everything until only ``connected`` senders are left (the
    others' hang-ups seen) and nothing is queued."""
    deadline = time.monotonic() + 20
    while True:
        try:
            ledger.take(port.recv(timeout=0.05))
            continue
        except Empty:
            pass
        if port.stats()["senders"] <= connected:
            try:
                ledger.take(port.try_recv())
                continue
            except Empty:
                return
        assert time.monotonic() < deadline, f"senders never went: {port.stats()}"


def assert_capacity_exact(port: Port) -> None:
    for _ in range(port.capacity):
        port.send(Message(7), timeout=5)
    with pytest.raises(QueueFull):
        port.send(Message(7), timeout=0)
    for _ in range(port.capacity):
        assert port.try_recv().msg_type == 7
    with pytest.raises(Empty):
        port.try_recv()


# -- senders killed --------------------------------------------------------------------


def test_senders_killed_at_random_instants(no_fd_leak):
    rng = random.Random(SEED)
    port = Port(capacity=8)
    client = port.duplicate(SEND_RIGHTS)
    assert_capacity_exact(port)  # (the receive side and its local sender exist first)
    connected = port.stats()["senders"]
    before = open_fds()
    ledger = Ledger()
    kills = 0
    sender_ids = iter(range(1, 1 << 30))
    for _ in range(rounds(90)):
        pids = [fork_child(lambda i=next(sender_ids): stream(client, i))
                for _ in range(rng.randrange(1, 4))]
        for pid in pids:
            for _ in range(rng.randrange(0, 12)):  # let it get somewhere first, or not
                try:
                    ledger.take(port.recv(timeout=0.2))
                except Empty:
                    break
            time.sleep(rng.random() * 0.003)
            os.kill(pid, signal.SIGKILL)
            assert wait_child(pid) == -signal.SIGKILL
            kills += 1
        drain_until_gone(port, ledger, connected)
        assert_capacity_exact(port)
        assert_same_fds(before, "fds left behind by killed senders")
    report("senders killed", kills=kills, delivered=ledger.delivered, senders=len(ledger.next))
    client.close()
    port.close()


# -- receiving processes killed ------------------------------------------------------------


def test_receiving_processes_killed_at_random_instants(no_fd_leak):
    """The process that receives dies at a random instant: its senders end
    with PortClosed (never hang), what it had read came in order, untorn."""
    rng = random.Random(SEED + 1)
    kills = delivered = 0
    before = None
    for round_ in range(rounds(40)):
        port = Port(capacity=8)
        client = port.duplicate(SEND_RIGHTS)
        ready_r, ready_w = os.pipe()
        seen_r, seen_w = os.pipe()

        def receiver() -> None:
            client.close()
            with pytest.raises(Empty):
                port.try_recv()  # the receive side is here now
            os.write(ready_w, b"!")
            ledger = Ledger()
            while True:
                sender, seq = ledger.take(port.recv(timeout=None))
                os.write(seen_w, struct.pack("<II", sender, seq))

        def sender(index: int) -> None:
            try:
                stream(client, index)
            except PortClosed:
                os._exit(0)

        receiver_pid = fork_child(receiver)
        assert os.read(ready_r, 1) == b"!"
        port.release()  # the port lives in the receiver alone now
        sender_pids = [fork_child(lambda i=i: sender(i)) for i in range(1, rng.randrange(2, 4))]
        client.close()
        time.sleep(rng.random() * 0.05)
        os.kill(receiver_pid, signal.SIGKILL)
        assert wait_child(receiver_pid) == -signal.SIGKILL
        kills += 1
        for pid in sender_pids:  # each one notices, wherever it was
            assert wait_child(pid, 20) == 0, "a sender did not end with PortClosed"
        os.close(seen_w)
        data = b""
        while chunk := os.read(seen_r, 1 << 16):
            data += chunk
        next_seq: dict[int, int] = {}
        for sender_id, seq in struct.iter_unpack("<II", data):
            assert seq == next_seq.get(sender_id, 0), "out of order or duplicated"
            next_seq[sender_id] = seq + 1
            delivered += 1
        for fd in (ready_r, ready_w, seen_r):
            os.close(fd)
        if before is None:
            before = open_fds()  # (after a first round: what any round makes once)
        else:
            assert_same_fds(before, f"fds left behind in round {round_}")
    report("receiving processes killed", kills=kills, read_before_death=delivered)


# -- callers killed -----------------------------------------------------------------------


def test_callers_killed_at_random_instants(no_fd_leak):
    """Clients call a server over channels they send it; they are killed at
    random instants, mid-call or not. The server answers the living, is told
    PeerClosed by the dead (never anything else), and keeps no fd of theirs."""
    rng = random.Random(SEED + 2)
    server_port = Port(capacity=16)
    to_server = server_port.duplicate(SEND_RIGHTS)
    problems: list[BaseException] = []
    served = [0]
    workers: list[threading.Thread] = []
    stop = threading.Event()

    def serve(endpoint) -> None:
        try:
            while True:
                request = endpoint.recv(timeout=10)
                endpoint.reply(request, Message(2, bytes(request.payload)[::-1]), timeout=5)
                served[0] += 1
        except PeerClosed:
            pass
        except BaseException as e:  # noqa: BLE001 - the test reports it
            problems.append(e)
        finally:
            endpoint.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                request = server_port.recv(timeout=0.1)
            except Empty:
                continue
            (endpoint,) = request.handles
            worker = threading.Thread(target=serve, args=(endpoint,), daemon=True)
            worker.start()
            workers.append(worker)

    def caller(index: int) -> None:
        mine, theirs = Channel.create_pair()
        hello = Message(1)
        hello.attach_handle(theirs)
        to_server.send(hello, timeout=10)
        n = 0
        while True:
            body = struct.pack("<II", index, n) + os.urandom(n % 300)
            reply = mine.call(Message(1, body), timeout=10)
            assert bytes(reply) == body[::-1], "a reply that is not ours"
            n += 1

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    kills = 0
    for round_ in range(rounds(60)):
        pid = fork_child(lambda i=round_: caller(i))
        time.sleep(rng.random() * 0.02)
        os.kill(pid, signal.SIGKILL)
        assert wait_child(pid) == -signal.SIGKILL
        kills += 1
    # The server is whole: a caller that lives is served.
    mine, theirs = Channel.create_pair()
    hello = Message(1)
    hello.attach_handle(theirs)
    to_server.send(hello, timeout=10)
    assert bytes(mine.call(Message(1, b"still there"), timeout=10)) == b"ereht llits"
    mine.close()
    stop.set()
    acceptor.join(10)
    for worker in workers:
        worker.join(15)
    assert not any(w.is_alive() for w in workers), "a server thread never heard its caller die"
    assert not problems, problems
    report("callers killed", kills=kills, calls_served=served[0])
    to_server.close()
    server_port.close()


# -- holders of mappings and locks killed --------------------------------------------------


def test_holders_of_mappings_and_locks_killed_at_random_instants(no_fd_leak):
    """Processes map a region and update two words under a robust Mutex; they
    are killed at random instants, holding the lock or not. Whoever takes it
    next is told (owner_died) exactly when the data may be half-updated, and
    the region outlives them all."""
    rng = random.Random(SEED + 3)
    shm = SharedMemory.create(4096)
    m = shm.map()
    Mutex.create(m, 0)
    A, B, BAD = 64, 72, 80  # a == b whenever the lock is free; BAD counts lies

    def worker() -> None:
        view = shm.map()
        lock = Mutex(view, 0)
        while True:
            with lock:
                a, b = view.load_u64(A), view.load_u64(B)
                if a != b:
                    if not lock.owner_died:
                        view.fetch_add_u64(BAD, 1)  # half-updated, and nobody said so
                    view.store_u64(B, a)  # repair
                view.store_u64(A, a + 1)
                view.store_u64(B, a + 1)

    kills = 0
    for _ in range(rounds(60)):
        pids = [fork_child(worker) for _ in range(rng.randrange(1, 4))]
        for pid in pids:
            time.sleep(rng.random() * 0.005)
            os.kill(pid, signal.SIGKILL)
            assert wait_child(pid) == -signal.SIGKILL
            kills += 1
    lock = Mutex(m, 0)
    assert lock.acquire(timeout=10)
    if m.load_u64(A) != m.load_u64(B):
        assert lock.owner_died, "half-updated data, and nobody said so"
        m.store_u64(B, m.load_u64(A))
    lock.release()
    assert m.load_u64(BAD) == 0, "an acquisition found half-updated data without owner_died"
    updates = m.load_u64(A)
    report("lock holders killed", kills=kills, updates=updates)
    lock.close()
    m.unmap()
    shm.close()
