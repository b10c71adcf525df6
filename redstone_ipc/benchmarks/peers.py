"""Other IPC libraries, measured in the same run for comparison.

Each peer is optional (``pip install 'redstone-ipc[bench]'`` installs them
all): :func:`check` tries each one in a throwaway process, and a peer that
cannot be imported or started is skipped, with a line saying why. The
standard library's ``multiprocessing`` is always there.

Each adapter does what that library's documentation shows for the job, in
its fastest blocking form, with the payload as ``bytes`` on both sides:

* ``multiprocessing Pipe``: ``send_bytes`` / ``recv_bytes`` on a duplex Pipe;
* ``multiprocessing Queue``: one Queue per direction, ``put`` / ``get``;
* ``pyzmq``: a PAIR socket per side over ``ipc://`` (round trips), PUSH to
  PULL (one way; large messages are sent and received without copies, as
  pyzmq does by default above 64 KiB and with ``copy=False``). A side
  connects once the other is bound, and the sender closes once the
  receiver has everything (see ``_zmq_stream``);
* ``posix_ipc MessageQueue``: one queue per direction, ``send`` / ``receive``;
* ``faster-fifo Queue``: one queue per direction, ``put`` / ``get``;
* ``iceoryx2``: a publish-subscribe service per direction (a ``u8`` slice,
  loaned, written, sent). *blocking*: the sender also notifies an event
  service, and the receiver waits on its listener when nothing is there;
  *busy-poll*: the receiver polls ``receive()`` and calls ``sched_yield``
  between polls (on one CPU, a poller that never yields holds the CPU its
  peer needs for a whole time slice).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from typing import Any, Callable

from .harness import Loop, Placement, ping_pong, stream

__all__ = ["PEERS", "check", "ROUNDTRIP", "THROUGHPUT"]

PAYLOAD_RT = b"x" * 32

PEERS: dict[str, str] = {
    "multiprocessing": "multiprocessing",
    "pyzmq": "zmq",
    "posix_ipc": "posix_ipc",
    "faster-fifo": "faster_fifo",
    "iceoryx2": "iceoryx2",
}
"""Peer package (as pip names it) -> module to import."""


def _probe(package: str) -> None:
    """Import the peer and make its smallest object (runs in a throwaway process)."""
    if package == "multiprocessing":
        import multiprocessing

        a, b = multiprocessing.Pipe()
        a.close()
        b.close()
    elif package == "pyzmq":
        import zmq

        ctx = zmq.Context()
        ctx.socket(zmq.PAIR).close(linger=0)
        ctx.term()
    elif package == "posix_ipc":
        import posix_ipc

        q = posix_ipc.MessageQueue(f"/redstone-bench-probe-{os.getpid()}", posix_ipc.O_CREX)
        q.close()
        q.unlink()
    elif package == "faster-fifo":
        import faster_fifo

        faster_fifo.Queue(1 << 16).close()
    elif package == "iceoryx2":
        iox2 = _iceoryx2()
        _iox_node(iox2)  # made and dropped: the ipc service works here
    else:
        import importlib

        importlib.import_module(PEERS.get(package, package))


def check(timeout: float = 30.0) -> dict[str, str | None]:
    """For each peer: None if it works here, else why not (one line)."""
    from .harness import MeasurementFailed, run_isolated

    found: dict[str, str | None] = {}
    for package, module in PEERS.items():
        try:
            run_isolated(lambda: _probe(package), timeout)
            found[package] = None
        except MeasurementFailed as exc:
            text = str(exc)
            if text.startswith("ModuleNotFoundError"):
                text = (f"not installed (pip install {package!r}, or the "
                        f"'redstone-ipc[bench]' extra, installs it)")
            found[package] = text
    return found


# -- round trips: (peer package, variant name, function(warm, n, placement)) ----------


def _mp_pipe(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    import multiprocessing

    a, b = multiprocessing.Pipe()

    def server() -> tuple[Loop, None]:
        a.close()
        recv, send = b.recv_bytes, b.send_bytes

        def loop(k: int) -> None:
            for _ in range(k):
                send(recv())

        return loop, None

    def client() -> tuple[Loop, Callable[[], None]]:
        b.close()
        recv, send = a.recv_bytes, a.send_bytes

        def loop(k: int) -> None:
            for _ in range(k):
                send(PAYLOAD_RT)
                recv()

        return loop, a.close

    return ping_pong(server, client, warm, n, pl)


def _mp_queue(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    there, back = ctx.Queue(), ctx.Queue()

    def server() -> tuple[Loop, Callable[[], None]]:
        get, put = there.get, back.put

        def loop(k: int) -> None:
            for _ in range(k):
                put(get())

        def close() -> None:  # the feeder thread must write the last reply out
            back.close()
            back.join_thread()

        return loop, close

    def client() -> tuple[Loop, Callable[[], None]]:
        get, put = back.get, there.put

        def loop(k: int) -> None:
            for _ in range(k):
                put(PAYLOAD_RT)
                get()

        def close() -> None:
            for q in (there, back):
                q.close()
                q.join_thread()

        return loop, close

    return ping_pong(server, client, warm, n, pl)


def _zmq_pair(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    import zmq

    bound_r, bound_w = os.pipe()  # connect only once the other side is bound (see _zmq_stream)
    with tempfile.TemporaryDirectory(prefix="redstone-bench-") as tmp:
        address = f"ipc://{tmp}/pair"

        def side(bind: bool) -> tuple[Any, Callable[[], None]]:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PAIR)
            if bind:
                sock.bind(address)
                os.write(bound_w, b"b")
            else:
                os.read(bound_r, 1)
                sock.connect(address)

            def close() -> None:
                sock.close(linger=0)
                ctx.term()

            return sock, close

        def server() -> tuple[Loop, Callable[[], None]]:
            sock, close = side(False)
            recv, send = sock.recv, sock.send

            def loop(k: int) -> None:
                for _ in range(k):
                    send(recv())

            return loop, close

        def client() -> tuple[Loop, Callable[[], None]]:
            sock, close = side(True)
            recv, send = sock.recv, sock.send

            def loop(k: int) -> None:
                for _ in range(k):
                    send(PAYLOAD_RT)
                    recv()

            return loop, close

        try:
            return ping_pong(server, client, warm, n, pl)
        finally:
            os.close(bound_r)
            os.close(bound_w)


def _posix_mq(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    import posix_ipc

    base = f"/redstone-bench-{os.getpid()}"
    there = posix_ipc.MessageQueue(base + "-there", posix_ipc.O_CREX, max_message_size=256)
    back = posix_ipc.MessageQueue(base + "-back", posix_ipc.O_CREX, max_message_size=256)

    def server() -> tuple[Loop, None]:
        receive, send = there.receive, back.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(receive()[0])

        return loop, None

    def client() -> tuple[Loop, Callable[[], None]]:
        receive, send = back.receive, there.send

        def loop(k: int) -> None:
            for _ in range(k):
                send(PAYLOAD_RT)
                receive()

        def close() -> None:
            for q in (there, back):
                q.close()
                q.unlink()

        return loop, close

    return ping_pong(server, client, warm, n, pl)


def _faster_fifo(warm: int, n: int, pl: Placement) -> tuple[float, float]:
    import faster_fifo

    there, back = faster_fifo.Queue(1 << 20), faster_fifo.Queue(1 << 20)

    def server() -> tuple[Loop, None]:
        get, put = there.get, back.put

        def loop(k: int) -> None:
            for _ in range(k):
                put(get(timeout=60.0))

        return loop, None

    def client() -> tuple[Loop, Callable[[], None]]:
        get, put = back.get, there.put

        def loop(k: int) -> None:
            for _ in range(k):
                put(PAYLOAD_RT)
                get(timeout=60.0)

        def close() -> None:
            there.close()
            back.close()

        return loop, close

    return ping_pong(server, client, warm, n, pl)


def _iceoryx2() -> Any:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    return iox2


def _iox_node(iox2: Any) -> Any:
    builder = iox2.NodeBuilder.new().signal_handling_mode(iox2.SignalHandlingMode.Disabled)
    return builder.create(iox2.ServiceType.Ipc)


class _IoxSide:
    """One side of an iceoryx2 round trip: a subscriber on ``me``, a publisher
    to ``other``, and (blocking) a listener and a notifier on their events."""

    def __init__(self, base: str, me: str, other: str, blocking: bool) -> None:
        iox2 = _iceoryx2()
        self.node = node = _iox_node(iox2)
        slice_t = iox2.Slice[ctypes.c_uint8]

        def pubsub(name: str) -> Any:
            builder = node.service_builder(iox2.ServiceName.new(name))
            return builder.publish_subscribe(slice_t).open_or_create()

        def event(name: str) -> Any:
            return node.service_builder(iox2.ServiceName.new(name)).event().open_or_create()

        self.services = [pubsub(f"{base}/{me}"), pubsub(f"{base}/{other}")]
        self.sub = self.services[0].subscriber_builder().create()
        self.pub = self.services[1].publisher_builder().initial_max_slice_len(64).create()
        self.ports: list[Any] = [self.sub, self.pub]
        self.listener = self.notifier = None
        if blocking:
            self.services += [event(f"{base}/{me}/ev"), event(f"{base}/{other}/ev")]
            self.listener = self.services[2].listener_builder().create()
            self.notifier = self.services[3].notifier_builder().create()
            self.ports += [self.listener, self.notifier]

    def make_send(self) -> Callable[[bytes], None]:
        loan, memmove, notifier = self.pub.loan_slice_uninit, ctypes.memmove, self.notifier

        def send(data: bytes) -> None:
            sample = loan(len(data))
            memmove(sample.payload_ptr, data, len(data))
            sample.assume_init().send()
            if notifier is not None:
                notifier.notify()

        return send

    def make_recv(self) -> Callable[[], bytes]:
        receive, string_at = self.sub.receive, ctypes.string_at
        if self.listener is not None:
            wait = self.listener.blocking_wait
        else:
            wait = os.sched_yield

        def recv() -> bytes:
            while True:
                sample = receive()
                if sample is not None:
                    return string_at(sample.payload_ptr, sample.header.number_of_elements)
                wait()

        return recv

    def close(self) -> None:
        for port in reversed(self.ports):
            port.delete()
        self.ports.clear()
        self.services.clear()
        self.sub = self.pub = self.listener = self.notifier = None
        self.node = None


def _iceoryx(blocking: bool) -> Callable[[int, int, Placement], tuple[float, float]]:
    def run(warm: int, n: int, pl: Placement) -> tuple[float, float]:
        base = f"redstone-bench/{os.getpid()}/{'b' if blocking else 'p'}"
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()

        def server() -> tuple[Loop, Callable[[], None]]:
            os.close(ready_r)
            os.close(go_w)
            me = _IoxSide(base, "b", "a", blocking)
            os.write(ready_w, b"r")
            os.read(go_r, 1)  # the client's subscriber exists too
            recv, send = me.make_recv(), me.make_send()

            def loop(k: int) -> None:
                for _ in range(k):
                    send(recv())

            return loop, me.close

        def client() -> tuple[Loop, Callable[[], None]]:
            os.close(ready_w)
            os.close(go_r)
            me = _IoxSide(base, "a", "b", blocking)
            os.read(ready_r, 1)
            os.write(go_w, b"g")
            recv, send = me.make_recv(), me.make_send()

            def loop(k: int) -> None:
                for _ in range(k):
                    send(PAYLOAD_RT)
                    recv()

            return loop, me.close

        try:
            return ping_pong(server, client, warm, n, pl)
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    return run


ROUNDTRIP: list[tuple[str, str, Callable[[int, int, Placement], tuple[float, float]]]] = [
    ("multiprocessing", "multiprocessing Pipe", _mp_pipe),
    ("multiprocessing", "multiprocessing Queue", _mp_queue),
    ("pyzmq", "pyzmq PAIR (ipc://)", _zmq_pair),
    ("posix_ipc", "posix_ipc MessageQueue", _posix_mq),
    ("faster-fifo", "faster-fifo Queue", _faster_fifo),
    ("iceoryx2", "iceoryx2 (blocking)", _iceoryx(True)),
    ("iceoryx2", "iceoryx2 (busy-poll)", _iceoryx(False)),
]


# -- one-way throughput -----------------------------------------------------------------


def _zmq_stream(size: int, warm: int, n: int, pl: Placement) -> float:
    import zmq

    payload = b"p" * size
    copy = size < 65536
    # The sender connects only once the receiver is bound, and closes its socket
    # only once the receiver has every message: with libzmq 4.3.5, closing a
    # socket that still has messages queued (LINGER -1) sometimes leaves the
    # last few hundred undelivered for good, in about one run in ten.
    bound_r, bound_w = os.pipe()
    done_r, done_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="redstone-bench-") as tmp:
        address = f"ipc://{tmp}/push"

        def sender() -> tuple[Loop, Callable[[], None]]:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PUSH)
            os.read(bound_r, 1)
            sock.connect(address)
            send = sock.send

            def loop(k: int) -> None:
                for _ in range(k):
                    send(payload)

            def close() -> None:
                os.read(done_r, 1)
                sock.close()
                ctx.term()

            return loop, close

        def receiver() -> tuple[Loop, Callable[[], None]]:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PULL)
            sock.bind(address)
            os.write(bound_w, b"b")
            recv = sock.recv
            left = [warm + n]

            def loop(k: int) -> None:
                for _ in range(k):
                    recv(copy=copy)
                left[0] -= k
                if left[0] == 0:
                    os.write(done_w, b"d")  # the sender may close now

            def close() -> None:
                sock.close(linger=0)
                ctx.term()

            return loop, close

        try:
            return stream(sender, receiver, warm, n, pl)
        finally:
            for fd in (bound_r, bound_w, done_r, done_w):
                os.close(fd)


THROUGHPUT: list[tuple[str, str, Callable[[int, int, int, Placement], float]]] = [
    ("pyzmq", "pyzmq PUSH/PULL (ipc://)", _zmq_stream),
]
