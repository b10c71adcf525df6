"""Many connected senders: does an idle connection cost anything per message?

A server process receives on one Port. Idle sender processes connect to it
(each sends one message, then stays connected and sends nothing), in steps
up to the largest count (1000 by default). At each step one more process,
the active client, measures against the server:

* round trips: it sends 32 bytes on the port, the server replies on a
  channel; the server times them;
* one way: it sends 32-byte messages as fast as it can; the server times
  the receiving.

The ratio compares each step with the same run's step with no idle sender:
1.0 means the idle connections cost nothing per message.

It also counts the file descriptors a connection costs: in a sending
process (around its first send) and in the receiving process (per idle
sender, from the counts before and after connecting them).
"""

from __future__ import annotations

import os
import resource
import struct
import time
from typing import Any

from .harness import Peer, Placement, pin
from .model import BASELINE, INFO, OURS, Figure, Job, Found, Settings

__all__ = ["plan"]

PAYLOAD = b"c" * 32
BATCH = 50
"""Idle senders are started and connected this many at a time: hundreds of
processes connecting to one port at once take far longer than the same
number in small batches (a cost of connecting, not of what is measured)."""
_COUNT = struct.Struct("<I")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the listing's own fd


def _level_name(n: int) -> str:
    return f"{n} idle senders" if n != 1 else "1 idle sender"


def _spawner(to_port: Any, port: Any, cmd_r: int, ack_w: int, hold_r: int) -> None:
    """Forks idle senders on request: reads a count, forks that many (each
    sends one message and then waits for the end of ``hold_r``), answers
    with the count. Ends when ``cmd_r`` closes, after reaping them all."""
    port.release()  # the server receives; nobody here does
    msg_type = 2
    children = []
    while True:
        data = os.read(cmd_r, _COUNT.size)
        if not data:
            break
        (count,) = _COUNT.unpack(data)
        from ..message import Message

        for _ in range(count):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - an idle sender
                code = 1
                try:
                    os.close(cmd_r)
                    os.close(ack_w)
                    to_port.send(Message(msg_type))
                    os.read(hold_r, 1)  # idle until the server is done
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
        os.write(ack_w, _COUNT.pack(count))
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += status != 0
    if failed:
        raise RuntimeError(f"{failed} idle sender processes failed")


def _client(to_port: Any, port: Any, mine: Any, theirs: Any, warm: int, rounds: int,
            messages: int) -> int:
    """The active client: round trips, then a one-way stream. Returns the fds
    its connection to the port took."""
    from ..message import Message

    port.release()
    theirs.close()
    msg = Message(1, PAYLOAD)
    before = _fd_count()
    to_port.send(msg)  # connects
    fds = _fd_count() - before
    mine.recv()
    send, recv = to_port.send, mine.recv
    for _ in range(warm + rounds):
        send(msg)
        recv()
    for _ in range(warm + messages):
        send(msg)
    return fds


def _run(levels: tuple[int, ...], warm: int, rounds: int, messages: int,
         pl: Placement) -> Found:
    from ..message import Message
    from ..port import SEND_RIGHTS, Port

    pin(pl.home)
    need = max(levels) * 4 + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    port = Port()
    to_port = port.duplicate(SEND_RIGHTS)
    port.send(Message(0))  # the receive side starts here, before any fork
    port.recv()
    cmd_r, cmd_w = os.pipe()
    ack_r, ack_w = os.pipe()
    hold_r, hold_w = os.pipe()

    def spawner() -> None:
        os.close(cmd_w)
        os.close(ack_r)
        os.close(hold_w)
        _spawner(to_port, port, cmd_r, ack_w, hold_r)

    out: Found = []
    spawned = 0
    recv = port.recv
    with Peer(spawner, pl.away) as spawn:
        for fd in (cmd_r, ack_w, hold_r):
            os.close(fd)
        fds_before = _fd_count()
        try:
            for i, level in enumerate(levels):
                try:
                    while spawned < level:  # in batches: see BATCH
                        count = min(BATCH, level - spawned)
                        os.write(cmd_w, _COUNT.pack(count))
                        if len(os.read(ack_r, _COUNT.size)) != _COUNT.size:
                            raise RuntimeError("the process starting idle senders failed")
                        for _ in range(count):
                            recv(60.0)  # each idle sender's one message: it is connected
                        spawned += count
                    if level:
                        out.append(("senders-fds", "receiving process, per sender",
                                    (_fd_count() - fds_before) / spawned))
                    out += _measure(level, port, to_port, warm, rounds, messages, pl)
                except Exception as exc:  # keep the levels measured; say why the rest failed
                    why = f"with {level} idle senders: {exc}"
                    for later in levels[i:]:
                        out += [("senders-roundtrip", _level_name(later), why),
                                ("senders-throughput", _level_name(later), why)]
                    break
        finally:
            os.close(cmd_w)
            os.close(hold_w)  # the idle senders leave
            os.close(ack_r)
        spawn.join(120.0)
    to_port.close()
    port.close()
    return out


def _measure(level: int, port: Any, to_port: Any, warm: int, rounds: int, messages: int,
             pl: Placement) -> Found:
    from ..channel import Channel

    mine, theirs = Channel.create_pair()
    recv, reply = port.recv, theirs.send
    name = _level_name(level)
    with Peer(lambda: _client(to_port, port, mine, theirs, warm, rounds, messages), pl.away) as client:
        mine.close()
        with client.blamed():
            reply(recv(60.0))
            for _ in range(warm):
                reply(recv())
            t0 = time.perf_counter()
            for _ in range(rounds):
                reply(recv())
            rt = (time.perf_counter() - t0) / rounds
            for _ in range(warm):
                recv()
            t0 = time.perf_counter()
            for _ in range(messages):
                recv()
            rate = messages / (time.perf_counter() - t0)
        fds = client.join(60.0)
    theirs.close()
    return [("senders-roundtrip", name, rt * 1e6), ("senders-throughput", name, rate),
            ("senders-fds", "sending process, per connection", float(fds))]


def plan(settings: Settings, placements: list[Placement],
         available: dict[str, str | None]) -> tuple[list[Figure], list[Job]]:
    levels = settings.sender_levels
    top = max(levels)
    names = tuple(p.name for p in placements)
    rt = Figure(
        "senders-roundtrip", f"Round trips on a Port with up to {top} idle senders connected",
        "µs", "lower", _level_name(0),
        "Time for a 32-byte request on a port and its reply, while that many other "
        "processes are connected to the port and send nothing; lower is better. The "
        "ratio compares with no idle sender in the same run: 1.0 means idle "
        "connections cost nothing per message.",
        names)
    tp = Figure(
        "senders-throughput", f"One-way messages into a Port with up to {top} idle senders connected",
        "msg/s", "higher", _level_name(0),
        "Messages per second from one sending process into the port while that many "
        "other processes are connected and idle; higher is better. The ratio compares "
        "with no idle sender in the same run.",
        names)
    fds = Figure(
        "senders-fds", "File descriptors per connected sender", "fds", "lower", None,
        "How many file descriptors a connection to a port takes: in the sending "
        "process (counted around its first send) and in the receiving process (per "
        "idle sender). Several senders in one process share one connection.",
        names)
    for level in levels:
        kind = BASELINE if level == 0 else OURS
        rt.variant(_level_name(level), kind)
        tp.variant(_level_name(level), kind)
    fds.variant("sending process, per connection", INFO)
    fds.variant("receiving process, per sender", INFO)
    warm = max(100, settings.sender_rounds // 10)
    jobs = []
    produces = [(f.id, v) for f in (rt, tp) for v in f.variants] + [(fds.id, v) for v in fds.variants]
    for r in range(settings.sender_runs):
        for pl in placements:
            jobs.append(Job(
                f"{top} idle senders, {pl.title}", pl, r,
                _job(levels, warm, settings.sender_rounds, settings.sender_messages, pl),
                produces, 120.0 + top * 0.3))
    return [rt, tp, fds], jobs


def _job(levels: tuple[int, ...], warm: int, rounds: int, messages: int,
         pl: Placement) -> Any:
    return lambda: _run(levels, warm, rounds, messages, pl)
