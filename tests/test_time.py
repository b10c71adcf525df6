"""One rule for time, checked on every blocking call of the public API.

The rule (``redstone_ipc/core/timeout.py``, README "Time"): every call that
can wait takes ``timeout=None`` (wait for ever; the default in the sync and
the async form alike) or seconds; ``0`` or less only tries; infinity is
None; NaN is a ValueError and a non-number a TypeError. When the time runs
out, ``0`` included, the call raises a TimeoutError whose class also says
what did not happen; the calls whose ``threading`` twin returns a bool
return False.

Each case below builds a real blocked situation (an empty port, a full
channel, a full pipe, a held lock, an unpublished name...) and the tests run
the call with every kind of timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import redstone_ipc
from redstone_ipc import (
    Channel,
    Condition,
    ConnectTimedOut,
    Empty,
    Event,
    Futex,
    Message,
    Mutex,
    NameNotFound,
    Pipe,
    Port,
    QueueFull,
    ReceiveTimedOut,
    Rights,
    Semaphore,
    SendTimedOut,
    SharedMemory,
    TimedOut,
    WaitQueue,
    connect,
    connect_async,
)
from redstone_ipc.core.timeout import FOREVER, seconds

pytestmark = pytest.mark.timeout(60)

Call = Callable[[Any], Any]  # the blocking call, given a timeout


def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in another thread (a Mutex is not reentrant: the waiter must
    be another thread than the holder); its result, or its exception."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box.append(("err", e))

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert box, "the call did not return"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


# -- the blocked situations -------------------------------------------------------
#
# Each is a context manager yielding the blocking call; what it raises (or
# returns) when the time runs out is in CASES.


@contextlib.contextmanager
def empty_port(use_async: bool) -> Iterator[Call]:
    with Port() as port:
        if use_async:
            yield lambda t: asyncio.run(port.recv_async(timeout=t))
        else:
            yield lambda t: port.recv(timeout=t)


@contextlib.contextmanager
def full_port(use_async: bool) -> Iterator[Call]:
    with Port(capacity=1) as port, port.duplicate(Rights.SEND) as sender:
        sender.send(Message(1))
        if use_async:
            yield lambda t: asyncio.run(sender.send_async(Message(2), timeout=t))
        else:
            yield lambda t: sender.send(Message(2), timeout=t)


@contextlib.contextmanager
def quiet_channel(use_async: bool) -> Iterator[Call]:
    a, b = Channel.create_pair()
    with a, b:
        if use_async:
            yield lambda t: asyncio.run(a.recv_async(timeout=t))
        else:
            yield lambda t: a.recv(timeout=t)


@contextlib.contextmanager
def full_channel(how: str) -> Iterator[Call]:
    a, b = Channel.create_pair(capacity=1)
    with a, b:
        a.send(Message(1))
        request = Message(2)
        request.txid = 7
        calls: dict[str, Call] = {
            "send": lambda t: a.send(Message(2), timeout=t),
            "send_async": lambda t: asyncio.run(a.send_async(Message(2), timeout=t)),
            "reply": lambda t: a.reply(request, Message(3), timeout=t),
            "reply_async": lambda t: asyncio.run(a.reply_async(request, Message(3), timeout=t)),
            "call": lambda t: a.call(Message(4), timeout=t),
            "call_async": lambda t: asyncio.run(a.call_async(Message(4), timeout=t)),
        }
        yield calls[how]


@contextlib.contextmanager
def unanswered_call(use_async: bool) -> Iterator[Call]:
    a, b = Channel.create_pair()  # b never answers
    with a, b:
        if use_async:
            yield lambda t: asyncio.run(a.call_async(Message(1), timeout=t))
        else:
            yield lambda t: a.call(Message(1), timeout=t)


@contextlib.contextmanager
def empty_pipe(how: str) -> Iterator[Call]:
    reader, writer = Pipe.create()
    sink_r, sink_w = socket.socketpair()
    with reader, writer, sink_r, sink_w:
        calls: dict[str, Call] = {
            "read": lambda t: reader.read(1, timeout=t),
            "readinto": lambda t: reader.readinto(bytearray(1), timeout=t),
            "read_async": lambda t: asyncio.run(reader.read_async(1, timeout=t)),
            "splice_to": lambda t: reader.splice_to(sink_w, 1, timeout=t),
        }
        yield calls[how]


@contextlib.contextmanager
def full_pipe(how: str) -> Iterator[Call]:
    reader, writer = Pipe.create()
    source_r, source_w = socket.socketpair()
    with reader, writer, source_r, source_w:
        source_w.sendall(b"s" * 64)
        while True:  # fill it
            try:
                writer.write(b"f" * 4096, timeout=0)
            except TimedOut:
                break
        calls: dict[str, Call] = {
            "write": lambda t: writer.write(b"w", timeout=t),
            "write_async": lambda t: asyncio.run(writer.write_async(b"w", timeout=t)),
            "splice_from": lambda t: writer.splice_from(source_r, 64, timeout=t),
        }
        yield calls[how]


@contextlib.contextmanager
def unpublished_name(use_async: bool) -> Iterator[Call]:
    name = f"test-time/{os.getpid()}/nobody"
    if use_async:
        yield lambda t: asyncio.run(connect_async(name, timeout=t))
    else:
        yield lambda t: connect(name, timeout=t)


@contextlib.contextmanager
def shared_words(how: str) -> Iterator[Call]:
    shm = SharedMemory.create(4096)
    m = shm.map()
    objects: list[Any] = []
    try:
        if how == "Futex.wait":
            yield lambda t: Futex.wait(m, 0, 0, timeout=t)
        elif how == "FutexWord.wait":
            word = Futex.word(m, 0)
            objects.append(word)
            yield lambda t: word.wait(0, timeout=t)
        elif how == "WaitQueue.wait_until":
            wq = WaitQueue.create(m, 8)
            objects.append(wq)
            yield lambda t: wq.wait_until(lambda: False, timeout=t)
        elif how == "Mutex.acquire":
            lock = Mutex.create(m, 64)
            objects.append(lock)
            lock.acquire()
            try:
                yield lambda t: in_thread(lambda: lock.acquire(timeout=t))
            finally:
                lock.release()
        elif how == "Semaphore.acquire":
            sem = Semaphore.create(m, 16, 0)
            objects.append(sem)
            yield lambda t: sem.acquire(timeout=t)
        elif how == "Event.wait":
            event = Event.create(m, 24)
            objects.append(event)
            yield lambda t: event.wait(timeout=t)
        elif how == "Condition.wait":
            lock = Mutex.create(m, 128)
            cond = Condition.create(m, 32, lock)
            objects += [cond, lock]

            def wait(t: Any) -> bool:
                with cond:
                    return cond.wait(timeout=t)

            yield wait
        else:  # pragma: no cover
            raise AssertionError(how)
    finally:
        for obj in objects:
            obj.close()
        m.unmap()
        shm.close()


# (id, situation, expected: an exception class, or False for the bool-returning calls)
CASES: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Call]], Any]] = [
    ("Port.recv", lambda: empty_port(False), ReceiveTimedOut),
    ("Port.recv_async", lambda: empty_port(True), ReceiveTimedOut),
    ("Port.send", lambda: full_port(False), SendTimedOut),
    ("Port.send_async", lambda: full_port(True), SendTimedOut),
    ("ChannelEndpoint.recv", lambda: quiet_channel(False), ReceiveTimedOut),
    ("ChannelEndpoint.recv_async", lambda: quiet_channel(True), ReceiveTimedOut),
    *[(f"ChannelEndpoint.{how}(full)", lambda how=how: full_channel(how), SendTimedOut)
      for how in ("send", "send_async", "reply", "reply_async", "call", "call_async")],
    ("ChannelEndpoint.call(no reply)", lambda: unanswered_call(False), TimedOut),
    ("ChannelEndpoint.call_async(no reply)", lambda: unanswered_call(True), TimedOut),
    *[(f"PipeReader.{how}", lambda how=how: empty_pipe(how), TimedOut)
      for how in ("read", "readinto", "read_async", "splice_to")],
    *[(f"PipeWriter.{how}", lambda how=how: full_pipe(how), TimedOut)
      for how in ("write", "write_async", "splice_from")],
    ("connect", lambda: unpublished_name(False), ConnectTimedOut),
    ("connect_async", lambda: unpublished_name(True), ConnectTimedOut),
    *[(how, lambda how=how: shared_words(how), TimedOut)
      for how in ("Futex.wait", "FutexWord.wait", "WaitQueue.wait_until")],
    *[(how, lambda how=how: shared_words(how), False)
      for how in ("Mutex.acquire", "Semaphore.acquire", "Event.wait", "Condition.wait")],
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -1e-9, 0.05])
@pytest.mark.parametrize("name, situation, expected", CASES, ids=IDS)
def test_when_the_time_runs_out(no_fd_leak, name, situation, expected, timeout):
    with situation() as call:
        start = time.monotonic()
        if expected is False:
            assert call(timeout) is False
        else:
            with pytest.raises(expected) as caught:
                call(timeout)
            assert isinstance(caught.value, TimeoutError)
        elapsed = time.monotonic() - start
    assert elapsed < max(timeout, 0) + 5
    if timeout > 0:
        assert elapsed >= timeout * 0.9, "it did not wait its timeout"


@pytest.mark.parametrize("name, situation, expected", CASES, ids=IDS)
def test_nan_and_non_numbers_are_refused(name, situation, expected):
    with situation() as call:
        with pytest.raises(ValueError):
            call(math.nan)
        with pytest.raises(TypeError):
            call("1")


def test_the_exceptions_are_what_stdlib_code_catches():
    assert issubclass(ReceiveTimedOut, queue.Empty) and issubclass(ReceiveTimedOut, Empty)
    assert issubclass(SendTimedOut, queue.Full) and issubclass(SendTimedOut, QueueFull)
    assert issubclass(ConnectTimedOut, NameNotFound) and issubclass(ConnectTimedOut, FileNotFoundError)
    for cls in (ReceiveTimedOut, SendTimedOut, ConnectTimedOut):
        assert issubclass(cls, TimedOut) and issubclass(cls, TimeoutError)


def test_try_recv_is_the_one_plain_empty(no_fd_leak):
    with Port() as port:
        with pytest.raises(Empty) as caught:
            port.try_recv()
        assert not isinstance(caught.value, TimeoutError)


def test_infinity_waits_as_none_does(no_fd_leak):
    """math.inf is "no limit" (it used to overflow in some calls): a message
    sent later is received, a pipe read gets its bytes, a name published
    later is found."""
    name = f"test-time/{os.getpid()}/later"
    with Port() as port, port.duplicate(Rights.SEND) as sender:
        reader, writer = Pipe.create()
        shm = SharedMemory.create(4096)
        later = threading.Timer(0.1, lambda: (sender.send(Message(5)), writer.write(b"x")))
        later.start()
        assert port.recv(timeout=math.inf).msg_type == 5
        assert reader.read(1, timeout=math.inf) == b"x"
        assert asyncio.run(_recv_later(port, sender)) == 6
        pub = threading.Timer(0.1, lambda: publications.append(redstone_ipc.publish(name, shm)))
        publications: list[Any] = []
        pub.start()
        with connect(name, kind=SharedMemory, timeout=math.inf) as got:
            assert got.id == shm.id
        pub.join()
        later.join()
        for obj in (*publications, reader, writer, shm):
            obj.close()


async def _recv_later(port: Port, sender: Port) -> int:
    asyncio.get_running_loop().call_later(0.1, sender.send, Message(6))
    return (await port.recv_async(timeout=math.inf)).msg_type


def test_the_normalizer():
    assert seconds(None) is None
    assert seconds(math.inf) is None and seconds(FOREVER) is None
    assert seconds(-5) == 0.0 and seconds(0) == 0.0 and seconds(2) == 2.0
    assert seconds(True) == 1.0
    import fractions

    assert seconds(fractions.Fraction(1, 4)) == 0.25
    with pytest.raises(ValueError):
        seconds(math.nan)
    for bad in ("1", b"1", [1], object()):
        with pytest.raises(TypeError):
            seconds(bad)  # type: ignore[arg-type]


# -- the same keyword, the same default, in every sync and async form --------------


def _public_callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    for name in redstone_ipc.__all__:
        obj = getattr(redstone_ipc, name)
        if inspect.isclass(obj):
            for attr, member in inspect.getmembers(obj):
                if not attr.startswith("_") and callable(member):
                    yield f"{name}.{attr}", member
        elif callable(obj):
            yield name, obj


def test_every_timeout_defaults_to_none():
    with_timeout = []
    for name, fn in _public_callables():
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue  # builtins without a signature (mmap's methods)
        if "timeout" in params:
            with_timeout.append(name)
            assert params["timeout"].default is None, f"{name}: timeout={params['timeout'].default!r}"
    for expected in ("Port.recv", "Port.send_async", "ChannelEndpoint.call", "PipeWriter.write_async",
                     "connect_async", "Futex.wait", "Mutex.acquire", "WaitQueue.wait_until"):
        assert expected in with_timeout


def test_async_forms_take_what_their_sync_twins_take():
    pairs = 0
    callables = dict(_public_callables())
    for name, fn in callables.items():
        if not name.endswith("_async"):
            continue
        twin = callables.get(name[: -len("_async")])
        if twin is None:
            continue
        pairs += 1
        sync, async_ = inspect.signature(twin), inspect.signature(fn)
        assert [(p.name, p.kind, p.default) for p in sync.parameters.values()] == [
            (p.name, p.kind, p.default) for p in async_.parameters.values()
        ], name
    assert pairs >= 10  # send, recv, call, reply, serve on two classes; read, write; connect
