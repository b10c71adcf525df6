"""32-byte round trips between two processes: Channel and a pair of Ports vs raw sockets.

A client process sends 32 bytes, an echo server (a forked process) sends them
back; one round trip = two messages. Variants:

* raw:     a plain ``SOCK_SEQPACKET`` socketpair, ``send``/``recv`` (the goal's
           baseline: no credentials, no handles, no capacity, no priorities);
* channel: ``ChannelEndpoint.send`` + ``recv`` on both sides;
* call:    ``ChannelEndpoint.call`` on the client (txid matching), the server
           as for ``channel``;
* ports:   the client sends on the server's port (a SEND right) and receives
           on its own port, whose SEND right the server got in a message;
* floor:   a control, not an API: the raw socketpair plus only the system
           calls our semantics need, no other code. A credit taken
           (``eventfd_read``) before each send and given back
           (``eventfd_write``) after each receive: exact capacity across
           processes. ``SO_PASSCRED`` and ``recvmsg`` with room for the
           ancillary data: the kernel-checked ``msg.sender``. A blocking
           ``poll`` before each receive (where a receiver that must also
           wake for ``close()``, other threads and repairs sleeps) and a ``poll(0)`` after it (is a higher-priority
           message queued behind this one?). ``floor : raw`` is what any
           Python implementation of these semantics pays; ``x : floor`` is
           what our Python code adds on top.

Peers, for scale (what users compare us with; none has capacity, priorities
or handle passing):

* mp-pipe: ``multiprocessing.Pipe``, ``send_bytes``/``recv_bytes``;
* pyzmq:   a ZeroMQ PAIR socket over ``ipc://``, if pyzmq is installed (the
           ``bench`` extra installs it; skipped otherwise).

What the library adds per message, on top of raw: the wire header and
kernel credentials (SCM_CREDENTIALS), a credit taken and given back
(eventfd), the window lock (two flock calls; ports only), a poll for
higher-priority messages queued behind (receiver), and the Python code of
``message.wire``.

Where the two processes run changes everything, so each placement is
measured on its own: both on one CPU (a hand-over is a context switch: the
CPU cost shows most), on two CPUs (a hand-over is a cross-CPU wake-up,
dominated on VMs by waking an idle vCPU), and unpinned. Runs alternate
between variants so machine noise hits all of them; each variant's median
over its runs is compared with raw's (goal: <= 1.25).

    python3 bench/bench_port.py [--rounds N] [--runs R] [--placement P]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc.channel import Channel  # noqa: E402
from redstone_ipc.errors import IpcError  # noqa: E402
from redstone_ipc.message import Message  # noqa: E402
from redstone_ipc.port import SEND_RIGHTS, Port  # noqa: E402

PAYLOAD = b"x" * 32
VARIANTS = ("raw", "floor", "channel", "call", "ports", "mp-pipe", "pyzmq")
PLACEMENTS = {"same": (0, 0), "split": (0, 1), "free": (None, None)}


def pin(index: int | None) -> None:
    if index is not None:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def serve(body, cpu: int | None) -> int:
    """Run ``body`` in a forked echo server; its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            pin(cpu)
            body()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


# -- the variants: each returns seconds per round trip, one per run ------------


def bench_raw(rounds: int, runs: int, cpus) -> list[float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def server() -> None:
        a.close()
        recv, send = b.recv, b.send
        while True:
            data = recv(4096)
            if not data:
                return
            send(data)

    pid = serve(server, cpus[1])
    b.close()
    send, recv = a.send, a.recv
    try:
        return [_timed(rounds, lambda: (send(PAYLOAD), recv(4096))) for _ in range(runs)]
    finally:
        a.close()
        os.waitpid(pid, 0)


def bench_floor(rounds: int, runs: int, cpus) -> list[float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    ancillary = socket.CMSG_SPACE(12)  # struct ucred
    flags = os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC
    to_b, to_a = os.eventfd(16, flags), os.eventfd(16, flags)  # credits per direction
    take, give = os.eventfd_read, os.eventfd_write

    def waiter(sock: socket.socket):
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        return p.poll

    def server() -> None:
        a.close()
        recv, send, poll = b.recvmsg, b.send, waiter(b)
        while True:
            poll()
            data = recv(4096, ancillary)[0]
            if not data:
                return
            poll(0)
            give(to_b, 1)
            take(to_a)
            send(data)

    pid = serve(server, cpus[1])
    b.close()
    send, recv, poll = a.send, a.recvmsg, waiter(a)

    def step() -> None:
        take(to_b)
        send(PAYLOAD)
        poll()
        recv(4096, ancillary)
        poll(0)
        give(to_a, 1)

    try:
        return [_timed(rounds, step) for _ in range(runs)]
    finally:
        a.close()
        os.waitpid(pid, 0)
        os.close(to_a)
        os.close(to_b)


def bench_mp_pipe(rounds: int, runs: int, cpus) -> list[float]:
    import multiprocessing

    a, b = multiprocessing.Pipe()

    def server() -> None:
        a.close()
        recv, send = b.recv_bytes, b.send_bytes
        while True:
            try:
                data = recv()
            except EOFError:
                return
            send(data)

    pid = serve(server, cpus[1])
    b.close()
    send, recv = a.send_bytes, a.recv_bytes
    try:
        return [_timed(rounds, lambda: (send(PAYLOAD), recv())) for _ in range(runs)]
    finally:
        a.close()
        os.waitpid(pid, 0)


def bench_pyzmq(rounds: int, runs: int, cpus) -> list[float]:
    import tempfile

    import zmq  # the bench extra; main() skips this variant without it

    with tempfile.TemporaryDirectory() as tmp:
        address = f"ipc://{tmp}/pair"

        def server() -> None:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PAIR)
            sock.connect(address)
            recv, send = sock.recv, sock.send
            while True:
                data = recv()
                if data == b"":
                    break
                send(data)
            sock.close(linger=0)
            ctx.term()

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        sock.bind(address)
        pid = serve(server, cpus[1])
        send, recv = sock.send, sock.recv
        try:
            return [_timed(rounds, lambda: (send(PAYLOAD), recv())) for _ in range(runs)]
        finally:
            send(b"")
            os.waitpid(pid, 0)
            sock.close(linger=0)
            ctx.term()


def _has_pyzmq() -> bool:
    import importlib.util

    return importlib.util.find_spec("zmq") is not None


def _channel_server(mine, other) -> None:
    other.close()
    recv, send = mine.recv, mine.send
    while True:
        try:
            msg = recv()
        except IpcError:
            return
        send(msg)  # echoes the txid too, so this also serves call()


def bench_channel(rounds: int, runs: int, cpus, use_call: bool) -> list[float]:
    client, server_end = Channel.create_pair()
    pid = serve(lambda: _channel_server(server_end, client), cpus[1])
    server_end.close()
    msg = Message(1, PAYLOAD)
    try:
        if use_call:
            call = client.call
            step = lambda: call(msg)  # noqa: E731
        else:
            send, recv = client.send, client.recv
            step = lambda: (send(msg), recv())  # noqa: E731
        return [_timed(rounds, step) for _ in range(runs)]
    finally:
        client.close()
        os.waitpid(pid, 0)


def bench_ports(rounds: int, runs: int, cpus) -> list[float]:
    server_port = Port()
    to_server = server_port.duplicate(SEND_RIGHTS)
    client_port = Port()

    def server() -> None:
        client_port.release()  # the parent receives on that one
        hello = server_port.recv()
        (reply_to,) = hello.handles
        recv, send = server_port.recv, reply_to.send
        while True:
            try:
                msg = recv()
            except IpcError:
                return
            if msg.msg_type == 0:
                return
            send(msg)

    pid = serve(server, cpus[1])
    server_port.release()  # the server receives on that one
    hello = Message(0xFFFF)
    hello.attach_handle(client_port.duplicate(SEND_RIGHTS))
    to_server.send(hello)
    msg = Message(1, PAYLOAD)
    send, recv = to_server.send, client_port.recv
    try:
        return [_timed(rounds, lambda: (send(msg), recv())) for _ in range(runs)]
    finally:
        to_server.send(Message(0))
        os.waitpid(pid, 0)
        for h in (to_server, client_port):
            h.close()


def _timed(rounds: int, step) -> float:
    for _ in range(min(rounds // 10, 1000)):  # warm up: caches, CPU frequency
        step()
    start = time.perf_counter()
    for _ in range(rounds):
        step()
    return (time.perf_counter() - start) / rounds


def measure(placement: str, rounds: int, runs: int) -> dict[str, float]:
    cpus = PLACEMENTS[placement]
    previous = os.sched_getaffinity(0)
    pin(cpus[0])
    samples: dict[str, list[float]] = {k: [] for k in VARIANTS}
    try:
        for _ in range(runs):  # interleaved: drift hits every variant alike
            samples["raw"] += bench_raw(rounds, 1, cpus)
            samples["floor"] += bench_floor(rounds, 1, cpus)
            samples["channel"] += bench_channel(rounds, 1, cpus, use_call=False)
            samples["call"] += bench_channel(rounds, 1, cpus, use_call=True)
            samples["ports"] += bench_ports(rounds, 1, cpus)
            samples["mp-pipe"] += bench_mp_pipe(rounds, 1, cpus)
            if _has_pyzmq():
                samples["pyzmq"] += bench_pyzmq(rounds, 1, cpus)
    finally:
        os.sched_setaffinity(0, previous)
    return {k: statistics.median(v) for k, v in samples.items() if v}


def cpu_costs(count: int) -> dict[str, float]:
    """One process, no context switch: microseconds of CPU per message
    (send + receive), by layer. Medians of 5."""
    from redstone_ipc.linux.cmsg import seqpacket_pair
    from redstone_ipc.message import recv_message, send_message

    raw_a, raw_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wire_a, wire_b = seqpacket_pair()
    port = Port()
    sender = port.duplicate(SEND_RIGHTS)
    ch_a, ch_b = Channel.create_pair()
    msg = Message(1, PAYLOAD)
    steps = {
        "raw socket": lambda: (raw_a.send(PAYLOAD), raw_b.recv(4096)),
        "wire (send_message/recv_message)": lambda: (
            send_message(wire_a, msg, max_record=65536),
            recv_message(wire_b, max_record=65536),
        ),
        "channel send + try_recv": lambda: (ch_a.send(msg), ch_b.try_recv()),
        "port send + try_recv": lambda: (sender.send(msg), port.try_recv()),
        "port send + recv": lambda: (sender.send(msg), port.recv()),
    }
    out = {}
    for name, step in steps.items():
        out[name] = statistics.median(_timed(count, step) for _ in range(5)) * 1e6
    for h in (raw_a, raw_b, wire_a, wire_b, port, sender, ch_a, ch_b):
        h.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000, help="round trips per run")
    parser.add_argument("--runs", type=int, default=7, help="runs per variant (median kept)")
    parser.add_argument("--placement", choices=[*PLACEMENTS, "all"], default="all")
    args = parser.parse_args()
    placements = list(PLACEMENTS) if args.placement == "all" else [args.placement]
    if len(os.sched_getaffinity(0)) < 2:
        placements = [p for p in placements if p != "split"]
    print("CPU per message, one process (us):")
    for name, us in cpu_costs(args.rounds).items():
        print(f"  {name:<42}{us:7.2f}")
    print(f"\n32 B round trips between two processes, {args.rounds} per run, "
          f"median of {args.runs} runs (us), and ratio to raw:")
    shown = [v for v in VARIANTS if v != "pyzmq" or _has_pyzmq()]
    if "pyzmq" not in shown:
        print("(pyzmq is not installed: its column is left out)")
    print(f"{'placement':<10}" + "".join(f"{v:>14}" for v in shown))
    for placement in placements:
        m = measure(placement, args.rounds, args.runs)
        cells = [f"{m['raw'] * 1e6:>14.2f}"] + [
            f"{m[v] * 1e6:>7.2f} x{m[v] / m['raw']:<5.2f}" for v in shown[1:]
        ]
        print(f"{placement:<10}" + "".join(cells))
        print(f"{'':<10}channel : floor = {m['channel'] / m['floor']:.2f}, "
              f"ports : floor = {m['ports'] / m['floor']:.2f} (what our Python adds to "
              f"the syscalls; goal: ratio to raw <= 1.25)")


if __name__ == "__main__":
    main()
