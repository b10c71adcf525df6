"""Pipe throughput and latency: redstone-ipc's Pipe vs a raw kernel pipe and a raw socketpair.

Three loops, each run for ``Pipe`` and for the two raw baselines (blocking
fds, bare ``os.read``/``os.write`` or ``send``/``recv``) in the same run:

* loop: one process writes ``size`` bytes then reads them back (the cost of
  the calls themselves, no scheduling);
* stream: a child writes ``total`` bytes in ``chunk``-byte writes, the parent
  reads them with ``readinto`` until end of stream (MB/s);
* pingpong: two processes bounce a 64-byte message over two pipes (µs per
  round trip), both on one CPU by default (``--placement any`` to unpin).

    python3 bench/bench_pipe.py [--runs 3] [--quick] [--placement same|any]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc import Pipe  # noqa: E402

Ends = tuple[Callable[[int], bytes], Callable[[bytes], int], Callable[[memoryview], int], Callable[[], None]]


# -- the three kinds of pipe, behind one interface: (read, write, readinto, close) ----


def ours() -> tuple[Ends, Ends]:
    reader, writer = Pipe.create()

    def close_r() -> None:
        reader.close()

    def close_w() -> None:
        writer.close()

    r: Ends = (reader.read, writer.write, reader.readinto, close_r)
    w: Ends = (reader.read, writer.write, reader.readinto, close_w)
    return r, w


def raw_pipe() -> tuple[Ends, Ends]:
    rfd, wfd = os.pipe2(os.O_CLOEXEC)

    def write_all(data: bytes) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(wfd, view[done:])
        return done

    r: Ends = (lambda n: os.read(rfd, n), write_all, lambda b: os.readv(rfd, [b]), lambda: os.close(rfd))
    w: Ends = (lambda n: os.read(rfd, n), write_all, lambda b: os.readv(rfd, [b]), lambda: os.close(wfd))
    return r, w


def raw_socket() -> tuple[Ends, Ends]:
    a, b = socket.socketpair()

    def write_all(data: bytes) -> int:
        b.sendall(data, socket.MSG_NOSIGNAL)
        return len(data)

    r: Ends = (a.recv, write_all, a.recv_into, a.close)
    w: Ends = (a.recv, write_all, a.recv_into, b.close)
    return r, w


KINDS = {"Pipe": ours, "raw pipe": raw_pipe, "raw socketpair": raw_socket}


def close_pair(r: Ends, w: Ends) -> None:
    r[3]()
    w[3]()


# -- the loops -------------------------------------------------------------------------


def bench_loop(make: Callable[[], tuple[Ends, Ends]], size: int, rounds: int) -> float:
    """µs per write(size) + read(size) in one process."""
    r, w = make()
    read, write = r[0], w[1]
    data = b"x" * size
    t0 = time.perf_counter()
    for _ in range(rounds):
        write(data)
        got = 0
        while got < size:
            got += len(read(size - got))
    elapsed = time.perf_counter() - t0
    close_pair(r, w)
    return elapsed / rounds * 1e6


def bench_stream(make: Callable[[], tuple[Ends, Ends]], chunk: int, total: int) -> float:
    """MB/s from a child writer to this process."""
    r, w = make()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            r[3]()
            data = b"y" * chunk
            for _ in range(total // chunk):
                w[1](data)
            w[3]()
            code = 0
        finally:
            os._exit(code)
    w[3]()
    buf = memoryview(bytearray(1 << 16))
    got = 0
    t0 = time.perf_counter()
    while n := r[2](buf):
        got += n
    elapsed = time.perf_counter() - t0
    r[3]()
    os.waitpid(pid, 0)
    assert got == total // chunk * chunk, (got, total)
    return got / elapsed / 1e6


def bench_pingpong(make: Callable[[], tuple[Ends, Ends]], rounds: int, cpus: set[int] | None) -> float:
    """µs per 64-byte round trip between two processes."""
    there_r, there_w = make()  # parent -> child
    back_r, back_w = make()  # child -> parent
    msg = b"p" * 64
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            if cpus:
                os.sched_setaffinity(0, cpus)
            there_w[3]()
            back_r[3]()
            for _ in range(rounds):
                there_r[0](64)
                back_w[1](msg)
            code = 0
        finally:
            os._exit(code)
    there_r[3]()
    back_w[3]()
    if cpus:
        os.sched_setaffinity(0, cpus)
    t0 = time.perf_counter()
    for _ in range(rounds):
        there_w[1](msg)
        back_r[0](64)
    elapsed = time.perf_counter() - t0
    os.waitpid(pid, 0)
    there_w[3]()
    back_r[3]()
    return elapsed / rounds * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="median over this many runs")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--placement", choices=("same", "any"), default="same")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    allowed = sorted(os.sched_getaffinity(0))
    cpus = {allowed[0]} if args.placement == "same" else None
    saved = os.sched_getaffinity(0)

    def median(f: Callable[[], float]) -> float:
        return statistics.median(f() for _ in range(args.runs))

    rows: list[tuple[str, str, dict[str, float]]] = []
    for size in (64, 4096, 32768):
        rows.append((f"loop write+read {size} B", "µs", {
            k: median(lambda m=m: bench_loop(m, size, 20000 // scale)) for k, m in KINDS.items()}))
    for chunk, total in ((512, 16 << 20), (1 << 16, 256 << 20)):
        rows.append((f"stream {chunk} B writes", "MB/s", {
            k: median(lambda m=m: bench_stream(m, chunk, total // scale)) for k, m in KINDS.items()}))
    rows.append((f"pingpong 64 B ({args.placement} CPU)", "µs", {
        k: median(lambda m=m: bench_pingpong(m, 10000 // scale, cpus)) for k, m in KINDS.items()}))
    os.sched_setaffinity(0, saved)

    print(f"{'':34}{'Pipe':>10}{'raw pipe':>10}{'raw sock':>10}   Pipe/raw pipe  Pipe/raw sock")
    for name, unit, r in rows:
        a, b, c = r["Pipe"], r["raw pipe"], r["raw socketpair"]
        print(f"{name + ' (' + unit + ')':34}{a:10.2f}{b:10.2f}{c:10.2f}   {a / b:13.2f}  {a / c:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
