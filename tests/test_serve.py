"""Serve loops: ``ChannelEndpoint.serve(handler)`` and ``serve_async(handler)``.

What the loop promises (``redstone_ipc/channel/serve.py``): a returned
Message is the reply, None is no reply; each request is closed after its
handler (handles taken survive, the others close); the loop returns when
the peer is gone, everything it queued served, or when the endpoint is
closed in this process; anything else propagates. Clients run in real
processes where the point is a process (the peer's death, its queued
messages).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from conftest import fork_child, wait_child
from redstone_ipc import (
    Channel,
    InvalidHandle,
    Message,
    PeerClosed,
    PermissionDenied,
    Rights,
    SharedMemory,
)

pytestmark = pytest.mark.timeout(60)


def upper(request: Message) -> Message | None:
    if request.msg_type == 1:
        return Message(2, bytes(request).upper())
    return None  # one-way


def test_serve_answers_a_client_process_until_it_exits(no_fd_leak):
    client, server = Channel.create_pair()

    def run_client() -> None:
        server.close()
        for word in (b"alpha", b"beta", b"gamma"):
            client.send(Message(9, b"one-way, no reply"))
            reply = client.call(Message(1, word), timeout=20)
            assert bytes(reply) == word.upper() and reply.msg_type == 2
        client.send(Message(9, b"queued before the exit: still served"))
        # exits: its endpoint goes with it

    seen: list[bytes] = []

    def handler(request: Message) -> Message | None:
        seen.append(bytes(request))
        return upper(request)

    pid = fork_child(run_client)
    client.close()
    server.serve(handler)  # returns when the client is gone
    assert wait_child(pid) == 0
    assert seen[-1] == b"queued before the exit: still served" and len(seen) == 7
    with pytest.raises(PeerClosed):
        server.recv(timeout=0)
    server.close()


def test_serve_returns_when_the_client_is_killed(no_fd_leak):
    client, server = Channel.create_pair()

    def run_client() -> None:
        server.close()
        assert bytes(client.call(Message(1, b"x"), timeout=20)) == b"X"
        os.kill(os.getpid(), signal.SIGKILL)

    pid = fork_child(run_client)
    client.close()
    server.serve(upper)
    assert wait_child(pid) == -signal.SIGKILL
    server.close()


def test_the_request_is_closed_after_its_handler_and_taken_handles_survive(no_fd_leak):
    client, server = Channel.create_pair()
    kept: list[SharedMemory] = []
    left: list[SharedMemory] = []

    def handler(request: Message) -> Message:
        kept.append(request.take(SharedMemory))
        left.append(request.handle(SharedMemory))  # stays attached: closed with the request
        return Message(2)

    thread = threading.Thread(target=server.serve, args=(handler,))
    thread.start()
    request = Message(1)
    for _ in range(2):
        request.attach_handle(SharedMemory.create(4096))
    client.call(request, timeout=20)
    client.close()
    thread.join(20)
    assert not thread.is_alive()
    assert kept[0].valid and not left[0].valid
    kept[0].close()
    server.close()


def test_closing_the_endpoint_from_another_thread_stops_serve(no_fd_leak):
    client, server = Channel.create_pair()
    returned = threading.Event()

    def run() -> None:
        server.serve(upper)
        returned.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert bytes(client.call(Message(1, b"up"), timeout=20)) == b"UP"
    server.close()  # while serve() sleeps in recv
    thread.join(20)
    assert returned.is_set()
    client.close()


def test_a_handler_exception_ends_serve_and_propagates(no_fd_leak):
    client, server = Channel.create_pair()
    held: list[SharedMemory] = []

    def handler(request: Message) -> Message:
        held.append(request.handle(SharedMemory))
        raise RuntimeError("the handler failed")

    request = Message(1)
    request.attach_handle(SharedMemory.create(4096))
    client.send(request)
    with pytest.raises(RuntimeError, match="the handler failed"):
        server.serve(handler)
    assert not held[0].valid, "the request is closed all the same"
    client.close()
    server.close()


def test_a_handler_must_return_a_message_or_none(no_fd_leak):
    client, server = Channel.create_pair()
    client.send(Message(1, b"x"))
    with pytest.raises(TypeError, match="returns a Message .* not bytes"):
        server.serve(lambda request: bytes(request))  # type: ignore[arg-type, return-value]
    client.close()
    server.close()


def test_a_reply_nobody_reads_is_dropped_and_serving_goes_on(no_fd_leak):
    """The client exits before its request is answered: the reply fails with
    PeerClosed inside serve, which drops it (closing its handles), serves
    what is still queued, then returns."""
    client, server = Channel.create_pair()
    served: list[int] = []
    attached: list[SharedMemory] = []

    def handler(request: Message) -> Message:
        served.append(request.msg_type)
        deadline = time.monotonic() + 20
        while not server.peer_closed and time.monotonic() < deadline:
            time.sleep(0.01)  # answer only once the client is gone
        answer = Message(2)
        shm = SharedMemory.create(4096)
        attached.append(shm)
        answer.attach_handle(shm)
        return answer

    def run_client() -> None:
        server.close()
        client.send(Message(1))
        client.send(Message(3))  # queued behind the first; then exit

    pid = fork_child(run_client)
    client.close()
    server.serve(handler)
    assert wait_child(pid) == 0
    assert served == [1, 3]
    assert [shm.valid for shm in attached] == [False, False]
    server.close()


def test_serve_needs_receive(no_fd_leak):
    client, server = Channel.create_pair()
    send_only = server.replace(Rights.SEND | Rights.TRANSFER)
    with pytest.raises(PermissionDenied):
        send_only.serve(upper)
    send_only.close()
    client.close()


def test_serve_on_a_closed_endpoint_raises(no_fd_leak):
    client, server = Channel.create_pair()
    server.close()
    with pytest.raises(InvalidHandle):
        server.serve(upper)  # never served: nothing to stop
    client.close()


# -- asyncio -----------------------------------------------------------------------------


def test_serve_async_with_coroutine_and_plain_handlers(no_fd_leak):
    async def coroutine_handler(request: Message) -> Message | None:
        await asyncio.sleep(0)
        return upper(request)

    async def main() -> None:
        for handler in (coroutine_handler, upper):
            client, server = Channel.create_pair()
            serving = asyncio.create_task(server.serve_async(handler))
            await client.send_async(Message(9, b"one-way"))
            reply = await client.call_async(Message(1, b"async"), timeout=20)
            assert bytes(reply) == b"ASYNC"
            client.close()
            await asyncio.wait_for(serving, 20)  # returns: the peer is gone
            server.close()

    asyncio.run(main())


def test_serve_async_against_a_client_process(no_fd_leak):
    client, server = Channel.create_pair()

    def run_client() -> None:
        server.close()
        for i in range(20):
            assert int(bytes(client.call(Message(1, b"%d" % i), timeout=20))) == i * i

    async def square(request: Message) -> Message:
        n = int(bytes(request))
        return Message(2, b"%d" % (n * n))

    pid = fork_child(run_client)
    client.close()
    asyncio.run(asyncio.wait_for(server.serve_async(square), 30))
    assert wait_child(pid) == 0
    server.close()


def test_serve_async_stops_when_cancelled_or_closed(no_fd_leak):
    async def main() -> None:
        client, server = Channel.create_pair()
        serving = asyncio.create_task(server.serve_async(upper))
        await asyncio.sleep(0.05)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        # The endpoint still works after a cancelled serve.
        serving = asyncio.create_task(server.serve_async(upper))
        assert bytes(await client.call_async(Message(1, b"again"), timeout=20)) == b"AGAIN"
        server.close()
        await asyncio.wait_for(serving, 20)  # closed here: it returns
        client.close()

    asyncio.run(main())
