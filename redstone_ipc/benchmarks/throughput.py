"""One-way throughput: one process sends as fast as it can, another receives.

Messages of 32 B, 4 KiB, 64 KiB and 1 MiB. The receiving process times the
messages after a warm-up; messages per second (MB/s is that times the size).
Variants:

* ``raw socketpair`` (the baseline): ``send`` on one end of an ``AF_UNIX``
  ``SOCK_SEQPACKET`` socketpair, ``recv_into`` a reusable buffer on the
  other, with socket buffers big enough for the size (a ``SOCK_STREAM``
  pair when the system does not allow that many bytes in one record);
* ``redstone Channel`` and ``redstone Port``: ``send(Message(1, payload))``
  with a ``bytes`` payload (copied into shared memory), ``recv()``, with
  the default capacity (16 messages);
* ``... + loan`` (64 KiB and up): the sender takes a loan (``loan(size)``),
  writes the payload into it (one copy, as a producer writing its data
  would) and sends it; the receiver reads those very pages (no copy).
  ``loan`` waits for data room as ``send`` does;
* ``pyzmq PUSH/PULL``, when installed.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from .harness import Loop, Placement, pin, stream
from .model import BASELINE, OURS, PEER, Figure, Job, KiB, MiB, Found, Settings
from . import peers

__all__ = ["plan", "size_name"]

RAW = "raw socketpair"
LOAN_FROM = 64 * KiB


def size_name(size: int) -> str:
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= KiB and size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} B"


def _raw_pair(size: int) -> tuple[socket.socket, socket.socket, bool]:
    """A socketpair that carries ``size``-byte records (or a stream pair: the
    third item says which)."""
    want = max(4 * size, 1 << 16)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # *BUFFORCE
            s.setsockopt(socket.SOL_SOCKET, opt, want)
            if s.getsockopt(socket.SOL_SOCKET, opt) < want:
                try:
                    s.setsockopt(socket.SOL_SOCKET, force, want)
                except OSError:
                    pass
    if a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * size + 4096:
        return a, b, False
    a.close()
    b.close()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b, True


def _raw(size: int, warm: int, n: int, pl: Placement) -> float:
    a, b, is_stream = _raw_pair(size)
    payload = b"p" * size

    def sender() -> tuple[Loop, Callable[[], None]]:
        b.close()
        send = a.sendall if is_stream else a.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(payload)

        return loop, a.close

    def receiver() -> tuple[Loop, Callable[[], None]]:
        a.close()
        buf = bytearray(size)
        view = memoryview(buf)
        recv_into = b.recv_into

        if is_stream:
            def loop(k: int) -> None:
                for _ in range(k):
                    got = 0
                    while got < size:
                        got += recv_into(view[got:])
        else:
            def loop(k: int) -> None:
                for _ in range(k):
                    recv_into(buf)

        return loop, b.close

    return stream(sender, receiver, warm, n, pl)


def _ours(kind: str, loan: bool) -> Callable[[int, int, int, Placement], float]:
    def run(size: int, warm: int, n: int, pl: Placement) -> float:
        from ..message import Message

        payload = b"p" * size
        rx: Any
        tx: Any
        if kind == "channel":
            from ..channel import Channel

            rx, tx = Channel.create_pair()
            tx_close: Callable[[], None] = rx.close  # the sender drops the receiving end
            rx_close: Callable[[], None] = tx.close
        else:
            from ..port import SEND_RIGHTS, Port

            rx = Port()
            tx = rx.duplicate(SEND_RIGHTS)
            tx_close = rx.release
            rx_close = tx.close

        def sender() -> tuple[Loop, Callable[[], None]]:
            tx_close()
            send = tx.send
            if loan:
                take = tx.loan

                def loop(k: int) -> None:
                    for _ in range(k):
                        buf = take(size)
                        buf.view[:] = payload
                        send(Message(1, buf))
            else:
                msg = Message(1, payload)

                def loop(k: int) -> None:
                    for _ in range(k):
                        send(msg)

            return loop, tx.close

        def receiver() -> tuple[Loop, Callable[[], None]]:
            rx_close()
            recv = rx.recv

            def loop(k: int) -> None:
                for _ in range(k):
                    recv()

            return loop, rx.close

        return stream(sender, receiver, warm, n, pl)

    return run


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    names = tuple(p.name for p in placements)
    figures: list[Figure] = []
    per_size: list[tuple[Figure, int, list[tuple[str, Callable[[int, int, int, Placement], float]]]]] = []
    for size, count in settings.tput_counts.items():
        fig = Figure(
            f"throughput-{size_name(size).replace(' ', '')}",
            f"One-way throughput, {size_name(size)} messages", "msg/s", "higher", RAW,
            f"Messages per second from one process to another, {size_name(size)} each "
            f"(MB/s = msg/s x {size / 1e6:g}); higher is better. The ratio is the rate "
            "divided by the raw socketpair's in the same runs: 2.0 means twice as many "
            "messages per second." + (
                " The '+ loan' rows build each payload in a loan (loan(size): shared "
                "memory the receiver then reads in place, zero copy) instead of "
                "sending bytes." if size >= LOAN_FROM else ""),
            names)
        variants: list[tuple[str, Callable[[int, int, int, Placement], float]]] = [
            (fig.variant(RAW, BASELINE), _raw),
            (fig.variant("redstone Channel", OURS), _ours("channel", False)),
            (fig.variant("redstone Port", OURS), _ours("port", False)),
        ]
        if size >= LOAN_FROM:
            variants += [
                (fig.variant("redstone Channel + loan", OURS), _ours("channel", True)),
                (fig.variant("redstone Port + loan", OURS), _ours("port", True)),
            ]
        for package, name, fn in peers.THROUGHPUT:
            if available.get(package) is None:
                variants.append((fig.variant(name, PEER), fn))
        figures.append(fig)
        per_size.append((fig, size, variants))
    jobs = []
    for r in range(settings.runs):
        for pl in placements:
            for fig, size, variants in per_size:
                count = settings.tput_counts[size]
                for name, fn in variants:
                    jobs.append(Job(
                        f"throughput {size_name(size)}, {pl.title}, {name}", pl, r,
                        _job(fig.id, name, fn, size, max(10, count // 10), count, pl),
                        [(fig.id, name)], settings.timeout))
    return figures, jobs


def _job(fig_id: str, name: str, fn: Callable[[int, int, int, Placement], float],
         size: int, warm: int, n: int, pl: Placement) -> Callable[[], Found]:
    def run() -> Found:
        pin(pl.home)
        return [(fig_id, name, fn(size, warm, n, pl))]

    return run
