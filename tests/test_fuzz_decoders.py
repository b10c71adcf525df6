"""Hypothesis fuzz of every decoder a peer can feed: ring slots and HEAD,
door records (CONNECT, WANT), connection records (REC_HANDLES, REC_SEGMENT)
with fds of any kind, and ``message.wire.recv_message``.

Each example writes what it drew where a sender can (through a real
connection's ring and socket, the real door, a real socket) and receives.
The receiver may deliver a message (garbage can be well-formed) or raise
ProtocolError / MessageTooLarge, nothing else; it never leaks an fd, and
afterwards it still works and its capacity is exact.
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import socket
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import open_fds
from redstone_ipc import Empty, IpcError, Message, MessageTooLarge, Port, ProtocolError
from redstone_ipc.linux.cmsg import seqpacket_pair
from redstone_ipc.message.wire import recv_message, send_message
from redstone_ipc.port import SEND_RIGHTS
from redstone_ipc.transport import layout as L
from test_hostile import Hostile, _slot, assert_capacity_exact_here

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- fds of every kind a peer can send -------------------------------------------------------

FD_KINDS = ["pipe", "socket", "seqpacket", "memfd", "sealed memfd", "segment", "ring", "eventfd",
            "devnull"]


def make_fd(kind: str, size: int) -> int:
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind in ("socket", "seqpacket"):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM if kind == "socket" else socket.SOCK_SEQPACKET)
        b.close()
        return a.detach()
    if kind == "eventfd":
        return os.eventfd(size % 7)
    if kind == "devnull":
        return os.open("/dev/null", os.O_RDWR)
    fd = os.memfd_create("fuzz", os.MFD_ALLOW_SEALING)
    if kind == "segment":
        data = L.MIN_SEGMENT << (size % 3)
        os.ftruncate(fd, L.segment_size(data))
        os.pwrite(fd, L.SEGMENT.pack(L.SEGMENT_MAGIC, L.VERSION, 0, size % 5, 0, data), 0)
    elif kind == "ring":
        nslots = 1 << (size % 6)
        os.ftruncate(fd, L.ring_size(nslots))
        os.pwrite(fd, L.CONTROL.pack(L.RING_MAGIC, L.VERSION, 0, nslots, L.SLOT_SIZE), 0)
    else:
        os.ftruncate(fd, size)
    if kind != "memfd":
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


fd_specs = st.lists(st.tuples(st.sampled_from(FD_KINDS), st.integers(0, 1 << 20)), max_size=4)


def send_raw(sock: socket.socket, data: bytes, specs: list[tuple[str, int]]) -> None:
    fds = [make_fd(kind, size) for kind, size in specs]
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([data or b"\0"], anc, socket.MSG_DONTWAIT)
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)


def receive_what_comes(port: Port) -> int:
    """Everything the port delivers now; only ProtocolError may be raised.
    Returns how many errors were."""
    errors = 0
    for _ in range(200):
        try:
            msg = port.try_recv()
        except ProtocolError:
            errors += 1
            continue
        except Empty:
            return errors
        msg.close()
    raise AssertionError("the port never ran dry")


def fd_kinds() -> Counter[str]:
    """How many fds of each kind are open (by what they are, not by number:
    the hostile sender connects again after a drop, and its new connection's
    fds, the same kinds and as many, may take other numbers)."""
    kinds: Counter[str] = Counter()
    for fd in open_fds():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # (closed meanwhile)
        kinds[re.sub(r"\[\d+\]| \(deleted\)|#\d+", "", target)] += 1
    return kinds


@pytest.fixture
def fuzzed_port():
    """A port received in this process and a hostile sender of this process
    connected to it; afterwards: no fd left, capacity exact."""
    port = Port(capacity=8)
    client = port.duplicate(SEND_RIGHTS)
    import random

    hostile = Hostile(client, random.Random(0))
    receive_what_comes(port)
    before = fd_kinds()  # one connection: a ring, a socket and a doorbell each side
    yield port, hostile
    receive_what_comes(port)
    # Its connection may have data segments now (mapped, an fd each side:
    # not a leak while it lives): a lie ends it, and a new one is made.
    if not hostile.conn.closed and not hostile.conn._w[L.OFF_RX_CLOSED >> 2]:
        hostile.publish(_slot(reserved=5))
    deadline = time.monotonic() + 5
    while not hostile.dropped(0.01):
        receive_what_comes(port)
        assert time.monotonic() < deadline, "a lying sender was not dropped"
    hostile.connect()  # it still works
    receive_what_comes(port)
    after = fd_kinds()
    assert after == before, f"the decoders leaked (or lost) fds: {after - before} more, {before - after} fewer"
    assert_capacity_exact_here(port)
    port.close()


def reconnect(hostile: Hostile) -> None:
    if hostile.conn.closed or hostile.conn._w[L.OFF_RX_CLOSED >> 2]:
        hostile.connect()


# -- ring slots and HEAD ---------------------------------------------------------------------

slot_fields = st.tuples(  # the fields of layout.SLOT, in order
    st.one_of(st.integers(0, 300), st.sampled_from([L.INLINE_MAX, L.INLINE_MAX + 1, 2**32 - 1]),
              st.integers(0, 2**32 - 1)),  # size
    st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),  # handle_count
    st.integers(0, 2**32 - 1),  # msg_type
    st.one_of(st.just(0), st.integers(0, 2**32 - 1)),  # reserved
    st.integers(-(2**31), 2**31 - 1),  # priority
    st.integers(0, 2**32 - 1),  # txid
    st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), st.integers(0, 255)),  # flags
    st.integers(0, 255),  # fd_count
    st.one_of(st.integers(0, 3), st.integers(0, 2**16 - 1)),  # segment
    st.one_of(st.integers(0, 20_000), st.integers(0, 2**32 - 1)),  # granule
)


@FUZZ
@given(
    slot=st.one_of(slot_fields.map(lambda f: L.SLOT.pack(*f)), st.binary(min_size=32, max_size=32)),
    tail=st.binary(max_size=L.INLINE_MAX),
    head_step=st.one_of(st.just(1), st.sampled_from([0, -1, 2, 2**63, 2**64 - 1]), st.integers(-5, 40)),
    record=st.one_of(st.none(), st.tuples(st.sampled_from([L.REC_HANDLES, L.REC_SEGMENT, 3, 0]),
                                          st.binary(max_size=80), fd_specs)),
    big_first=st.booleans(),
)
def test_ring_slots_and_head(fuzzed_port, slot, tail, head_step, record, big_first):
    port, hostile = fuzzed_port
    reconnect(hostile)
    if big_first:  # a data segment the slot may point into
        hostile.send_big()
    if record is not None:
        kind, body, specs = record
        send_raw(hostile.conn.sock, L.RECORD_KIND.pack(kind) + body, specs)
    n = hostile.head()
    hostile.write_slot(n, slot + tail)
    hostile.set_credits(hostile.credits() - 1)
    hostile.set_head(n + head_step)
    hostile.ring()
    receive_what_comes(port)


# -- connection records ------------------------------------------------------------------------


@FUZZ
@given(
    kind=st.sampled_from([L.REC_HANDLES, L.REC_SEGMENT]),
    count=st.integers(0, 5),
    descriptors=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 4), st.integers(0, 255),
                                   st.integers(0, 2**64 - 1)), max_size=5),
    extra=st.binary(max_size=16),
    specs=fd_specs,
    segment_id=st.integers(0, 5),
)
def test_handles_and_segment_records(fuzzed_port, kind, count, descriptors, extra, specs, segment_id):
    port, hostile = fuzzed_port
    reconnect(hostile)
    if kind == L.REC_HANDLES:
        body = L.HANDLES_HEAD.pack(kind, count) + b"".join(
            L_DESC.pack(*d) for d in descriptors) + extra
        slot = L.SLOT.pack(4, count, 66, 0, 0, 0, L.SLOT_FDS, len(specs), 0, 0)
    else:
        body = L.SEGMENT_RECORD.pack(kind, segment_id) + extra
        slot = L.SLOT.pack(64, 0, 66, 0, 0, 0, L.SLOT_DATA, 0, segment_id, 0)
    send_raw(hostile.conn.sock, body, specs)
    hostile.publish(slot)
    receive_what_comes(port)


L_DESC = __import__("struct").Struct("<HHIQ")


# -- door records ----------------------------------------------------------------------------------


@FUZZ
@given(
    fields=st.tuples(
        st.one_of(st.just(L.DOOR_MAGIC), st.integers(0, 2**32 - 1)),
        st.one_of(st.just(L.VERSION), st.integers(0, 2**16 - 1)),
        st.one_of(st.sampled_from([L.DOOR_CONNECT, L.DOOR_WANT]), st.integers(0, 2**16 - 1)),
        st.one_of(st.sampled_from([1, 2, 8, 16, 32]), st.integers(0, 2**32 - 1)),
        st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
        st.integers(0, 2**64 - 1),
    ),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
    specs=st.one_of(fd_specs, st.just([("seqpacket", 0), ("ring", 3), ("eventfd", 0)]),
                    st.just([("seqpacket", 0), ("ring", 4), ("eventfd", 0)])),
)
def test_door_records(fuzzed_port, fields, raw, specs):
    port, hostile = fuzzed_port
    door = hostile.port._object.send_door
    send_raw(door, raw if raw is not None else L.DOOR_RECORD.pack(*fields), specs)
    receive_what_comes(port)  # (a CONNECT that was valid hangs up at once: its peer is closed)
    receive_what_comes(port)


# -- wire.recv_message --------------------------------------------------------------------------------

wire_head = st.tuples(
    st.integers(0, 300), st.integers(0, 5), st.integers(0, 2**32 - 1),
    st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    st.one_of(st.just(0x50495352), st.integers(0, 2**32 - 1)),
    st.one_of(st.just(1), st.integers(0, 2**16 - 1)),
    st.one_of(st.sampled_from([0, 1]), st.integers(0, 2**16 - 1)),
    st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**32 - 1),
)


@FUZZ
@given(
    head=wire_head,
    descriptors=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 4), st.integers(0, 255),
                                   st.sampled_from([0, 4096, 1 << 20, 2**64 - 1])), max_size=5),
    payload=st.binary(max_size=300),
    specs=fd_specs,
)
def test_wire_recv_message(head, descriptors, payload, specs):
    import struct

    a, b = seqpacket_pair()
    before = open_fds()
    record = struct.pack("<4I IHHiI", *head) + b"".join(L_DESC.pack(*d) for d in descriptors) + payload
    send_raw(a, record, specs)
    try:
        msg = recv_message(b)
    except (ProtocolError, MessageTooLarge):
        pass
    else:
        if msg is not None:
            msg.close()  # garbage that happens to be valid is a valid message
    assert open_fds() == before
    send_message(a, Message.with_data(3, b"still works"))
    assert bytes(recv_message(b).payload) == b"still works"
    a.close()
    b.close()


def test_the_fuzz_can_tell_a_leak(fuzzed_port):
    """(The fixture's checks can fail: an fd kept by a decoder is seen.)"""
    port, hostile = fuzzed_port
    kept = os.dup(0)
    assert kept in open_fds()
    os.close(kept)
    with pytest.raises(IpcError):
        raise ProtocolError("(sanity)")
