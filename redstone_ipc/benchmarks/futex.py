"""Futex hand-off between two processes: the library's futex calls vs raw futex(2).

Two processes share one 32-bit word and take turns: each waits until the
word says it is its turn, hands the turn over (a store and a wake) and
waits again. One round trip is two hand-overs. The variants differ only in
the futex calls; the word is read and stored the same way (a memoryview):

* ``raw futex(2)`` (the baseline): ``syscall(SYS_futex, ...)`` through
  ctypes with a prebuilt pointer, the cheapest call ctypes allows;
* ``Futex.wait / wake``: ``Futex.wait(mapping, 0, v)`` / ``Futex.wake(mapping,
  0, 1)``, which check their arguments on every call;
* ``FutexWord``: ``Futex.word(mapping, 0)``, checked once, then
  ``wait(v)`` / ``wake(1)``: the form for hand-off loops.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any, Callable

from .harness import Peer, Placement, pin
from .model import BASELINE, OURS, Figure, Job, Found, Settings

__all__ = ["plan"]


def _raw_side(mapping: Any, me: int, other: int, rounds: int) -> None:
    from ..linux.libc import SYS, libc

    syscall = libc["syscall"]
    syscall.restype = ctypes.c_long
    nr = SYS["futex"]
    word = memoryview(mapping).cast("I")
    p = ctypes.c_void_p(mapping.word_address(0))
    try:
        for _ in range(rounds):
            while word[0] != me:
                syscall(nr, p, 0, other, None)  # FUTEX_WAIT while the word == other
            word[0] = other
            syscall(nr, p, 1, 1)  # FUTEX_WAKE 1
    finally:
        word.release()


def _api_side(mapping: Any, me: int, other: int, rounds: int) -> None:
    from ..errors import WouldBlock
    from ..futex.futex import Futex

    word = memoryview(mapping).cast("I")
    wait, wake = Futex.wait, Futex.wake
    try:
        for _ in range(rounds):
            while word[0] != me:
                try:
                    wait(mapping, 0, other)
                except WouldBlock:
                    pass
            word[0] = other
            wake(mapping, 0, 1)
    finally:
        word.release()


def _word_side(mapping: Any, me: int, other: int, rounds: int) -> None:
    from ..futex.futex import Futex

    word = memoryview(mapping).cast("I")
    fw = Futex.word(mapping, 0)
    wait, wake = fw.wait, fw.wake
    try:
        for _ in range(rounds):
            while word[0] != me:
                wait(other)  # False when the word already changed
            word[0] = other
            wake(1)
    finally:
        fw.close()
        word.release()


def _ping_pong(side: Callable[[Any, int, int, int], None], warm: int, rounds: int,
               pl: Placement) -> float:
    from ..shm.shm import SharedMemory

    shm = SharedMemory.create(4096)
    mapping = shm.map()
    total = warm + rounds
    with Peer(lambda: side(mapping, 1, 0, total), pl.away) as peer:
        with peer.blamed():
            side(mapping, 0, 1, warm)
            t0 = time.perf_counter()
            side(mapping, 0, 1, rounds)
            wall = time.perf_counter() - t0
        peer.join(60.0)
    mapping.unmap()
    shm.close()
    return wall / rounds


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    fig = Figure(
        "futex", "Futex hand-off between two processes (a round trip = two hand-overs)",
        "µs", "lower", "raw futex(2)",
        "Time for one round trip of a shared word handed back and forth with futex "
        "wait and wake; lower is better. The ratio is the time divided by raw ctypes "
        "futex(2) calls in the same runs: what the library's checks add.",
        tuple(p.name for p in placements))
    variants = [(fig.variant("raw futex(2)", BASELINE), _raw_side),
                (fig.variant("Futex.wait / wake", OURS), _api_side),
                (fig.variant("FutexWord", OURS), _word_side)]
    n = settings.futex_rounds
    warm = max(20, n // 10)
    jobs = []
    for r in range(settings.runs):
        for pl in placements:
            for name, side in variants:
                jobs.append(Job(f"futex, {pl.title}, {name}", pl, r,
                                _job(fig.id, name, side, warm, n, pl),
                                [(fig.id, name)], settings.timeout))
    return [fig], jobs


def _job(fig_id: str, name: str, side: Callable[[Any, int, int, int], None], warm: int,
         n: int, pl: Placement) -> Callable[[], Found]:
    def run() -> Found:
        pin(pl.home)
        return [(fig_id, name, _ping_pong(side, warm, n, pl) * 1e6)]

    return run
