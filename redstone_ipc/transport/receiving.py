"""The receiving side of a connection: check everything, trust nothing.

An :class:`Inbound` is what the receiver makes of a CONNECT record that came
through its door. The memory it maps is shared with the sender, who may be
hostile or may die at any instant, so:

* every word the sender writes is read **once** into a local and checked
  before use: HEAD against what was granted and the ring's size, each slot's
  sizes, flags, segment and offset against the real bounds;
* the receiver's own state (how far it read, what it granted and took back)
  lives in this object, never only in shared memory;
* a slot is read only below HEAD, which the sender stores after the slot is
  complete (release/acquire): a sender killed mid-write leaves a slot that
  is never read, never a torn message;
* anything wrong raises ProtocolError: the caller drops the connection (and
  its credits come back), every other connection goes on.

Mechanism only: ``port.inbox`` decides when to read, grant and wake.
"""

from __future__ import annotations

import array
import errno
import mmap
import os
import socket

from ..core.object import Handle
from ..errors import OutOfFds, ProtocolError
from ..linux import cmsg, eventfd, memfd
from ..linux.atomic import _fetch_add
from ..linux.ordering import TSO, full_fence, load_u64
from ..message import wire
from ..message.message import COPY_LIMIT, Message, Sender
from . import layout as L
from .segments import SegmentReader

__all__ = ["Inbound", "accept", "door_record", "make_room", "MAPPING_FDS"]

MAPPING_FDS = 1
"""Fds a mapping holds: ``mmap.mmap`` keeps a dup of the fd it maps (Python
3.13's ``trackfd=False`` aside), so mapping a ring or a segment that just
arrived takes one fd more than the record brought."""

_SEQ_CST = 5
_DONTWAIT = int(socket.MSG_DONTWAIT)
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC) | _DONTWAIT
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_unpack_slot = L.SLOT.unpack_from
_received = Message._received
_new = object.__new__
_Message = Message
_NO_HANDLES: list = ()  # type: ignore[assignment]  # shared: a received message without handles
_WAKE = L.RECORD_KIND.pack(L.REC_WAKE)
_ANC_SIZE = socket.CMSG_SPACE(4 * cmsg.MAX_FDS)
_HEAD_Q = L.OFF_HEAD >> 3
_POISON = 0xC000_0000  # -2**30 as a u32
_CONTROL = L.CONTROL_SIZE
_SLOT_SIZE = L.SLOT_SIZE
_SLOT_HEAD = L.SLOT_HEAD
_INLINE_MAX = L.INLINE_MAX


def door_record(data: bytes) -> tuple[int, int, int]:
    """(kind, nslots, token) of a door record; ProtocolError if it is none."""
    if len(data) != L.DOOR_RECORD.size:
        raise ProtocolError(f"a door record has {L.DOOR_RECORD.size} bytes, not {len(data)}")
    magic, version, kind, nslots, reserved, token = L.DOOR_RECORD.unpack(data)
    if magic != L.DOOR_MAGIC or version != L.VERSION or reserved or kind not in (L.DOOR_CONNECT, L.DOOR_WANT):
        raise ProtocolError(f"not a redstone-ipc v{L.VERSION} door record")
    return kind, nslots, token


def accept(nslots: int, token: int, fds: list[int], creds: tuple[int, int, int] | None,
           max_slots: int) -> Inbound:
    """An Inbound from a CONNECT record's fields and fds; owns ``fds`` on success.

    ProtocolError (``fds`` left to the caller) if they are not what a
    connection needs.
    """
    if len(fds) != L.CONNECT_FDS:
        raise ProtocolError(f"a CONNECT record carries {L.CONNECT_FDS} fds, not {len(fds)}")
    if nslots & (nslots - 1) or not 1 <= nslots <= max_slots:
        raise ProtocolError(f"a connection asked for {nslots} slots (at most {max_slots})")
    if creds is None:
        raise ProtocolError("a CONNECT record came without the sender's credentials")
    sock_fd, ring_fd, doorbell = fds
    if not eventfd.adopt(doorbell):
        raise ProtocolError("a connection's doorbell is not an eventfd")
    try:
        seals = memfd.get_seals(ring_fd)
        size = os.fstat(ring_fd).st_size
    except OSError:
        raise ProtocolError("a connection's ring is not a memfd") from None
    if seals & (memfd.SEAL_SHRINK | memfd.SEAL_GROW) != memfd.SEAL_SHRINK | memfd.SEAL_GROW:
        raise ProtocolError("a connection's ring does not have its size sealed")
    if size != L.ring_size(nslots):
        raise ProtocolError(f"a ring of {nslots} slots has {L.ring_size(nslots)} bytes, not {size}")
    sock = _adopt_seqpacket(sock_fd)
    try:
        mm = mmap.mmap(ring_fd, size, flags=mmap.MAP_SHARED)
    except OSError as e:
        sock.detach()
        raise ProtocolError(f"a connection's ring cannot be mapped: {e.strerror}") from None
    magic, version, _, ring_slots, slot_size = L.CONTROL.unpack_from(mm, 0)
    if magic != L.RING_MAGIC or version != L.VERSION or ring_slots != nslots or slot_size != L.SLOT_SIZE:
        mm.close()
        sock.detach()
        raise ProtocolError("a connection's ring header does not match its CONNECT record")
    os.close(ring_fd)  # the mapping is all we need of it
    fds.clear()
    inbound = Inbound(mm, nslots, sock, doorbell, Sender(*creds))
    inbound.token = token
    return inbound


def _adopt_seqpacket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise ProtocolError("a connection's socket is not a socket") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise ProtocolError("a connection's socket is not AF_UNIX SOCK_SEQPACKET")
    sock.setblocking(False)
    return sock


class Inbound:
    """The receiver's view of one connection (see the module docstring)."""

    __slots__ = (
        "mm", "nslots", "_mask", "_w", "_q", "_head_ptr", "_credits", "sock", "doorbell",
        "sender", "tail", "granted", "reclaimed", "segments", "closed",
        "freed", "idle", "active", "token", "allowed", "data_freed", "__weakref__",
    )

    def __init__(self, mm: mmap.mmap, nslots: int, sock: socket.socket, doorbell: int,
                 sender: Sender) -> None:
        self.mm = mm
        self.nslots = nslots
        self._mask = nslots - 1
        self._w, self._q, self._head_ptr, self._credits = L.control_views(mm)
        self.sock = sock
        self.doorbell = doorbell
        self.sender = sender
        self.tail = 0  # messages read (ours; never read back from shared memory)
        self.granted = 0  # credits ever granted
        self.reclaimed = 0  # credits ever taken back
        self.allowed = 0  # granted - reclaimed: messages it may have published in all
        self.segments: dict[int, SegmentReader] = {}
        self.closed = False
        # The receiver's bookkeeping (port.inbox):
        self.freed = 0  # credits freed by delivering its messages, not granted back yet
        self.idle = 0  # receives in a row that found nothing new on it
        self.active = False  # polled without a doorbell (RX_SLEEPING clear while awake)
        self.token = 0  # names the connection in the sender's door records
        self.data_freed = False  # room freed for the sender: a payload copied out, a record read

    # -- reading ---------------------------------------------------------------

    def published(self) -> int:
        """Messages published and not read yet, checked (ProtocolError if the
        sender wrote an impossible HEAD)."""
        h = self._q[_HEAD_Q] if TSO else load_u64(self._head_ptr)
        n = h - self.tail
        if n and (n < 0 or n > self.nslots or h > self.allowed):
            raise ProtocolError(
                f"the sender published message {h} but {self.tail} were read, "
                f"{self.allowed} allowed and the ring holds {self.nslots}"
            )
        return n

    def take_one(self) -> Message | None:
        """The next message if exactly one is published and it is an ordinary
        small one (the common case, made cheap); None otherwise: use
        ``published`` and ``read``."""
        tail = self.tail
        h = self._q[_HEAD_Q] if TSO else load_u64(self._head_ptr)
        if h != tail + 1 or h > self.allowed:
            return None
        mm = self.mm
        off = _CONTROL + (tail & self._mask) * _SLOT_SIZE
        size, handle_count, msg_type, reserved, priority, txid, flags, fd_count, seg, granule = (
            _unpack_slot(mm, off)
        )
        if flags or handle_count or reserved or size > _INLINE_MAX:
            return None
        self.tail = h
        start = off + _SLOT_HEAD
        msg = _new(_Message)  # Message._received, inlined: this path is hot
        msg.msg_type = msg_type
        msg._payload = mm[start:start + size]
        msg.handles = _NO_HANDLES  # (attach_handle makes it a list)
        msg.txid = txid
        msg.priority = priority
        msg.sender = self.sender
        return msg

    def read(self, count: int, out: list[Message]) -> None:
        """Read ``count`` published messages (from ``published()``) into ``out``.

        On ProtocolError the messages read before the bad one are in ``out``
        and ``tail`` is past them; the connection must then be dropped. On
        OutOfFds nothing of that message was consumed.
        """
        mm = self.mm
        mask = self._mask
        tail = self.tail
        sender = self.sender
        append = out.append
        for _ in range(count):
            off = _CONTROL + (tail & mask) * _SLOT_SIZE
            size, handle_count, msg_type, reserved, priority, txid, flags, fd_count, seg, granule = (
                _unpack_slot(mm, off)
            )
            if flags == 0 and not (handle_count or reserved) and size <= _INLINE_MAX:  # the common case
                start = off + _SLOT_HEAD
                msg = _new(_Message)  # Message._received, inlined
                msg.msg_type = msg_type
                msg._payload = mm[start:start + size]
                msg.handles = _NO_HANDLES
                msg.txid = txid
                msg.priority = priority
                msg.sender = sender
                append(msg)
            else:
                append(self._read_slow(off, size, handle_count, msg_type, reserved, priority,
                                       txid, flags, fd_count, seg, granule))
            tail += 1
            self.tail = tail

    def _read_slow(self, off: int, size: int, handle_count: int, msg_type: int, reserved: int,
                   priority: int, txid: int, flags: int, fd_count: int, seg: int,
                   granule: int) -> Message:
        if reserved:
            raise ProtocolError(f"a slot's reserved field is {reserved}, must be 0")
        if flags & ~L.SLOT_KNOWN:
            raise ProtocolError(f"a slot has unknown flags {flags & ~L.SLOT_KNOWN:#x}")
        if bool(flags & L.SLOT_FDS) != bool(handle_count):
            raise ProtocolError(f"a slot with {handle_count} handles has flags {flags:#x}")
        if handle_count > cmsg.MAX_FDS or fd_count > cmsg.MAX_FDS:  # (a handle may carry no fd)
            raise ProtocolError(f"a slot names {handle_count} handles and {fd_count} fds")
        if flags & L.SLOT_DATA:
            segment = self._segment(seg)
            offset = granule * L.GRANULE
            segment.check(offset, size)
            payload: bytes | memoryview | None = None
        else:
            if size > L.INLINE_MAX or flags & L.SLOT_LOAN:
                raise ProtocolError(f"an inline payload of {size} bytes (at most {L.INLINE_MAX})")
            start = off + L.SLOT_HEAD
            payload = self.mm[start:start + size]
        handles = self._read_handles(handle_count, fd_count) if handle_count else []
        if payload is None:  # taken last: nothing to undo if the handles fail
            if flags & L.SLOT_LOAN or size > COPY_LIMIT:
                payload = segment.view(offset, size)
            else:
                payload = segment.copy(offset, size)
                self.data_freed = True
        return _received(msg_type, payload, handles, priority, txid, self.sender)

    def _segment(self, seg_id: int) -> SegmentReader:
        segment = self.segments.get(seg_id)
        if segment is not None:
            return segment
        # Not seen yet: its record is the next one on the socket (after those
        # of segments announced by sends that failed then, if any).
        while seg_id not in self.segments:
            make_room(1 + MAPPING_FDS, self.doorbell, "a data segment")  # (lost at EMFILE)
            data, fds = self._next_record(1)
            if not _is_segment_record(data):
                cmsg.close_fds(fds)
                raise ProtocolError(f"a slot uses data segment {seg_id}, which was never announced")
            self._adopt_segment(data, fds)
        return self.segments[seg_id]

    def _adopt_segment(self, data: bytes, fds: list[int]) -> None:
        """Map the segment a REC_SEGMENT record announces (closing its fds)."""
        try:
            _, new_id = L.SEGMENT_RECORD.unpack(data)
            if len(fds) != 1:
                raise ProtocolError(f"a data segment's record carries {len(fds)} fds")
            if new_id in self.segments:
                raise ProtocolError(f"data segment {new_id} was announced twice")
            if len(self.segments) >= L.MAX_SEGMENTS:
                self._drop_idle_segments()
                if len(self.segments) >= L.MAX_SEGMENTS:
                    raise ProtocolError(f"more than {L.MAX_SEGMENTS} data segments")
            segment = SegmentReader(fds[0], new_id, self._payload_released)
        finally:
            cmsg.close_fds(fds)
        self.segments[new_id] = segment

    def _drop_idle_segments(self) -> None:
        """Forget segments the sender retired (no view of ours left in them)."""
        for seg_id, segment in list(self.segments.items()):
            if not segment._views:
                del self.segments[seg_id]
                segment.close()

    def _read_handles(self, handle_count: int, fd_count: int) -> list[Handle]:
        # (room for a segment's record too: a send that failed after
        # announcing a new segment leaves it before this one)
        make_room(max(fd_count, 1 + MAPPING_FDS), self.doorbell)
        data, fds = self._next_record(fd_count)
        while _is_segment_record(data):
            self._adopt_segment(data, fds)
            make_room(max(fd_count, 1 + MAPPING_FDS), self.doorbell)
            data, fds = self._next_record(fd_count)
        try:
            kind, count = L.HANDLES_HEAD.unpack_from(data) if len(data) >= L.HANDLES_HEAD.size else (0, 0)
            if kind != L.REC_HANDLES or count != handle_count:
                raise ProtocolError(
                    f"a slot with {handle_count} handles found no handles record of its own"
                )
            if len(fds) != fd_count:
                raise ProtocolError(f"a handles record carries {len(fds)} fds, the slot says {fd_count}")
            if len(data) != L.HANDLES_HEAD.size + wire.DESCRIPTOR_SIZE * count:
                raise ProtocolError(f"a handles record of {len(data)} bytes for {count} handles")
            return wire.decode_handles(data, L.HANDLES_HEAD.size, count, fds)
        finally:
            cmsg.close_fds(fds)

    def _next_record(self, fd_count: int) -> tuple[bytes, list[int]]:
        """The next record on the socket; it must be there already."""
        for _ in range(2):
            try:
                data, anc, msg_flags, _ = self.sock.recvmsg(L.RECORD_MAX, _ANC_SIZE, _RECV_FLAGS)
                break
            except BlockingIOError:
                raise ProtocolError("a slot's record was not sent before the slot") from None
            except ConnectionResetError:
                # The sender closed with records of ours unread (WAKEs): the
                # kernel says so once, then hands over what it had sent.
                continue
            except OSError as e:
                raise ProtocolError(f"a slot's record cannot be read: {e.strerror}") from None
        else:
            raise ProtocolError("a slot's record cannot be read: the connection was reset")
        fds: list[int] = []
        for level, kind, raw in anc:
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(raw[: len(raw) - len(raw) % 4])
                fds.extend(got)
        if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            cmsg.close_fds(fds)
            lost = "fds (EMFILE: this process is out of fds)" if msg_flags & socket.MSG_CTRUNC else "bytes"
            raise ProtocolError(f"a record lost {lost} on the way")
        if not data and not fds:
            raise ProtocolError("the sender hung up before sending a slot's record")
        self.data_freed = True  # room on the socket: a sender may wait for it
        return data, fds

    # -- credits ---------------------------------------------------------------

    def grant(self, n: int) -> None:
        """Give the sender ``n`` more credits."""
        if n > 0:
            _fetch_add(self._credits, n, _SEQ_CST)
            self.granted += n
            self.allowed += n

    def reclaim(self) -> int:
        """Take back the credits the sender holds unused; how many.

        ProtocolError if the sender claims more than it was granted.
        """
        w = self._w[L.OFF_CREDITS >> 2]
        want = w - (1 << 32) if w & 0x8000_0000 else w
        if want <= 0:
            self.check_credits(want)
            return 0
        old = _fetch_add(self._credits, (-want) & 0xFFFF_FFFF, _SEQ_CST)
        old = old - (1 << 32) if old & 0x8000_0000 else old
        got = max(0, min(old, want))
        if got < want:  # the sender took some meanwhile: give back what was not there
            _fetch_add(self._credits, want - got, _SEQ_CST)
        published = self._q[L.OFF_HEAD >> 3] if TSO else load_u64(self._head_ptr)
        if got + published > self.allowed:
            raise ProtocolError(
                f"the sender held {got} credits and published {published} messages "
                f"but was granted {self.granted - self.reclaimed}"
            )
        self.reclaimed += got
        self.allowed -= got
        return got

    def check_credits(self, word: int | None = None) -> None:
        """ProtocolError if the CREDITS word (``word``, read before) says the
        sender holds fewer credits than it was allowed and did not publish:
        one that forged it down would keep credits nobody can take back.
        (A sender has at most one credit taken and not yet published.)"""
        if word is None:
            word = self.credits_left()
        published = self._q[L.OFF_HEAD >> 3] if TSO else load_u64(self._head_ptr)  # (read after)
        if word < self.allowed - published - 1:
            raise ProtocolError(
                f"the sender says it holds {word} credits, but {self.allowed - published} "
                "it was allowed are unused"
            )

    def credits_left(self) -> int:
        """The sender's unused credits as the shared word says now (signed; the
        sender may lie: only ``reclaim`` checks)."""
        w = self._w[L.OFF_CREDITS >> 2]
        return w - (1 << 32) if w & 0x8000_0000 else w

    def owed(self) -> int:
        """Credits this connection holds or turned into messages not read yet."""
        return self.allowed - self.tail

    # -- the sender's sleep ------------------------------------------------------

    def tx_waiting(self) -> bool:
        return bool(self._w[L.OFF_TX_STATE >> 2] & L.TX_WAITING)

    def wake_sender(self) -> None:
        """Send a WAKE record (the sender sleeps in poll on its socket)."""
        try:
            self.sock.send(_WAKE, _DONTWAIT)
        except OSError:
            pass  # full of WAKEs already, or gone: either way it will look

    def _payload_released(self) -> None:
        """A zero-copy payload's last view went: a sender waiting for data room
        must hear of it (this runs from garbage collection, any thread)."""
        if self.closed:
            return
        full_fence()  # the tag store before the TX_WAITING load (StoreLoad, even on x86)
        if self.tx_waiting():
            self.wake_sender()

    def set_sleeping(self, sleeping: bool) -> None:
        """RX_STATE: ask the sender to write the doorbell after publishing."""
        self._w[L.OFF_RX_STATE >> 2] = L.RX_SLEEPING if sleeping else 0

    # -- closing ---------------------------------------------------------------

    def forget(self) -> None:
        """Close this process's copies (after fork), leaving shared state alone."""
        self.closed = True
        self.sock.close()
        os.close(self.doorbell)
        for segment in self.segments.values():
            segment.close()
        self.segments.clear()
        self._w.release()
        self._q.release()
        try:
            self.mm.close()
        except BufferError:
            pass

    def close(self, reason: int) -> None:
        """End the connection: tell the sender why, wake it, let go of everything."""
        if self.closed:
            return
        self.closed = True
        self._w[L.OFF_RX_CLOSED >> 2] = reason
        # No credit will ever do again: a sender's next take fails, and its
        # slow path reads RX_CLOSED (the fast path need not look).
        _fetch_add(self._credits, _POISON, _SEQ_CST)
        self._w[L.OFF_RX_STATE >> 2] = L.RX_SLEEPING  # a late sender still rings: harmless
        full_fence()
        self.wake_sender()
        self.sock.close()
        os.close(self.doorbell)
        for segment in self.segments.values():
            # With payloads still viewed, the reader goes and the views hold
            # the mapping: the last to go unmaps it (a reader kept here would
            # keep it, and its fd, until a cyclic garbage collection).
            segment.close()
        self.segments.clear()
        self._w.release()
        self._q.release()
        self.mm.close()


def _is_segment_record(data: bytes) -> bool:
    return len(data) == L.SEGMENT_RECORD.size and L.RECORD_KIND.unpack_from(data)[0] == L.REC_SEGMENT


def make_room(fd_count: int, any_fd: int, what: str = "a queued message's handles") -> None:
    """OutOfFds unless ``fd_count`` fds can be opened right now.

    The kernel drops the fds of a record it cannot install (EMFILE) and they
    can never be got back: check first, with as many dups (of ``any_fd``,
    an open fd) as are needed.
    """
    probes: list[int] = []
    try:
        for _ in range(fd_count):
            probes.append(os.dup(any_fd))
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise OutOfFds(fd_count, what) from None
        raise
    finally:
        cmsg.close_fds(probes)
