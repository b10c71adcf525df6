"""Reliability under faults: every waiter wakes, no right leaks, no loop spins.

The cases of issue 8, written against the public API and observable
behaviour only (fds that arrive, CPU time used, exceptions), so that they
judge whatever data path Ports and Channels use underneath.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import threading
import time

import pytest

from _proc import blocked_syscall
from conftest import fork_child, open_fds, wait_child
from redstone_ipc import (
    Channel,
    Message,
    PeerClosed,
    Port,
    PortClosed,
    Rights,
    SharedMemory,
)
from redstone_ipc.port import SEND_RIGHTS

pytestmark = pytest.mark.timeout(60)


# -- helpers ---------------------------------------------------------------------


def _blocked(tid: int) -> bool:
    fields = blocked_syscall(os.getpid(), tid)
    return bool(fields) and fields[0].isdigit()


def wait_all_blocked(threads: list[threading.Thread], settle: float = 0.05) -> None:
    """Return once every thread has been blocked in a system call for ``settle``
    seconds at once: they are all inside their blocking call, whatever it sleeps
    on (a thread waiting for the GIL holds that state only for an instant)."""
    deadline = time.monotonic() + 10
    since = None
    while True:
        assert time.monotonic() < deadline, "the threads never all went to sleep"
        if all(_blocked(t.native_id) for t in threads):  # type: ignore[arg-type]
            since = since or time.monotonic()
            if time.monotonic() - since >= settle:
                return
        else:
            since = None
        time.sleep(0.002)


def run_threads(count: int, body) -> tuple[list[threading.Thread], list[object]]:
    """Start ``count`` threads running ``body``; each appends what it raised (or None)."""
    results: list[object] = []

    def runner() -> None:
        try:
            body()
        except BaseException as e:  # noqa: B036 - the test inspects it
            results.append(e)
        else:
            results.append(None)

    threads = [threading.Thread(target=runner, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, results


def join_all(threads: list[threading.Thread], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    assert not stuck, f"{stuck} of {len(threads)} waiters never woke"


# -- 1. every waiter wakes when the peer dies or closes ------------------------------


@pytest.mark.parametrize("waiters", [3, 6])
def test_every_receiving_thread_wakes_when_the_peer_process_is_killed(no_fd_leak, waiters):
    a, b = Channel.create_pair()

    def peer() -> None:
        a.close()
        signal.pause()

    pid = fork_child(peer)
    b.close()
    threads, results = run_threads(waiters, lambda: a.recv(timeout=None))
    wait_all_blocked(threads)
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    join_all(threads)
    assert len(results) == waiters and all(isinstance(r, PeerClosed) for r in results)
    with pytest.raises(PeerClosed):  # and a later one too
        a.recv(timeout=None)
    a.close()


def test_every_call_wakes_when_the_server_is_killed(no_fd_leak):
    a, b = Channel.create_pair(capacity=16)

    def server() -> None:
        a.close()
        b.recv()  # take one request, then never answer
        signal.pause()

    pid = fork_child(server)
    b.close()
    threads, results = run_threads(8, lambda: a.call(Message(1, b"q"), timeout=None))
    wait_all_blocked(threads)
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    join_all(threads)
    assert len(results) == 8 and all(isinstance(r, PeerClosed) for r in results)
    a.close()


def test_every_receiving_thread_wakes_when_the_peer_is_closed_in_this_process(no_fd_leak):
    a, b = Channel.create_pair()
    threads, results = run_threads(20, lambda: a.recv(timeout=None))
    wait_all_blocked(threads)
    b.close()
    join_all(threads)
    assert len(results) == 20 and all(isinstance(r, PeerClosed) for r in results)
    a.close()


def test_every_sending_thread_wakes_when_the_port_is_closed(no_fd_leak):
    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    client.send(Message(1))
    threads, results = run_threads(5, lambda: client.send(Message(2), timeout=None))
    wait_all_blocked(threads)
    port.close()
    join_all(threads)
    assert len(results) == 5 and all(isinstance(r, PortClosed) for r in results)
    client.close()


# -- 2. a right that was not granted is never usable, through any fd ---------------------


SECRET = os.urandom(24)


def _files() -> dict[int, tuple[int, int]]:
    """This process's fds and the files they open, as (st_dev, st_ino)."""
    files = {}
    for fd in open_fds():
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed meanwhile (e.g. the listing's own fd)
        files[fd] = (st.st_dev, st.st_ino)
    return files


def _arrived_fds_reveal(before: set[tuple[int, int]], secret: bytes) -> list[str]:
    """Try every fd to a file that was not open ``before`` for a way to read
    ``secret`` (or any fd) that was queued for the receive right: sockets are
    read raw, memory is mapped and searched. Returns what leaked. (Files, not
    fd numbers: numbers are reused as soon as they are closed.)"""
    import mmap

    leaks = []
    for fd, identity in sorted(_files().items()):
        if identity in before:
            continue
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=os.dup(fd))
            try:
                while True:
                    try:
                        data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4),
                                                       socket.MSG_DONTWAIT)
                    except (BlockingIOError, OSError):
                        break
                    if not data and not anc:
                        break
                    if secret in data:
                        leaks.append(f"fd {fd}: the socket gave the queued payload")
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            leaks.append(f"fd {fd}: the socket gave fds queued for the receiver")
                            for i in range(0, len(raw) - len(raw) % 4, 4):
                                os.close(int.from_bytes(raw[i:i + 4], "little"))
            finally:
                sock.close()
        elif stat.S_ISREG(mode):
            size = os.fstat(fd).st_size
            if size:
                try:
                    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                        if m.find(secret) >= 0:
                            leaks.append(f"fd {fd}: shared memory holds the queued payload")
                except OSError:
                    pass
    return leaks


def _check_send_only_in_a_fresh_process(a, send_only, *, in_message: bool) -> None:
    """Hand ``send_only`` to a spawned interpreter (nothing inherited), in a
    Message or pickled, and have it try every fd it got."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out_r, out_w = ctx.Pipe(duplex=False)
    if in_message:
        carrier = Port()
        to_carrier = carrier.duplicate(SEND_RIGHTS)
        child = ctx.Process(target=_spawned_receives_it, args=(carrier, out_w, SECRET))
        child.start()
        carrier.release()  # the child receives on it now
        msg = Message(2)
        msg.attach_handle(send_only)
        to_carrier.send(msg)
        assert not send_only.valid
        to_carrier.close()
    else:
        child = ctx.Process(target=_spawned_got_it, args=(send_only, out_w, SECRET))
        child.start()
        send_only.close()
    out_w.close()
    verdict = out_r.recv() if out_r.poll(30) else "no answer"
    child.join(10)
    child.close()
    out_r.close()
    assert verdict == [], verdict
    assert a.recv(timeout=10).msg_type == 9, "the send right still works"


def _spawned_receives_it(carrier, out, secret) -> None:  # a fresh interpreter
    before = set(_files().values())
    (ep,) = carrier.recv(timeout=10).handles
    assert ep.rights == Rights.SEND | Rights.TRANSFER | Rights.WAIT
    out.send(_arrived_fds_reveal(before, secret))
    ep.send(Message(9))


def _spawned_got_it(ep, out, secret) -> None:  # a fresh interpreter
    # All it holds but stdio and the answer pipe came with the handle (or
    # is multiprocessing's own, which holds nothing of ours).
    files = _files()
    out.send(_arrived_fds_reveal({files[fd] for fd in (0, 1, 2, out.fileno())}, secret))
    ep.send(Message(9))


@pytest.mark.parametrize("route", ["message", "pickle"])
def test_a_send_only_endpoint_in_another_process_cannot_read_what_was_queued(
    spawn_ready, no_fd_leak, route
):
    a, b = Channel.create_pair()
    shm = SharedMemory.create(4096)
    for payload in (SECRET, SECRET + b"2"):
        msg = Message(1, payload)
        msg.attach_handle(shm.duplicate())
        a.send(msg)
    shm.close()
    send_only = b.replace(Rights.SEND | Rights.TRANSFER | Rights.WAIT)
    _check_send_only_in_a_fresh_process(a, send_only, in_message=route == "message")
    a.close()


# -- 3. an event loop never spins ------------------------------------------------------


@pytest.mark.parametrize("how", ["released", "moved"])
def test_send_async_waiting_for_room_sleeps_after_the_receive_right_left(spawn_ready, no_fd_leak, how):
    import multiprocessing

    port = Port(capacity=1)
    client = port.duplicate(SEND_RIGHTS)
    child = None
    if how == "released":
        # A copy of the RECEIVE handle goes to a fresh interpreter, which takes
        # over receiving once this process has released its own.
        ctx = multiprocessing.get_context("spawn")
        ready_r, ready_w = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_receive_then_idle, args=(port, ready_w))
        child.start()
        ready_w.close()
        port.release()
        client.send(Message(0, b"hello"), timeout=20)
        assert ready_r.recv() == "received"  # it owns the receive side now
        ready_r.close()
    else:
        to_child, in_child = Channel.create_pair()

        def receiver() -> None:
            client.close()
            to_child.close()
            port.release()  # inherited copy: the receive side stays with the parent
            (mine,) = in_child.recv(timeout=10).handles
            signal.pause()

        pid = fork_child(receiver)
        in_child.close()
        msg = Message(1)
        msg.attach_handle(port)
        to_child.send(msg)
        to_child.close()
    client.send(Message(1))  # the port is full now

    async def main() -> tuple[int, float, object]:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        cpu = time.process_time()
        try:
            await asyncio.wait_for(client.send_async(Message(2), timeout=None), 0.5)
            outcome: object = "sent"
        except asyncio.TimeoutError as e:
            outcome = e
        cpu = time.process_time() - cpu
        stop = True
        await task
        return ticks, cpu, outcome

    ticks, cpu, outcome = asyncio.run(main())
    assert isinstance(outcome, asyncio.TimeoutError), outcome
    assert ticks >= 15, f"the other task ran {ticks} times in 0.5 s: the loop was blocked"
    assert cpu < 0.25, f"waiting used {cpu:.2f} s of CPU in 0.5 s"
    if child is not None:
        child.kill()
        child.join(10)
        child.close()
    else:
        os.kill(pid, signal.SIGKILL)
        wait_child(pid)
    client.close()


def _receive_then_idle(port: Port, ready) -> None:  # a fresh interpreter
    deadline = time.monotonic() + 20
    while True:  # the parent lets go of the receive side soon
        try:
            port.recv(timeout=1)
            break
        except Exception:  # noqa: BLE001 - InvalidHandle until it has let go
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    ready.send("received")
    time.sleep(60)
