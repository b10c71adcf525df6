"""The records of a ring connection, in the corners docs/wire-format.md states.

Two rules a peer relies on, each once broken by the library itself:

* a ``REC_SEGMENT`` may come in front of any record: a message whose new
  data segment was announced and which then failed (its handles refused)
  leaves the announcement in front of the next message's records;
* a handle may carry no fd at all (a channel endpoint with neither SEND
  nor RECEIVE), so a slot's ``fd_count`` may be less than its handle count.
"""

from __future__ import annotations

import os

import pytest

from conftest import fork_child, wait_child
from redstone_ipc import Channel, FdHandle, Message, MessageTooLarge, Port, Rights

pytestmark = pytest.mark.timeout(60)

SEND = Rights.SEND | Rights.TRANSFER


def test_a_segment_announced_for_a_failed_message_does_not_break_the_next(no_fd_leak):
    port = Port(capacity=4)
    client = port.duplicate(SEND)

    def sender() -> None:
        too_many = Message(1, bytes(100_000))  # a new data segment is announced first...
        for _ in range(254):  # ...then the handles are refused (one message carries 253 fds)
            too_many.attach_handle(FdHandle.adopt(os.eventfd(0)))
        with pytest.raises(MessageTooLarge):
            client.send(too_many, timeout=5)
        too_many.close()
        small = Message(2, b"small, with a handle")  # its handles' record comes after the segment's
        small.attach_handle(FdHandle.adopt(os.eventfd(5)))
        client.send(small, timeout=5)
        client.send(Message(3, b"x" * 100_000), timeout=5)  # the segment, used at last

    pid = fork_child(sender)
    with port.recv(timeout=20) as small:
        assert (small.msg_type, bytes(small)) == (2, b"small, with a handle")
        assert os.eventfd_read(small.handles[0].fileno()) == 5
    big = port.recv(timeout=20)
    assert (big.msg_type, bytes(big)) == (3, b"x" * 100_000)
    del big
    assert wait_child(pid) == 0
    client.close()
    port.close()


def test_a_handle_that_carries_no_fd_crosses_a_port(no_fd_leak):
    port = Port(capacity=4)
    client = port.duplicate(SEND)
    a, b = Channel.create_pair()

    def sender() -> None:
        msg = Message(1, b"an endpoint that can only be passed on")
        msg.attach_handle(b.replace(Rights.TRANSFER | Rights.WAIT))  # no SEND, no RECEIVE: no fd
        client.send(msg, timeout=5)
        client.send(Message(2, b"and the connection lives on"), timeout=5)

    pid = fork_child(sender)
    with port.recv(timeout=20) as msg:
        (endpoint,) = msg.handles
        assert endpoint.rights == Rights.TRANSFER | Rights.WAIT
    assert bytes(port.recv(timeout=20)) == b"and the connection lives on"
    assert wait_child(pid) == 0
    for h in (a, b, client, port):
        h.close()
