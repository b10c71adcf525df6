"""The memory layout of a connection: what both sides map, byte by byte.

This module is the specification (``docs/wire-format.md`` says the same in
prose, for a peer written in C). All numbers are little-endian.

A *connection* carries messages one way, from one sending process to the
process that receives a port (or a channel endpoint). It is made by the
sender and consists of:

* a **ring** (one memfd, mapped read-write by both sides): a control page,
  then ``nslots`` slots of ``SLOT_SIZE`` bytes;
* **data segments** (memfds, made when a payload does not fit a slot): byte
  rings the sender allocates from and the receiver releases;
* a **socket** (a SOCK_SEQPACKET socketpair, one end each): records that
  must go through the kernel — the fds of a message's handles, new data
  segments — and hang-up, both ways;
* a **doorbell** (an eventfd the sender writes when the receiver said it
  sleeps).

Control page
------------
Words are grouped by writer, one cache line per writer, so that the two
sides never write the same line on the message path.

=======  =====  ==========================================================
offset   type   meaning (writer)
=======  =====  ==========================================================
0        u32    magic ``RING_MAGIC`` (sender, once)
4        u16    version ``VERSION``
6        u16    flags (0)
8        u32    nslots: a power of two (sender, once)
12       u32    slot size: ``SLOT_SIZE`` (sender, once)
64       u64    HEAD: messages published so far (sender; release store)
72       u32    TX_STATE: bit 0 ``TX_WAITING``, the sender sleeps for room
                and wants a WAKE record (sender)
128      u32    RX_STATE: bit 0 ``RX_SLEEPING``, write the doorbell after
                publishing (receiver)
132      u32    RX_CLOSED: why the receiver ended the connection, 0 while it
                is open (``CLOSED_*``; receiver)
192      i32    CREDITS: messages the sender may still publish. The sender
                takes one with an atomic add of -1 *before* publishing (and
                adds 1 back if the old value was not positive); the receiver
                grants with atomic adds and takes unused credits back the
                same way (both sides)
=======  =====  ==========================================================

Slots
-----
Slot ``i`` of message number ``n`` is ``n % nslots``, at ``CONTROL_SIZE +
i * SLOT_SIZE``:

=======  =====  ==========================================================
offset   type   meaning
=======  =====  ==========================================================
0        u32    size: payload bytes (the seed's ``MessageHeader``: 16 bytes)
4        u32    handle_count
8        u32    msg_type
12       u32    reserved, 0
16       i32    priority
20       u32    txid (0: not part of a call)
24       u8     flags: ``SLOT_DATA`` payload in a data segment, ``SLOT_FDS``
                the handles' record is the next unread one on the socket,
                ``SLOT_LOAN`` the payload was loaned (the receiver gets a
                view, never a copy)
25       u8     fd_count: the fds that record carries (with ``SLOT_FDS``),
                so the receiver can make room for them before reading it
                (it may be less than handle_count: a channel endpoint
                with neither SEND nor RECEIVE carries no fd)
26       u16    data segment id (with ``SLOT_DATA``)
28       u32    data offset in the segment, in ``GRANULE`` units
32       ...    the payload itself when it fits (``INLINE_MAX`` bytes)
=======  =====  ==========================================================

Publishing message ``n``: take a credit, write slot ``n % nslots`` (and send
the handles' record, and any new segment's record, on the socket), then
store HEAD = n + 1 with release ordering; then, after a full fence, read
RX_STATE and write the doorbell if ``RX_SLEEPING`` is set. The receiver reads
HEAD with acquire ordering and slots below it. A sender never has more than
the credits it was granted in flight, and the receiver grants at most
``nslots`` in total, so a slot is never overwritten before it was read.

Data segments
-------------
A memfd of ``SEGMENT_HEADER + tags + data`` bytes, size sealed:

* header (one page): magic ``SEGMENT_MAGIC`` u32, version u16, flags u16,
  segment id u32, reserved u32, data size u64 (a power of two);
* tags: one byte per ``GRANULE`` of data, rounded up to a page. The sender
  sets the tag of an allocation's first granule to 0 before publishing the
  slot that uses it; the receiver sets it to 1 (release store) once it no
  longer reads the payload. The sender reuses memory only behind released
  allocations, oldest first;
* data: a byte ring; an allocation never wraps (the sender skips the end).

Socket records
--------------
Each record starts with a u32 kind:

* ``REC_HANDLES`` (sender -> receiver): u32 kind, u32 count, then ``count``
  descriptors (``message.wire``: type u16, fd_count u16, rights u32, extra
  u64), with the fds in SCM_RIGHTS. One per ``SLOT_FDS`` slot, in order.
* ``REC_SEGMENT`` (sender -> receiver): u32 kind, u32 segment id, with the
  segment memfd. Sent before the first slot that uses the segment (and,
  for one message, before its handles' record). A receiver accepts one in
  front of any record: a message may fail (its handles refused) after its
  new segment was announced, and never be published.
* ``REC_WAKE`` (receiver -> sender): u32 kind. Room was given to a sender
  that set ``TX_WAITING``.

The door
--------
A port (or channel endpoint) is reached through its *door*: a SOCK_SEQPACKET
socketpair whose receiving end only the receiver holds (every sender holds a
dup of the other end, shut for reading). A sender sends two kinds of
record on it (``DOOR_RECORD``: u32 ``DOOR_MAGIC``, u16 version, u16 kind,
u32 nslots, u32 reserved, u64 token):

* ``DOOR_CONNECT``, once per connection, with SCM_RIGHTS [socket end, ring
  memfd, doorbell eventfd]; the kernel adds the sender's SCM_CREDENTIALS,
  so the receiver learns who the sender is once, from the kernel, and
  every message on the connection is that process's. ``token`` is a random
  number naming the connection in later records;
* ``DOOR_WANT`` (no fds; nslots 0): the connection named by ``token`` has
  no credit left and waits for room (it also set ``TX_WAITING``). A
  receiver that is not receiving right now still hears it (it watches its
  door from a thread of its own), so room is given as soon as there is some.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from ..linux.memfd import buffer_address

VERSION = 1
RING_MAGIC = 0x47525352  # b"RSRG"
SEGMENT_MAGIC = 0x47535352  # b"RSSG"
DOOR_MAGIC = 0x52445352  # b"RSDR"

PAGE = 4096
CONTROL_SIZE = PAGE
SLOT_SIZE = 256

# Control page offsets.
OFF_MAGIC = 0
OFF_VERSION = 4
OFF_NSLOTS = 8
OFF_SLOT_SIZE = 12
OFF_HEAD = 64  # u64, sender
OFF_TX_STATE = 72  # u32, sender
OFF_RX_STATE = 128  # u32, receiver
OFF_RX_CLOSED = 132  # u32, receiver
OFF_CREDITS = 192  # i32, both (atomic)

TX_WAITING = 1
RX_SLEEPING = 1

# Why a receiver ended a connection (RX_CLOSED).
CLOSED_PORT = 1  # the port was closed (or, for a channel, the peer closed)
CLOSED_MOVED = 2  # the receive side went to another process: connect again
CLOSED_PROTOCOL = 3  # the sender broke the protocol
CLOSED_REFUSED = 4  # the receiver could not take the connection (e.g. out of fds)

CONTROL = struct.Struct("<IHHII")  # magic, version, flags, nslots, slot size

# Slots.
SLOT = struct.Struct("<4IiIBBHI")  # size, handle_count, msg_type, reserved,
#                                    priority, txid, flags, fd_count, segment, offset
SLOT_HEAD = SLOT.size  # 32
# The same 32 bytes for a slot with no flags, handles or segment: size,
# msg_type, priority and txid, every other field written 0.
SLOT_PLAIN = struct.Struct("<I4xI4xiI8x")
INLINE_MAX = SLOT_SIZE - SLOT_HEAD  # 224
SLOT_DATA = 0x1
SLOT_FDS = 0x2
SLOT_LOAN = 0x4
SLOT_KNOWN = SLOT_DATA | SLOT_FDS | SLOT_LOAN

MAX_SLOTS = 1 << 16  # a connection's ring holds at most this many messages

# Data segments.
GRANULE = 64
SEGMENT_HEADER = PAGE
SEGMENT = struct.Struct("<IHHIIQ")  # magic, version, flags, id, reserved, data size
MIN_SEGMENT = 1 << 16
MAX_SEGMENT = 1 << 34  # 16 GiB: offsets are u32 granules (256 GiB at most)
MAX_SEGMENTS = 8  # live segments per connection
GROWTH_LIMIT = 1 << 23  # a sender's policy: segments double up to this, then only for bigger payloads
TAG_RELEASED = 1

# Socket records.
REC_HANDLES = 1
REC_SEGMENT = 2
REC_WAKE = 3
RECORD_KIND = struct.Struct("<I")
HANDLES_HEAD = struct.Struct("<II")  # kind, count
SEGMENT_RECORD = struct.Struct("<II")  # kind, id
RECORD_MAX = 8 + 16 * 253  # the largest record: 253 descriptors

# The door.
DOOR_RECORD = struct.Struct("<IHHIIQ")  # magic, version, kind, nslots, reserved, token
DOOR_CONNECT = 1
DOOR_WANT = 2
CONNECT_FDS = 3  # socket end, ring memfd, doorbell eventfd


def ring_size(nslots: int) -> int:
    """Bytes of a ring memfd with ``nslots`` slots."""
    return CONTROL_SIZE + nslots * SLOT_SIZE


def slot_count(capacity: int) -> int:
    """The slots a connection to a queue of ``capacity`` needs: the credits
    it can ever hold, rounded up to a power of two."""
    n = 1
    while n < capacity:
        n <<= 1
    return min(n, MAX_SLOTS)


def tags_size(data_size: int) -> int:
    """Bytes of a segment's tag area (one byte per granule, whole pages)."""
    granules = data_size // GRANULE
    return (granules + PAGE - 1) // PAGE * PAGE


def segment_size(data_size: int) -> int:
    """Bytes of a segment memfd holding ``data_size`` bytes of data."""
    return SEGMENT_HEADER + tags_size(data_size) + data_size


def control_views(mm: mmap.mmap) -> tuple[memoryview, memoryview, ctypes.c_void_p, ctypes.c_void_p]:
    """A mapped ring's control block as both sides use it: its u32 words, its
    u64 words, and the addresses of HEAD and CREDITS (for ordered and atomic
    access through ``linux.ordering`` / ``linux.atomic``)."""
    words = memoryview(mm)[:CONTROL_SIZE]
    base = buffer_address(mm)
    return (words.cast("I"), words.cast("Q"),
            ctypes.c_void_p(base + OFF_HEAD), ctypes.c_void_p(base + OFF_CREDITS))
