"""32-byte round trips between two processes, and the CPU they cost.

A client process sends 32 bytes, an echo server (another process) sends
them back: one round trip is two messages. Variants:

* ``raw socketpair`` (the baseline): an ``AF_UNIX`` ``SOCK_SEQPACKET``
  socketpair with bare ``send`` / ``recv``: what the kernel does at the
  least, with none of what a port does (no capacity, priorities, sender
  credentials or handles);
* ``redstone Channel``: ``send`` + ``recv`` on each endpoint;
* ``redstone Port pair``: the client sends on the server's port and
  receives on a port of its own (one port per direction);
* the peers of :mod:`.peers`, when installed.

The same runs also give the CPU per message: the CPU time of both processes
during the measured round trips (every thread: a library's helper threads
count too), divided by the messages. On one CPU the round trip time is
roughly that; on two CPUs a receiver that waits by polling shows here.
"""

from __future__ import annotations

import socket
from typing import Callable

from .harness import Loop, Placement, ping_pong
from .model import BASELINE, OURS, PEER, Figure, Job, Found, Settings
from . import peers

__all__ = ["plan"]

PAYLOAD = b"x" * 32
RAW = "raw socketpair"
CHANNEL = "redstone Channel"
PORTS = "redstone Port pair"


def _raw(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def server() -> tuple[Loop, None]:
        a.close()
        recv, send = b.recv, b.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(recv(256))

        return loop, None

    def client() -> tuple[Loop, Callable[[], None]]:
        b.close()
        recv, send = a.recv, a.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(PAYLOAD)
                recv(256)

        return loop, a.close

    return ping_pong(server, client, warm, n, pl)


def _channel(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    from ..channel import Channel
    from ..message import Message

    mine, theirs = Channel.create_pair()

    def server() -> tuple[Loop, None]:
        mine.close()
        recv, send = theirs.recv, theirs.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(recv())

        return loop, None

    def client() -> tuple[Loop, Callable[[], None]]:
        theirs.close()
        recv, send = mine.recv, mine.send
        msg = Message(1, PAYLOAD)

        def loop(k: int) -> None:
            for _ in range(k):
                send(msg)
                recv()

        return loop, mine.close

    return ping_pong(server, client, warm, n, pl)


def _ports(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    from ..message import Message
    from ..port import SEND_RIGHTS, Port

    server_port, client_port = Port(), Port()
    to_server = server_port.duplicate(SEND_RIGHTS)
    to_client = client_port.duplicate(SEND_RIGHTS)

    def server() -> tuple[Loop, None]:
        client_port.release()  # the client receives on that one
        to_server.close()
        recv, send = server_port.recv, to_client.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(recv())

        return loop, None

    def client() -> tuple[Loop, Callable[[], None]]:
        server_port.release()  # the server receives on that one
        to_client.close()
        recv, send = client_port.recv, to_server.send
        msg = Message(1, PAYLOAD)

        def loop(k: int) -> None:
            for _ in range(k):
                send(msg)
                recv()

        def close() -> None:
            to_server.close()
            client_port.close()

        return loop, close

    return ping_pong(server, client, warm, n, pl)


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    names = tuple(p.name for p in placements)
    rt = Figure(
        "roundtrip", "32-byte round trip between two processes", "µs", "lower", RAW,
        "Time for one request and its reply (32 bytes each way) between two "
        "processes; lower is better. The ratio is the time divided by the raw "
        "socketpair's in the same runs: 0.5 means twice as fast as raw sockets.",
        names)
    cpu = Figure(
        "cpu-per-message", "CPU time per message, both processes together", "µs", "lower", RAW,
        "CPU time that the sending and the receiving process spent per message "
        "during the round trips above (user + system, all threads); lower is "
        "better. On one CPU this is the cost of the calls and the context "
        "switches; on two CPUs, a receiver that polls while it waits spends "
        "CPU here to answer sooner.",
        names)
    variants: list[tuple[str, str, Callable[[int, int, Placement], tuple[float, float]]]] = [
        (RAW, BASELINE, _raw), (CHANNEL, OURS, _channel), (PORTS, OURS, _ports)]
    for package, name, fn in peers.ROUNDTRIP:
        if available.get(package) is None:
            variants.append((name, PEER, fn))
    for name, kind, _ in variants:
        rt.variant(name, kind)
        cpu.variant(name, kind)
    n = settings.rt_rounds
    warm = max(20, n // 10)
    jobs = []
    for r in range(settings.runs):
        for pl in placements:
            for name, _, fn in variants:
                jobs.append(Job(
                    f"round trip, {pl.title}, {name}", pl, r,
                    _job(fn, name, warm, n, pl),
                    [(rt.id, name), (cpu.id, name)], settings.timeout))
    return [rt, cpu], jobs


def _job(fn: Callable[[int, int, Placement], tuple[float, float]], name: str,
         warm: int, n: int, pl: Placement) -> Callable[[], Found]:
    def run() -> Found:
        from .harness import pin

        pin(pl.home)
        per_rt, cpu_per_msg = fn(warm, n, pl)
        return [("roundtrip", name, per_rt * 1e6), ("cpu-per-message", name, cpu_per_msg * 1e6)]

    return run
