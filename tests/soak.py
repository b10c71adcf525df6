"""The long reliability run (``make soak``; minutes, not in CI).

Eight sender processes send 10^5 messages each into one Port received here;
a tenth of them carry a handle (an eventfd holding a number the receiver
checks), payloads range from empty to a few hundred KB (inline, data
segments, kept and released). Meanwhile senders are SIGKILLed at random
instants and started again (a new *stream*: the next generation of that
sender, going on with what is left of its share).

Checked, as messages arrive and at the end:

* every acknowledged message is delivered exactly once: a sender records a
  message as acknowledged (in shared memory) once ``send`` returned; per
  stream the receiver must get exactly 0, 1, ..., k-1 with k at least the
  acknowledged count (and at most one more: the message a kill cut off
  after it was published, before it was recorded);
* per-stream order, and payloads and handles intact (a torn or stray
  byte, a wrong handle, fails the run);
* fds and memory flat: the receiver's fd count and RSS, once warm, against
  the end (all senders gone); the port has no sender left and its capacity
  is exact.

It prints its figures and exits 1 if any check failed.

    python tests/soak.py [--senders 8] [--messages 100000] [--kills 200] [--seed N]

(``SOAK_MAPS=1`` also lists the shared memory still mapped at the end.)
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redstone_ipc import Empty, FdHandle, Message, Port, QueueFull  # noqa: E402
from redstone_ipc.port import SEND_RIGHTS  # noqa: E402

HEAD = struct.Struct("<III")  # stream, seq, size
MAX_GENERATIONS = 4096
DATA = 7


def payload_size(stream: int, seq: int) -> int:
    r = (stream * 2654435761 + seq * 40503) % 1000
    if r < 900:
        return HEAD.size + r % 200  # inline
    if r < 990:
        return HEAD.size + 1000 + r * 7  # a data segment, copied out
    return 100_000 + r * 200  # a view into a segment (> 64 KiB)


def payload(stream: int, seq: int) -> bytes:
    size = payload_size(stream, seq)
    return HEAD.pack(stream, seq, size) + bytes([(stream * 31 + seq) % 251]) * (size - HEAD.size)


def sender_main(client: Port, stream: int, count: int, acked: memoryview) -> None:
    """Send ``count`` messages of ``stream`` (seq 0 ...); record each acknowledged one."""
    for seq in range(count):
        msg = Message(DATA, payload(stream, seq))
        if seq % 10 == 0:
            msg.attach_handle(FdHandle.adopt(os.eventfd(seq + 1)))
        client.send(msg, timeout=60)
        acked[stream] = seq + 1


def fds_now() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_parts() -> str:
    """RssAnon, RssFile, RssShmem (shared memory mapped: rings, segments)."""
    with open("/proc/self/status") as f:
        parts = [line.split()[1] for line in f if line.startswith(("RssAnon", "RssFile", "RssShmem"))]
    return "/".join(f"{int(kb) >> 10}" for kb in parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--messages", type=int, default=100_000, help="per sender")
    ap.add_argument("--kills", type=int, default=200, help="SIGKILLs of senders, spread over the run")
    ap.add_argument("--capacity", type=int, default=256)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    print(f"soak: {args.senders} senders x {args.messages} messages, {args.kills} kills, seed {seed}",
          flush=True)

    nstreams = args.senders * MAX_GENERATIONS
    shared = mmap.mmap(-1, nstreams * 8)  # MAP_SHARED: the senders' acknowledgements
    acked = memoryview(shared).cast("Q")
    port = Port(capacity=args.capacity)
    client = port.duplicate(SEND_RIGHTS)
    with_handles = 0
    delivered = 0
    problems: list[str] = []
    expect = [0] * nstreams  # the next seq each stream must deliver
    generation = [0] * args.senders
    done_by = [0] * args.senders  # acknowledged by earlier generations
    running: dict[int, int] = {}  # pid -> sender
    kills = 0
    exits: dict[str, int] = {}

    def start(i: int) -> None:
        stream = i * MAX_GENERATIONS + generation[i]
        left = args.messages - done_by[i]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the sender
            code = 1
            try:
                port.release()  # (a forked child cannot receive anyway)
                sender_main(client, stream, left, acked)
                code = 0
            except BaseException as e:  # noqa: BLE001
                print(f"sender {i} stream {stream}: {e!r}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        running[pid] = i

    def retire(pid: int, status: int) -> None:
        i = running.pop(pid)
        stream = i * MAX_GENERATIONS + generation[i]
        code = os.waitstatus_to_exitcode(status)
        exits[str(code)] = exits.get(str(code), 0) + 1
        if code not in (0, -signal.SIGKILL):
            problems.append(f"sender {i} stream {stream} exited with {code}")
        done_by[i] += acked[stream]
        generation[i] += 1
        if done_by[i] < args.messages:
            if generation[i] >= MAX_GENERATIONS:
                problems.append(f"sender {i}: too many generations")
                return
            start(i)

    def check(msg: Message) -> None:
        nonlocal delivered, with_handles
        data = bytes(msg)
        if len(data) < HEAD.size:
            problems.append(f"a torn or stray message of {len(data)} bytes")
            return
        stream, seq, size = HEAD.unpack_from(data)
        if stream >= nstreams or data != payload(stream, seq):
            problems.append(f"a torn or stray message: stream {stream} seq {seq} size {len(data)}")
            return
        if seq != expect[stream]:
            problems.append(f"stream {stream}: seq {seq} where {expect[stream]} was due")
        expect[stream] = seq + 1
        if seq % 10 == 0:
            handles = msg.handles
            if len(handles) != 1 or os.eventfd_read(handles[0].fileno()) != seq + 1:
                problems.append(f"stream {stream} seq {seq}: not its own handle")
            with_handles += 1
        elif msg.handles:
            problems.append(f"stream {stream} seq {seq}: a handle it never carried")
        delivered += 1

    start_time = time.monotonic()
    for i in range(args.senders):
        start(i)
    total = args.senders * args.messages
    kill_every = max(1, total // (args.kills + 1)) if args.kills else 0
    next_kill = kill_every
    warm_fds = warm_rss = 0
    warm_parts = ""
    printed = 0
    peak_rss = 0
    kept: list[Message] = []  # a few payloads held a while (views into segments)
    last_report = time.monotonic()
    while running:
        try:
            msg = port.recv(timeout=0.05)
        except Empty:
            msg = None
        if msg is not None:
            check(msg)
            if len(bytes(msg)) > 65536 and rng.random() < 0.5:
                kept.append(msg)  # released later: the sender's data room waits for it
                if len(kept) > 8:
                    kept.pop(0).close()
            else:
                msg.close()
        while True:  # reap the senders that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            retire(pid, status)
        if kill_every and delivered >= next_kill and running and kills < args.kills:
            next_kill += kill_every
            victim = rng.choice(list(running))
            time.sleep(rng.random() * 0.002)  # any instant of its send
            os.kill(victim, signal.SIGKILL)
            kills += 1
        if not warm_fds and delivered >= total // 4:
            warm_fds, warm_rss = fds_now(), rss_now()
            warm_parts = rss_parts()
        if delivered and delivered % (total // 8) == 0 and delivered != printed:
            printed = delivered
            print(f"  RSS anon/file/shmem MiB at {delivered}: {rss_parts()}", flush=True)
        peak_rss = max(peak_rss, rss_now()) if delivered % 1000 == 0 else peak_rss
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            print(f"  {delivered} delivered, {kills} kills, {time.monotonic() - start_time:.0f} s",
                  flush=True)
    for msg in kept:
        msg.close()
    while True:  # what was published before the last exits
        try:
            check(port.try_recv())
        except Empty:
            break
    elapsed = time.monotonic() - start_time

    acknowledged = 0
    for stream in range(nstreams):
        a = acked[stream]
        acknowledged += a
        if expect[stream] < a:
            problems.append(f"stream {stream}: {a} acknowledged, {expect[stream]} delivered")
        elif expect[stream] > a + 1:
            problems.append(f"stream {stream}: {expect[stream]} delivered, only {a} acknowledged")
    senders_left = port.stats()["senders"]
    if senders_left:
        problems.append(f"{senders_left} senders still connected after all exited")
    for _ in range(args.capacity):  # capacity exact
        client.send(Message(1), timeout=5)
    try:
        client.send(Message(1), timeout=0)
        problems.append("the port took more than its capacity")
    except QueueFull:
        pass
    for _ in range(args.capacity):
        port.recv(timeout=5).close()
    end_fds, end_rss = fds_now(), rss_now()
    if os.environ.get("SOAK_MAPS"):  # what shared memory stays mapped at the end
        kinds: dict[str, list[int]] = {}
        with open("/proc/self/maps") as f:
            for line in f:
                if "memfd:" in line:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    name = line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
                    kinds.setdefault(name, []).append(hi - lo)
        for name, sizes in kinds.items():
            print(f"  mapped {name}: {len(sizes)} mappings, {sum(sizes) >> 20} MiB")
    # (the connection made just now for the capacity check holds a ring, a
    # socket and a doorbell each side)
    fd_growth = end_fds - warm_fds - 6
    if fd_growth > 0:
        problems.append(f"fds grew by {fd_growth}")
    rss_growth = end_rss - warm_rss
    if rss_growth > 64 << 20:
        problems.append(f"RSS grew by {rss_growth >> 20} MiB")

    print(f"soak: {elapsed:.0f} s; streams (sender generations): {sum(generation)}")
    print(f"  SIGKILLs of senders: {kills}; exits: {exits}")
    print(f"  messages acknowledged: {acknowledged}; delivered: {delivered} "
          f"({delivered / elapsed:.0f}/s), {with_handles} with a handle; lost: 0 of the acknowledged"
          if not any("acknowledged," in p for p in problems) else "  LOST acknowledged messages")
    print(f"  receiver fds: {warm_fds} warm, {end_fds} at the end; RSS: {warm_rss >> 20} MiB warm, "
          f"{peak_rss >> 20} MiB peak, {end_rss >> 20} MiB at the end (anon/file/shmem MiB: "
          f"{warm_parts} warm, {rss_parts()} at the end)")
    print(f"  leaks found: {sum(1 for p in problems if 'grew' in p)}; problems: {len(problems)}")
    for p in problems[:20]:
        print("  PROBLEM:", p)
    client.close()
    port.close()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
