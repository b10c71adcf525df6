"""Handing a large buffer to another process: a SharedMemory handle vs a copy.

A producer process has a filled buffer and hands it to a consumer process,
which checks a byte at each end and answers. One hand-off is timed from the
producer's send to the answer; the median of several. Variants:

* ``redstone SharedMemory handle via Port``: the buffer is a
  ``SharedMemory``; one message carries its handle (an fd), and the
  consumer maps the very same pages: the time does not grow with the size;
* ``multiprocessing Queue`` (the baseline): ``put`` of a ``bytearray``,
  pickled and copied through a pipe: the time grows with the size.

Measured unpinned only (where the processes run matters little here).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .harness import Peer, Placement, pin
from .model import BASELINE, OURS, Figure, Job, MiB, Found, Settings

__all__ = ["plan"]

OURS_NAME = "redstone SharedMemory handle via Port"
QUEUE = "multiprocessing Queue"


def _ours(size: int, repeat: int) -> float:
    from ..core.object import Rights
    from ..message import Message
    from ..port import Port
    from ..shm import SharedMemory

    make_port: Any = Port
    requests, replies = make_port(capacity=4), make_port(capacity=4)
    to_consumer = requests.duplicate(Rights.SEND | Rights.TRANSFER)
    to_producer = replies.duplicate(Rights.SEND | Rights.TRANSFER)

    def consumer() -> None:
        replies.release()
        to_consumer.close()
        for _ in range(repeat):
            msg = requests.recv()
            shm: Any = msg.handles[0]
            with shm.map(writable=False) as m:
                ok = m[0] == 0xA5 and m[len(m) - 1] == 0x5A
            shm.close()
            to_producer.send(Message.with_data(0, b"ok" if ok else b"bad"))

    times = []
    with Peer(consumer) as peer:
        requests.release()
        to_producer.close()
        with peer.blamed():
            for _ in range(repeat):
                shm = SharedMemory.create(size)
                with shm.map() as m:  # the producer's work, not timed
                    m[0] = 0xA5
                    m[len(m) - 1] = 0x5A
                msg = Message.new(1)
                msg.attach_handle(shm)  # moves the only handle: the consumer owns it
                t0 = time.perf_counter()
                to_consumer.send(msg)
                reply = replies.recv(60.0)
                times.append(time.perf_counter() - t0)
                if bytes(reply.payload) != b"ok":
                    raise RuntimeError("the consumer saw other bytes than were written")
        peer.join(60.0)
    to_consumer.close()
    replies.close()
    return statistics.median(times)


def _queue(size: int, repeat: int) -> float:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    requests, replies = ctx.Queue(), ctx.Queue()

    def consumer() -> None:
        for _ in range(repeat):
            data = requests.get()
            replies.put(data[0] == 0xA5 and data[-1] == 0x5A)
        replies.close()
        replies.join_thread()

    buf = bytearray(size)
    buf[0], buf[-1] = 0xA5, 0x5A
    times = []
    with Peer(consumer) as peer:
        with peer.blamed():
            for _ in range(repeat):
                t0 = time.perf_counter()
                requests.put(buf)
                if not replies.get(timeout=120):
                    raise RuntimeError("the consumer saw other bytes than were written")
                times.append(time.perf_counter() - t0)
        peer.join(60.0)
    requests.close()
    requests.join_thread()
    return statistics.median(times)


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    unpinned = [p for p in placements if p.name == "unpinned"]
    if not unpinned:
        return [], []
    pl = unpinned[0]
    figures, jobs = [], []
    for mib in settings.handoff_mib:
        fig = Figure(
            f"handoff-{mib}MiB", f"Handing a {mib} MiB buffer to another process", "ms",
            "lower", QUEUE,
            f"Milliseconds from sending a {mib} MiB buffer to the consumer's answer "
            "(median of several hand-offs); lower is better. The ratio is the time "
            "divided by multiprocessing.Queue's in the same run.",
            (pl.name,))
        fig.variant(QUEUE, BASELINE)
        fig.variant(OURS_NAME, OURS)
        figures.append(fig)
    for r in range(settings.runs if settings.profile == "smoke" else max(1, settings.runs // 2)):
        for mib in settings.handoff_mib:
            for name, fn in ((QUEUE, _queue), (OURS_NAME, _ours)):
                jobs.append(Job(f"hand-off {mib} MiB, {name}", pl, r,
                                _job(f"handoff-{mib}MiB", name, fn, mib * MiB, settings.handoff_repeat, pl),
                                [(f"handoff-{mib}MiB", name)],
                                settings.timeout + 4 * mib * settings.handoff_repeat / 64))
    return figures, jobs


def _job(fig_id: str, name: str, fn: Any, size: int, repeat: int, pl: Placement) -> Any:
    def run() -> Found:
        pin(pl.home)
        return [(fig_id, name, fn(size, repeat) * 1e3)]

    return run
