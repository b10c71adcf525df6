"""A user program that makes every public call of the README tour, typed.

Two jobs:

* ``mypy --strict`` checks it (``make lint``, and ``tests/test_typing.py``
  from a directory outside the repository, as a user's project would): the
  package must be found through its installed ``py.typed``, constructors
  take their documented keywords, received handles are used with their real
  type without casts (``msg.take(Port)``), and the payload has one type.
  ``assert_type`` makes mypy fail if an inferred type drifts (to ``Any``,
  say), not only if a call is wrong.
* it runs (``tests/test_typing.py``), so it stays a real program.

No numpy here: its typing is its own business, not this package's.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import TYPE_CHECKING

from redstone_ipc import (
    Allow,
    Channel,
    ChannelEndpoint,
    ChannelPair,
    Condition,
    ConnectTimedOut,
    Event,
    Futex,
    FutexWord,
    Loan,
    Mapping,
    Message,
    MessageHeader,
    Mutex,
    NameNotFound,
    PeerClosed,
    Pipe,
    PipeReader,
    PipeWriter,
    Port,
    PortId,
    PortStatus,
    Publication,
    ReceiveTimedOut,
    Rights,
    Semaphore,
    SendTimedOut,
    Sender,
    SharedMemory,
    TimedOut,
    WaitQueue,
    connect,
    connect_async,
    publish,
)

if TYPE_CHECKING:
    from typing_extensions import assert_type  # typeshed has it: no install needed
else:

    def assert_type(value, _type):  # noqa: D103 - the runtime no-op
        return value


NAME = f"typing-tour/{os.getpid()}"


def handles_and_rights() -> None:
    shm = SharedMemory.create(1 << 20)
    assert_type(shm, SharedMemory)
    ro = shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER)
    assert_type(ro, SharedMemory)
    assert_type(ro.rights, Rights)
    assert ro.valid and ro.size == 1 << 20
    ro.close()
    shm.close()


def messages() -> None:
    msg = Message.with_data(7, bytes(1920 * 4))
    assert_type(msg, Message)
    other = Message(2, b"x")
    shm = SharedMemory.create(4096)
    msg.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
    assert_type(msg.payload, memoryview)
    assert_type(bytes(msg), bytes)
    header = msg.header
    assert_type(header, MessageHeader)
    assert len(bytes(header)) == MessageHeader.SIZE and header.handle_count == 1
    other.payload = bytearray(b"new payload")  # any buffer goes in; a memoryview comes out
    assert_type(other.payload, memoryview)
    view = msg.handle(SharedMemory)  # stays attached
    assert_type(view, SharedMemory)
    mine = msg.take(SharedMemory)  # detached: mine to close
    assert_type(mine, SharedMemory)
    mine.close()
    msg.close()
    other.close()
    shm.close()


def ports() -> None:
    port = Port(capacity=16)
    assert_type(port, Port)
    client = port.duplicate(Rights.SEND | Rights.TRANSFER)
    assert_type(client, Port)
    client.send(Message.with_data(1, b"hello"), priority=5)
    client.send(Message(1), priority=0, timeout=1.0)
    msg = port.recv(timeout=1.0)
    assert_type(msg, Message)
    assert bytes(msg) == b"hello" and msg.priority == 5
    sender = msg.sender
    assert_type(sender, Sender | None)
    assert sender is not None and sender.pid == os.getpid()
    port.try_recv().close()
    try:
        port.recv(timeout=0)
    except ReceiveTimedOut as e:
        assert isinstance(e, TimeoutError) and isinstance(e, queue.Empty)
    assert_type(port.id, PortId)
    assert_type(port.status, PortStatus)
    assert_type(port.stats(), dict[str, int])
    assert_type(port.capacity, int)

    with client.loan(1 << 20) as buf:
        assert_type(buf, Loan)
        buf.view[:5] = b"large"
        client.send(Message(3, buf), timeout=5)
    with port.recv(timeout=5) as big:
        assert bytes(big.payload[:5]) == b"large"

    # A handle that arrives in a message, used as what it is: no cast.
    reply_to, theirs = Channel.create_pair()
    request = Message(1, b"question")
    request.attach_handle(theirs)
    client.send(request, timeout=5)
    with port.recv(timeout=5) as got:
        endpoint = got.take(ChannelEndpoint)
    endpoint.send(Message(2, b"answer"), timeout=5)
    assert bytes(reply_to.recv(timeout=5)) == b"answer"
    for h in (endpoint, reply_to, client):
        h.close()
    port.close()


def channels() -> None:
    pair = Channel.create_pair(capacity=4)
    assert_type(pair, ChannelPair)
    a, b = pair
    assert_type(a, ChannelEndpoint)

    def serve() -> None:
        request = b.recv(timeout=5)
        b.reply(request, Message(2, bytes(request).upper()), timeout=5)

    thread = threading.Thread(target=serve)
    thread.start()
    reply = a.call(Message.with_data(1, b"ping"), timeout=5)
    assert_type(reply, Message)
    assert bytes(reply) == b"PING"
    thread.join(5)

    def upper(request: Message) -> Message | None:
        return Message(2, bytes(request).upper())

    server = threading.Thread(target=b.serve, args=(upper,))
    server.start()
    assert bytes(a.call(Message(1, b"served"), timeout=5)) == b"SERVED"
    assert_type(a.peer_closed, bool)
    a.close()
    server.join(5)
    assert not server.is_alive()
    b.close()


def shared_memory() -> None:
    shm = SharedMemory.create(1 << 20)
    m = shm.map()
    assert_type(m, Mapping)
    m[64:69] = b"frame"
    m.store_u64(0, 1)
    ro = shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER)
    view = ro.map()
    assert view.writable is False and view[0] == 1  # the u64 stored above (little-endian)
    if view.load_u64(0) == 1:
        assert view[64:69] == b"frame"
    assert_type(m.fetch_add_u32(8, 5), int)
    ok, seen = m.compare_exchange_u32(8, 5, 6)
    assert_type(ok, bool)
    assert ok and seen == 5
    m.store_u32(16, 1)
    assert m.load_u32(16) == 1 and m.fetch_add_u64(24, 1) == 0
    assert m.compare_exchange_u64(24, 1, 2) == (True, 1)
    writable = shm.map(writable=True)
    writable.unmap()
    for mapping in (view, m):
        mapping.unmap()
    ro.close()
    shm.close()


def futexes_and_locks() -> None:
    shm = SharedMemory.create(4096)
    m = shm.map()
    try:
        Futex.wait(m, 0, expected=0, timeout=0.01)
    except TimedOut:
        pass
    assert Futex.wake(m, 0, count=1) == 0
    with Futex.word(m, 0) as word:
        assert_type(word, FutexWord)
        assert word.wait(1) is False
        word.wake(1)

    lock = Mutex.create(m, 64)
    assert_type(lock, Mutex)
    with lock:
        assert_type(lock.owner_died, bool)
    assert lock.acquire(timeout=1.0)
    lock.release()
    assert Mutex(m, 64).acquire(blocking=False)
    lock.release()

    with Event.create(m, 128) as ready:
        ready.set()
        assert ready.wait(timeout=1.0)

    sem = Semaphore.create(m, 136, 1)
    assert sem.acquire(timeout=0.5)
    assert sem.acquire(blocking=False) is False
    sem.release()

    cond = Condition.create(m, 144, lock)
    with cond:
        assert cond.wait(timeout=0.01) is False
        assert_type(cond.wait_for(lambda: True, timeout=0.01), bool)
        cond.notify_all()
    queue_ = WaitQueue.create(m, 160)
    assert_type(queue_.wait_until(lambda: 42, timeout=0.01), int)
    queue_.wake_all()

    for obj in (queue_, cond, sem, lock):
        obj.close()
    m.unmap()
    shm.close()


def pipes() -> None:
    reader, writer = Pipe.create(capacity=256 << 10)
    assert_type(reader, PipeReader)
    assert_type(writer, PipeWriter)
    assert writer.write(b"bytes", timeout=1.0) == 5
    assert reader.read(5, timeout=1.0) == b"bytes"

    async def both() -> bytes:
        await writer.write_async(b"async", timeout=1.0)
        return await reader.read_async(5, timeout=1.0)

    assert asyncio.run(both()) == b"async"
    writer.close()
    assert reader.read(5) == b""
    reader.close()


def names() -> None:
    port = Port()
    with publish(NAME, port, allow=Allow(uids=[os.getuid()])) as pub:
        assert_type(pub, Publication)
        server = connect(NAME, kind=Port, timeout=10)
        assert_type(server, Port)
        mine, theirs = Channel.create_pair()
        request = Message.with_data(1, b"hello")
        request.attach_handle(theirs)
        server.send(request, timeout=5)
        with port.recv(timeout=5) as got:
            reply_to = got.take(ChannelEndpoint)
            reply_to.send(Message.with_data(2, bytes(got.payload).upper()), timeout=5)
        assert bytes(mine.recv(timeout=5).payload) == b"HELLO"
        for h in (reply_to, mine, server):
            h.close()

    async def later() -> SharedMemory:
        with publish(NAME, SharedMemory.create(4096), allow=lambda pid, uid, gid: True):
            return await connect_async(NAME, kind=SharedMemory, timeout=1)

    shm = asyncio.run(later())
    assert_type(shm, SharedMemory)
    shm.close()
    try:
        connect(NAME, timeout=0)
    except ConnectTimedOut as e:
        assert isinstance(e, TimeoutError) and isinstance(e, NameNotFound)
    port.close()


def asyncio_forms() -> None:
    async def main() -> None:
        a, b = Channel.create_pair()

        async def handler(request: Message) -> Message:
            return Message(2, bytes(request)[::-1])

        server = asyncio.create_task(b.serve_async(handler))
        reply = await a.call_async(Message(1, b"abc"), timeout=5)
        assert bytes(reply) == b"cba"
        await a.send_async(Message(1), timeout=5)  # one-way: the handler's reply goes unread
        a.close()
        await asyncio.wait_for(server, 5)
        b.close()

        c, d = Channel.create_pair()
        await c.send_async(Message(4, b"x"), priority=1, timeout=5)
        request = await d.recv_async(timeout=5)
        await d.reply_async(request, Message(5), timeout=5)
        assert (await c.recv_async(timeout=5)).msg_type == 5
        try:
            await c.recv_async(timeout=0)
        except ReceiveTimedOut:
            pass
        d.close()
        try:
            await c.recv_async(timeout=5)
        except PeerClosed:
            pass
        c.close()

    asyncio.run(main())


def full_port() -> None:
    port = Port(capacity=1)
    port.send(Message(1))
    try:
        port.send(Message(2), timeout=0)
    except SendTimedOut as e:
        assert isinstance(e, TimeoutError) and isinstance(e, queue.Full)
    port.close()


def main() -> None:
    for section in (
        handles_and_rights,
        messages,
        ports,
        channels,
        shared_memory,
        futexes_and_locks,
        pipes,
        names,
        asyncio_forms,
        full_port,
    ):
        section()
    print("typed tour OK")


if __name__ == "__main__":
    main()
