"""Futex ping-pong between two processes: our Futex API vs raw ctypes futex(2).

Two processes share one u32 word and take turns: each waits until the word
says it is its turn, hands the turn over (store + wake), and waits again. One
round trip = two hand-overs. Both variants read and store the word the same
way (a memoryview); they differ only in the futex calls:

* raw:   ``libc.syscall(SYS_futex, c_void_p, FUTEX_WAIT/WAKE, ...)`` with a
  prebuilt pointer, the cheapest form ctypes allows;
* api:   ``Futex.wait(mapping, 0, v)`` / ``Futex.wake(mapping, 0, 1)`` (type
  and range checks, pinning, error mapping on every call);
* word:  a ``FutexWord`` from ``Futex.word(mapping, 0)``: checked and pinned
  once, then ``wait(v)`` / ``wake(1)``;
* wrap:  a control, not an API: the raw calls, each inside a Python function
  that does nothing else: the least any Python API adds (one frame per call).

Across CPUs, on the VMs here, a round trip is not the sum of its CPU costs.
Runs settle into a fast mode (about 30 us per round trip) or a slow one (45
to 70 us): a wake that reaches an idle vCPU is slow. A little more work per
hand-over tips more runs into the slow mode. Two empty Python calls before
each wake, about 100 ns, added 10-15 us to the median, and so did one
``ctypes.get_errno()`` on the wait's failure path. (The failure is EAGAIN,
and it happens in under 1% of the waits, so the mechanism is not understood.)
``wrap`` shows where a wrapper with no checks at all lands. On one CPU, the
CPU cost is what the ratio measures.

Where the two processes run changes everything, so each placement is
measured on its own: both on one CPU (a hand-over is a context switch: pure
CPU cost, where Python overhead shows most), on two CPUs (a hand-over is a
cross-CPU wake-up, dominated on VMs by waking an idle vCPU), and unpinned
(whatever the scheduler does). Runs alternate between variants so machine
noise hits all of them; medians are compared. Absolute numbers depend on the
machine; the ratios are the point (goal: <= 1.2).

    python3 bench/bench_futex.py [--rounds N] [--runs R] [--placement P]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc.errors import WouldBlock  # noqa: E402
from redstone_ipc.futex.futex import Futex  # noqa: E402
from redstone_ipc.linux.libc import SYS, libc  # noqa: E402
from redstone_ipc.shm.shm import SharedMemory  # noqa: E402

_sys = libc["syscall"]
_sys.restype = ctypes.c_long
NR = SYS["futex"]


def raw_side(mapping, me: int, other: int, rounds: int) -> None:
    word = memoryview(mapping).cast("I")
    p = ctypes.c_void_p(mapping.word_address(0))
    try:
        for _ in range(rounds):
            while word[0] != me:
                _sys(NR, p, 0, other, None)  # FUTEX_WAIT while word == other
            word[0] = other
            _sys(NR, p, 1, 1)  # FUTEX_WAKE 1
    finally:
        word.release()


def api_side(mapping, me: int, other: int, rounds: int) -> None:
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


def word_side(mapping, me: int, other: int, rounds: int) -> None:
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


def wrap_side(mapping, me: int, other: int, rounds: int) -> None:
    word = memoryview(mapping).cast("I")
    p = ctypes.c_void_p(mapping.word_address(0))

    def wait(expected):
        return _sys(NR, p, 0, expected, None)

    def wake():
        return _sys(NR, p, 1, 1)

    try:
        for _ in range(rounds):
            while word[0] != me:
                wait(other)
            word[0] = other
            wake()
    finally:
        word.release()


VARIANTS = {"raw": raw_side, "api": api_side, "word": word_side, "wrap": wrap_side}


def one_run(side, rounds: int, cpus: tuple[set[int], set[int]] | None) -> float:
    """Seconds per round trip for one run of ``rounds`` round trips."""
    shm = SharedMemory.create(4096)
    mapping = shm.map()
    ready_r, ready_w = os.pipe()
    saved = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:  # the "pong" side: its turn is 1
        code = 1
        try:
            if cpus:
                os.sched_setaffinity(0, cpus[1])
            os.close(ready_r)
            os.write(ready_w, b"x")
            side(mapping, 1, 0, rounds)
            code = 0
        finally:
            os._exit(code)
    if cpus:
        os.sched_setaffinity(0, cpus[0])
    os.close(ready_w)
    os.read(ready_r, 1)  # the child is running
    os.close(ready_r)
    start = time.perf_counter()
    side(mapping, 0, 1, rounds)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    os.sched_setaffinity(0, saved)
    mapping.unmap()
    shm.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the child failed")
    return elapsed / rounds


def placements() -> dict[str, tuple[set[int], set[int]] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    found: dict[str, tuple[set[int], set[int]] | None] = {"unpinned": None}
    found["same-cpu"] = ({cpus[0]}, {cpus[0]})
    if len(cpus) > 1:
        found["two-cpus"] = ({cpus[0]}, {cpus[1]})
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--placement", choices=["unpinned", "same-cpu", "two-cpus", "all"],
                    default="all")
    args = ap.parse_args()
    print(f"futex ping-pong, 2 processes, {args.rounds} round trips per run, "
          f"{args.runs} runs per variant, medians (us per round trip)")
    for name, cpus in placements().items():
        if args.placement not in ("all", name):
            continue
        for side in VARIANTS.values():
            one_run(side, 1000, cpus)  # warm-up
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.runs):  # interleaved, so noise hits every variant
            for v, side in VARIANTS.items():
                results[v].append(one_run(side, args.rounds, cpus))
        med = {v: statistics.median(r) for v, r in results.items()}
        print(f"[{name}]")
        for v, r in results.items():
            runs = " ".join(f"{x * 1e6:.1f}" for x in r)
            print(f"  {v:5s} median {med[v] * 1e6:7.2f}   runs: {runs}")
        print(f"  ratio Futex.wait/wake : raw = {med['api'] / med['raw']:.3f}   "
              f"FutexWord : raw = {med['word'] / med['raw']:.3f}   (goal <= 1.2)")
        print(f"  control: do-nothing wrapper : raw = {med['wrap'] / med['raw']:.3f}")


if __name__ == "__main__":
    main()
