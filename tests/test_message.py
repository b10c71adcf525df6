"""The message envelope (seed 4.1): header bytes, construction, attach rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redstone_ipc import (
    InvalidHandle,
    Message,
    MessageHeader,
    PermissionDenied,
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
