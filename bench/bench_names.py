"""What finding a name costs: connect latency, a miss, publish and close.

    python3 bench/bench_names.py [--number 2000]

``connect`` is a socket, a connect, the publisher's thread answering (its
credential check, a duplicate, one sendmsg with the handle's fds) and the
client validating what arrived; the publisher runs in this process or in
another one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from redstone_ipc import NameNotFound, Port, SharedMemory, connect, publish

OTHER = """
import sys
from redstone_ipc import Port, publish
with publish(sys.argv[1], Port()):
    print("ready", flush=True)
    sys.stdin.readline()
"""


def timed_connects(label: str, name: str, number: int) -> None:
    times = []
    for _ in range(number):
        start = time.perf_counter()
        handle = connect(name, timeout=5)
        times.append(time.perf_counter() - start)
        handle.close()
    times.sort()
    print(
        f"{label:<48} median {statistics.median(times) * 1e6:5.0f} us   "
        f"p90 {times[int(number * 0.9)] * 1e6:5.0f} us   p99 {times[int(number * 0.99)] * 1e6:5.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    number = parser.parse_args().number

    with publish("bench/port", Port()):
        timed_connects("connect: Port SEND, publisher in this process", "bench/port", number)
    with publish("bench/shm", SharedMemory.create(4096)):
        timed_connects("connect: SharedMemory, publisher in this process", "bench/shm", number)
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER, "bench/other"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert other.stdout is not None and other.stdin is not None
    other.stdout.readline()
    timed_connects("connect: Port SEND, publisher in another process", "bench/other", number)
    other.stdin.close()
    other.wait()

    start = time.perf_counter()
    for _ in range(number):
        try:
            connect("bench/nobody", timeout=0)
        except NameNotFound:
            pass
    print(f"{'connect(timeout=0) to a missing name':<48} mean {(time.perf_counter() - start) / number * 1e6:5.0f} us")

    shm = SharedMemory.create(4096)
    opened = closed = 0.0
    for _ in range(200):
        t0 = time.perf_counter()
        pub = publish("bench/cycle", shm)
        t1 = time.perf_counter()
        pub.close()
        opened += t1 - t0
        closed += time.perf_counter() - t1
    print(f"{'publish / close (thread start, join)':<48} mean {opened / 200 * 1e6:5.0f} us / {closed / 200 * 1e6:.0f} us")


if __name__ == "__main__":
    main()
