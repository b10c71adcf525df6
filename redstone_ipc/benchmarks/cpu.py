"""Idle: what a receiver costs while nothing arrives.

A receiving process gets a burst of messages from a sender process (so any
polling it does after a message is at its busiest), then waits in a
blocking receive with a timeout while the sender stays connected and sends
nothing. Measured: the CPU time of the receiving process (every thread)
during that wait. A receiver that sleeps in the kernel uses almost none.

The three variants run at the same time, each in its own pair of processes
(they are all asleep, so they do not disturb each other): a raw
``SOCK_SEQPACKET`` socketpair with a socket timeout (for reference), a
``redstone Channel`` and a ``redstone Port`` with ``recv(timeout=...)``.

(CPU per message while messages flow is measured with the round trips, in
:mod:`.roundtrip`.)
"""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any, Callable

from .harness import Peer, Placement, cpu_now, pin
from .model import BASELINE, OURS, Figure, Job, Found, Settings

__all__ = ["plan"]

BURST = 2000
RAW = "raw socketpair (reference)"


Sides = tuple[Callable[[int], None], Callable[[], None], Callable[[float], Any], Callable[[], None]]


def _idle(make: Callable[[], Sides], seconds: float, pl: Placement) -> float:
    """``make()`` runs here before the fork and returns: the sender's body
    (send k messages), the receiver's start (after the fork), a receive with
    a timeout, and the receiver's cleanup. Returns the CPU seconds this
    process spent in a ``seconds``-long wait for nothing."""
    send, start, recv, close = make()
    hold_r, hold_w = os.pipe()

    def sender() -> None:
        os.close(hold_w)
        send(BURST)
        os.read(hold_r, 1)  # stays connected, idle, until the receiver is done

    try:
        with Peer(sender, pl.away) as peer:
            os.close(hold_r)
            start()
            with peer.blamed():
                for _ in range(BURST):
                    recv(30.0)
                c0 = cpu_now()
                t0 = time.monotonic()
                try:
                    recv(seconds)
                except TimeoutError:
                    pass
                else:
                    raise RuntimeError("a message arrived while none was sent")
                cpu = cpu_now() - c0
                waited = time.monotonic() - t0
            os.close(hold_w)
            hold_w = -1
            peer.join(30.0)
    finally:
        if hold_w >= 0:
            os.close(hold_w)
        close()
    if waited < seconds * 0.9:
        raise RuntimeError(f"the receive returned after {waited:.3f} s, not {seconds} s")
    return cpu


def _raw() -> Sides:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    payload = b"i" * 32

    def send(k: int) -> None:
        b.close()
        for _ in range(k):
            a.send(payload)

    def recv(timeout: float) -> Any:
        b.settimeout(timeout)
        return b.recv(256)

    def close() -> None:
        a.close()
        b.close()

    return send, a.close, recv, close


def _channel() -> Sides:
    from ..channel import Channel
    from ..message import Message

    rx, tx = Channel.create_pair()

    def send(k: int) -> None:
        rx.close()
        msg = Message(1, b"i" * 32)
        for _ in range(k):
            tx.send(msg)

    return send, tx.close, rx.recv, rx.close


def _port() -> Sides:
    from ..message import Message
    from ..port import SEND_RIGHTS, Port

    port = Port()
    to_port = port.duplicate(SEND_RIGHTS)

    def send(k: int) -> None:
        port.release()
        msg = Message(1, b"i" * 32)
        for _ in range(k):
            to_port.send(msg)

    return send, to_port.close, port.recv, port.close


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    secs = settings.idle_seconds
    fig = Figure(
        "idle", f"Idle receiver: CPU used while blocked {secs:g} s with nothing arriving",
        "ms", "lower", None,
        f"Milliseconds of CPU that a receiving process used during a {secs:g}-second "
        "blocking receive while its sender stayed connected and sent nothing, right "
        "after a burst of messages; lower is better. The raw socket is shown for "
        "reference (a socket sleeps in the kernel at once).",
        tuple(p.name for p in placements))
    variants = [(fig.variant(RAW, BASELINE), _raw),
                (fig.variant("redstone Channel", OURS), _channel),
                (fig.variant("redstone Port", OURS), _port)]
    jobs = []
    for r in range(settings.idle_runs):
        for pl in placements:
            jobs.append(Job(f"idle receiver, {pl.title}", pl, r, _job(fig.id, variants, secs, pl),
                            [(fig.id, name) for name, _ in variants],
                            settings.timeout + secs))
    return [fig], jobs


def _job(fig_id: str, variants: list[tuple[str, Callable[[], Any]]], seconds: float,
         pl: Placement) -> Callable[[], Found]:
    def run() -> Found:
        pin(pl.home)
        running = [(name, Peer(functools.partial(_idle, make, seconds, pl), pl.home))
                   for name, make in variants]
        out: Found = []
        for name, peer in running:
            try:
                out.append((fig_id, name, peer.join(60.0 + seconds) * 1e3))
            except Exception as exc:  # this variant failed: the others still count
                out.append((fig_id, name, str(exc)))
        return out

    return run
