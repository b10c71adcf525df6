"""Fan-in: several sender processes into one receiver, 32-byte messages.

Four processes send as fast as they can to one receiving process, which
times the messages (messages per second, all senders together). Each sender
first sends one message and the receiver takes those before the clock
starts, so connecting is not timed. Variants:

* ``raw socketpair shared by the senders`` (the baseline): one
  ``SOCK_SEQPACKET`` socketpair; every sender holds the same sending end;
* ``redstone Port``: every sender holds a SEND handle of the port (each
  sending process gets a ring of its own).

In the ``one-cpu`` placement all five processes share one CPU; otherwise
the receiver has a CPU and the senders share the other (``two-cpus``) or
go where the scheduler puts them.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from .harness import Peer, Placement, pin
from .model import BASELINE, OURS, Figure, Job, Found, Settings

__all__ = ["plan"]

PAYLOAD = b"s" * 32
RAW = "raw socketpair shared by the senders"
PORT = "redstone Port"


def _fan_in(make_sender: Callable[[], Callable[[int], None]], receive: Callable[[], Any],
            senders: int, per_sender: int, pl: Placement) -> float:
    """Fork ``senders`` processes; each makes its send(count) function, sends
    one message, waits for the start and sends ``per_sender`` more."""
    go_r, go_w = os.pipe()

    def sender() -> None:
        os.close(go_w)
        send = make_sender()
        send(1)
        os.read(go_r, 1)
        send(per_sender)

    peers = [Peer(sender, pl.away) for _ in range(senders)]
    os.close(go_r)
    try:
        for _ in range(senders):
            receive()
        total = senders * per_sender
        t0 = time.perf_counter()
        os.write(go_w, b"g" * senders)
        for _ in range(total):
            receive()
        wall = time.perf_counter() - t0
        for p in peers:
            p.join(60.0)
    finally:
        os.close(go_w)
        for p in peers:
            p.__exit__(None, None, None)
    return total / wall


def _raw(senders: int, per_sender: int, pl: Placement) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def make_sender() -> Callable[[int], None]:
        a.close()
        send = b.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(PAYLOAD)

        return loop

    recv = a.recv
    try:
        return _fan_in(make_sender, lambda: recv(256), senders, per_sender, pl)
    finally:
        a.close()
        b.close()


def _port(senders: int, per_sender: int, pl: Placement) -> float:
    from ..message import Message
    from ..port import SEND_RIGHTS, Port

    port = Port()
    to_port = port.duplicate(SEND_RIGHTS)

    def make_sender() -> Callable[[int], None]:
        port.release()
        send = to_port.send
        msg = Message(1, PAYLOAD)

        def loop(k: int) -> None:
            for _ in range(k):
                send(msg)

        return loop

    try:
        return _fan_in(make_sender, port.recv, senders, per_sender, pl)
    finally:
        to_port.close()
        port.close()


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    k = settings.fanin_senders
    fig = Figure(
        "fan-in", f"Fan-in: {k} sender processes into one receiver, 32-byte messages",
        "msg/s", "higher", RAW,
        f"Messages per second received from {k} processes sending at once; higher "
        "is better. The ratio is the rate divided by the shared raw socketpair's in "
        "the same runs.",
        tuple(p.name for p in placements))
    variants = [(fig.variant(RAW, BASELINE), _raw), (fig.variant(PORT, OURS), _port)]
    per_sender = max(1, settings.fanin_messages // k)
    jobs = []
    for r in range(settings.runs):
        for pl in placements:
            for name, fn in variants:
                jobs.append(Job(f"fan-in, {pl.title}, {name}", pl, r,
                                _job(fig.id, name, fn, k, per_sender, pl),
                                [(fig.id, name)], settings.timeout))
    return [fig], jobs


def _job(fig_id: str, name: str, fn: Callable[[int, int, Placement], float],
         senders: int, per_sender: int, pl: Placement) -> Callable[[], Found]:
    def run() -> Found:
        pin(pl.home)
        return [(fig_id, name, fn(senders, per_sender, pl))]

    return run
