"""The message envelope (seed 4.1): header bytes, construction, attach rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import fork_child, wait_child
from redstone_ipc import (
    Channel,
    ChannelEndpoint,
    Handle,
    InvalidHandle,
    Message,
    MessageHeader,
    PermissionDenied,
    Pipe,
    PipeWriter,
    Port,
    Rights,
    SharedMemory,
)

pytestmark = pytest.mark.timeout(60)

u32 = st.integers(0, 2**32 - 1)


@given(u32, u32, u32, u32)
def test_header_is_four_little_endian_u32(size, count, msg_type, reserved):
    header = MessageHeader(size, count, msg_type, reserved)
    raw = bytes(header)
    assert raw == struct.pack("<IIII", size, count, msg_type, reserved)
    assert len(raw) == MessageHeader.SIZE == 16
    assert MessageHeader.from_bytes(raw) == header


def test_new_message_is_empty():
    msg = Message.new(42)
    assert msg.header == MessageHeader(size=0, handle_count=0, msg_type=42, reserved=0)
    assert msg.payload == b"" and msg.handles == [] and msg.txid == 0


def test_with_data_keeps_the_callers_buffer_uncopied():
    data = bytearray(b"frame bytes")
    msg = Message.with_data(7, data)
    assert msg.payload.obj is data, "a view of the very buffer given"
    assert msg.header.size == len(data) and msg.header.msg_type == 7


def test_size_counts_bytes_of_any_buffer():
    view = memoryview(bytearray(64)).cast("I")  # 16 items of 4 bytes
    assert Message.with_data(1, view).header.size == 64


def test_msg_type_must_be_a_u32():
    with pytest.raises(ValueError):
        Message.new(2**32)
    with pytest.raises(ValueError):
        Message.new(-1)


def test_attach_handle_counts_and_keeps_the_handle():
    msg = Message.new(1)
    with SharedMemory.create(4096) as a, SharedMemory.create(4096) as b:
        msg.attach_handle(a)
        msg.attach_handle(b)
        assert msg.header.handle_count == 2
        assert msg.handles == [a, b]


def test_attach_needs_transfer():
    with SharedMemory.create(4096) as shm:
        local_only = shm.duplicate(Rights.READ | Rights.MAP)
        msg = Message.new(1)
        with pytest.raises(PermissionDenied, match="TRANSFER"):
            msg.attach_handle(local_only)
        assert msg.header.handle_count == 0
        local_only.close()


def test_attach_refuses_closed_and_repeated_handles():
    shm = SharedMemory.create(4096)
    msg = Message.new(1)
    msg.attach_handle(shm)
    with pytest.raises(ValueError):
        msg.attach_handle(shm)
    shm.close()
    with pytest.raises(InvalidHandle):
        Message.new(1).attach_handle(shm)


# -- typed access to received handles: handle() and take() ------------------------------


def test_take_detaches_in_order_with_the_real_type(no_fd_leak):
    port = Port()
    mine, theirs = Channel.create_pair()
    shm = SharedMemory.create(4096)
    msg = Message(1)
    msg.attach_handle(theirs)
    msg.attach_handle(shm.duplicate())
    port.send(msg)
    with port.recv(timeout=5) as got:
        assert got.handle(SharedMemory, 1).id == shm.id  # looks, leaves it attached
        assert len(got.handles) == 2
        endpoint = got.take(ChannelEndpoint)
        region = got.take(SharedMemory)  # the next one, now at index 0
        assert got.handles == []
    # Closing the message left what was taken open: it is ours.
    assert endpoint.valid and region.valid and region.id == shm.id
    endpoint.send(Message(2, b"back"))
    assert bytes(mine.recv(timeout=5)) == b"back"
    for h in (endpoint, region, mine, port, shm):
        h.close()


def test_the_wrong_kind_is_a_type_error_and_stays_with_the_message(no_fd_leak):
    shm = SharedMemory.create(4096)
    msg = Message(1)
    msg.attach_handle(shm)
    with pytest.raises(TypeError, match="handle 0 of the message is a SharedMemory, not a Port"):
        msg.take(Port)
    with pytest.raises(TypeError, match="not a ChannelEndpoint"):
        msg.handle(ChannelEndpoint)
    assert msg.handles == [shm]  # nothing detached: it closes with the message
    with pytest.raises(TypeError, match="kind is a handle class"):
        msg.take(bytes)  # type: ignore[type-var]
    msg.close()
    assert not shm.valid


def test_a_missing_handle_is_an_index_error():
    msg = Message(1)
    with pytest.raises(IndexError, match="carries 0 handles: there is no handle 0"):
        msg.take(SharedMemory)
    with SharedMemory.create(4096) as shm:
        msg.attach_handle(shm.duplicate())
        with pytest.raises(IndexError, match="carries 1 handle: there is no handle 3"):
            msg.handle(SharedMemory, 3)
        assert msg.take(SharedMemory, -1).id == shm.id  # list.pop indices
        msg.close()


def test_any_handle_class_is_a_kind(no_fd_leak):
    with SharedMemory.create(4096) as shm:
        msg = Message(1)
        msg.attach_handle(shm.duplicate())
        handle = msg.take(Handle)  # the base class takes anything
        assert isinstance(handle, SharedMemory)
        handle.close()


def test_take_in_a_process_that_received_them(no_fd_leak):
    """The handles a child process sent, used by the parent as what they are."""
    port = Port()
    to_parent = port.duplicate(Rights.SEND | Rights.TRANSFER)

    def child() -> None:
        port.release()
        reply_port = Port()
        msg = Message(1)
        msg.attach_handle(reply_port.duplicate(Rights.SEND | Rights.TRANSFER))
        reader, writer = Pipe.create()
        msg.attach_handle(writer)
        to_parent.send(msg, timeout=20)
        assert bytes(reply_port.recv(timeout=20)) == b"via the port"
        assert reader.read(100, timeout=20) == b"via the pipe"

    pid = fork_child(child)
    to_parent.close()
    with port.recv(timeout=20) as msg:
        assert msg.sender.pid == pid
        reply = msg.take(Port)
        writer = msg.take(PipeWriter)
    reply.send(Message(2, b"via the port"), timeout=20)
    writer.write(b"via the pipe", timeout=20)
    assert wait_child(pid) == 0
    for h in (reply, writer, port):
        h.close()
