"""Hand-off of large buffers: SharedMemory handles through a Port vs multiprocessing.Queue.

A producer process owns a filled buffer of N bytes and hands it to a consumer
process, which checks a byte at each end. With redstone-ipc only a handle
moves (one message with one fd); the consumer maps the very same pages, so
the time should not depend on N. ``multiprocessing.Queue`` pickles and copies
the bytes through a pipe, so its time grows with N. One hand-off is timed
from the producer's send to the consumer's reply; medians over several
hand-offs, both transports measured in the same run.

    python3 bench/bench_shm.py [--sizes 1,64,256] [--repeat 7]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc import Message, Port, Rights, SharedMemory  # noqa: E402

MiB = 1 << 20


def consumer_ours(requests: Port, replies: Port, count: int) -> None:
    for _ in range(count):
        msg = requests.recv()
        (shm,) = msg.handles
        with shm.map(writable=False) as m:
            ok = m[0] == 0xA5 and m[len(m) - 1] == 0x5A
        shm.close()
        replies.send(Message.with_data(0, b"ok" if ok else b"bad"), timeout=None)


def bench_ours(size: int, repeat: int) -> list[float]:
    requests, replies = Port(capacity=4), Port(capacity=4)
    to_consumer = requests.duplicate(Rights.SEND | Rights.TRANSFER)
    to_producer = replies.duplicate(Rights.SEND | Rights.TRANSFER)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=consumer_ours, args=(requests, to_producer, repeat))
    child.start()
    times = []
    for _ in range(repeat):
        shm = SharedMemory.create(size)
        with shm.map() as m:  # the producer's work, not timed: fill the ends
            m[0] = 0xA5
            m[len(m) - 1] = 0x5A
        msg = Message.new(1)
        msg.attach_handle(shm)  # moves the only handle: the consumer owns it
        t0 = time.perf_counter()
        to_consumer.send(msg, timeout=None)
        reply = replies.recv(timeout=60)
        times.append(time.perf_counter() - t0)
        assert bytes(reply.payload) == b"ok"
    child.join(60)
    for h in (requests, replies, to_consumer, to_producer):
        h.close()
    return times


def consumer_queue(requests, replies, count: int) -> None:
    for _ in range(count):
        data = requests.get()
        replies.put(data[0] == 0xA5 and data[-1] == 0x5A)


def bench_queue(size: int, repeat: int) -> list[float]:
    ctx = multiprocessing.get_context("fork")
    requests, replies = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=consumer_queue, args=(requests, replies, repeat))
    child.start()
    buf = bytearray(size)
    buf[0], buf[-1] = 0xA5, 0x5A
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        requests.put(buf)
        assert replies.get(timeout=120)
        times.append(time.perf_counter() - t0)
    child.join(60)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,256", help="MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'size':>8}  {'redstone-ipc':>14}  {'mp.Queue':>12}  {'Queue/ours':>10}")
    for mib in (int(s) for s in args.sizes.split(",")):
        ours = statistics.median(bench_ours(mib * MiB, args.repeat))
        queue = statistics.median(bench_queue(mib * MiB, max(3, args.repeat // 2)))
        print(f"{mib:>5} MiB  {ours * 1e3:>11.3f} ms  {queue * 1e3:>9.1f} ms  {queue / ours:>9.0f}x")


if __name__ == "__main__":
    main()
