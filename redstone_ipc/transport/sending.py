"""The sending side of a connection: write a slot, publish, ring if asked.

An :class:`Outbound` is made by the sending process (one per port or
channel endpoint it sends to), announced to the receiver through the door
(``connect_record``), and from then on used only by that process. It owns
the ring mapping, its end of the connection socket, the doorbell it writes,
and its data segments. It is mechanism only: it does not wait, choose or
retry; ``port.outlet`` does (and holds the lock that makes one thread at a
time call ``try_send``).

``try_send`` returns one of:

* ``SENT`` — published; the caller then calls ``ring_if_asleep()`` *after*
  a full fence (releasing its lock is one on x86; ``ordering.full_fence``);
* ``NO_CREDIT`` — the receiver granted no more room to this connection;
* ``NO_DATA_ROOM`` — the data segments are full of payloads the receiver
  has not released yet (views it keeps alive), and no bigger one may be made;
* ``NO_SOCKET_ROOM`` — the connection socket is full of records (handles,
  segments) the receiver has not read yet;
* ``CLOSED`` — the receiver ended the connection (``closed_reason``).
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import struct

from ..core.object import HANDLE_TABLE, Handle, KernelObject, Rights
from ..errors import MessageTooLarge
from ..linux import cmsg, eventfd, memfd
from ..linux.atomic import _fetch_add
from ..linux.ordering import TSO, store_u64
from ..message import wire
from . import layout as L
from .loan import Loan
from .segments import SegmentWriter, segment_size_for

__all__ = ["Outbound", "SENT", "NO_CREDIT", "NO_DATA_ROOM", "NO_SOCKET_ROOM", "CLOSED"]

SENT = 0
NO_CREDIT = 1
NO_DATA_ROOM = 2
CLOSED = 3
NO_SOCKET_ROOM = 4
# Why NO_SOCKET_ROOM (``Outbound.socket_blocked``):
SOCKET_FULL = 1  # the receiver has not read the records before
FDS_IN_FLIGHT = 2  # ETOOMANYREFS: this user has RLIMIT_NOFILE fds in sockets, unread

_MINUS_ONE = 0xFFFF_FFFF  # -1 as the u32 that libatomic's fetch_add takes
_SEQ_CST = 5
_I32 = (-(2**31), 2**31 - 1)
_DONTWAIT = int(socket.MSG_DONTWAIT)
_pack_slot = L.SLOT.pack_into
_pack_plain = L.SLOT_PLAIN.pack_into
_WAKE_RECORD_SIZE = L.RECORD_KIND.size
_RX_CLOSED = L.OFF_RX_CLOSED >> 2  # indexes into the control page as u32 / u64 words
_RX_STATE = L.OFF_RX_STATE >> 2
_HEAD_Q = L.OFF_HEAD >> 3
_CONTROL = L.CONTROL_SIZE
_SLOT_SIZE = L.SLOT_SIZE
_SLOT_HEAD = L.SLOT_HEAD
_INLINE_MAX = L.INLINE_MAX


class Outbound:
    """This process's connection to one receiver (see the module docstring)."""

    __slots__ = (
        "mm", "nslots", "_mask", "_w", "_q", "_head", "_head_ptr", "_credits", "sock",
        "_doorbell", "_theirs", "_ring_fd", "_segments", "_current", "_next_segment_id",
        "closed", "token", "_final_reason", "data_blocked", "socket_blocked", "__weakref__",
    )

    def __init__(self, nslots: int) -> None:
        if nslots & (nslots - 1) or not 1 <= nslots <= L.MAX_SLOTS:
            raise ValueError(f"nslots must be a power of two up to {L.MAX_SLOTS}, not {nslots}")
        size = L.ring_size(nslots)
        fds: list[int] = []
        mine = theirs = None
        try:
            fds.append(memfd.memfd_create("redstone-ring", size))  # size sealed
            fds.append(eventfd.counter())
            mine, theirs = cmsg.seqpacket_pair()
            mm = mmap.mmap(fds[0], size, flags=mmap.MAP_SHARED)
        except BaseException:
            cmsg.close_fds(fds)
            for s in (mine, theirs):
                if s is not None:
                    s.close()
            raise
        L.CONTROL.pack_into(mm, 0, L.RING_MAGIC, L.VERSION, 0, nslots, L.SLOT_SIZE)
        self.mm = mm
        self.nslots = nslots
        self._mask = nslots - 1
        self._w, self._q, self._head_ptr, self._credits = L.control_views(mm)
        self._head = 0
        self.sock = mine
        self._theirs: socket.socket | None = theirs
        self._ring_fd = fds[0]
        self._doorbell = fds[1]
        self._segments: dict[int, SegmentWriter] = {}
        self._current: SegmentWriter | None = None
        self._next_segment_id = 1
        self.closed = False
        self._final_reason = 0
        # What the last failed send lacked besides credits (room_now looks at it).
        self.data_blocked = 0  # the size of a payload that found no data room
        self.socket_blocked = 0  # SOCKET_FULL, or FDS_IN_FLIGHT (no event says when that ends)
        self.token = int.from_bytes(os.urandom(8), "little")

    # -- connecting ------------------------------------------------------------

    def connect_record(self) -> tuple[bytes, list[int]]:
        """The CONNECT record for the door, and the fds it carries."""
        assert self._theirs is not None
        head = L.DOOR_RECORD.pack(L.DOOR_MAGIC, L.VERSION, L.DOOR_CONNECT, self.nslots, 0, self.token)
        return head, [self._theirs.fileno(), self._ring_fd, self._doorbell]

    def want_record(self) -> bytes:
        """The WANT record: this connection waits for room."""
        return L.DOOR_RECORD.pack(L.DOOR_MAGIC, L.VERSION, L.DOOR_WANT, 0, 0, self.token)

    def connected(self) -> None:
        """The CONNECT record went out: drop what only the receiver needs."""
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None
        if self._ring_fd >= 0:
            os.close(self._ring_fd)
            self._ring_fd = -1

    # -- sending ---------------------------------------------------------------

    def try_send(self, payload: object, msg_type: int, priority: int, txid: int,
                 handles: list[Handle]) -> int:
        """Publish one message (see the module docstring for the result)."""
        cls = payload.__class__
        # The common case first: a small payload of bytes, no handle.
        if (cls is bytes or cls is memoryview) and not handles:
            size = len(payload) if cls is bytes else payload.nbytes  # type: ignore[arg-type, attr-defined]
            if size <= _INLINE_MAX and (cls is bytes or payload.format == "B"):  # type: ignore[attr-defined]
                credits = self._credits
                old = _fetch_add(credits, _MINUS_ONE, _SEQ_CST)
                if not 0 < old < 0x8000_0000:  # it was 0, or negative: no credit
                    _fetch_add(credits, 1, _SEQ_CST)
                    self.data_blocked = 0
                    self.socket_blocked = 0
                    # (a closed connection's credits are poisoned: say why)
                    return CLOSED if self._w[_RX_CLOSED] else NO_CREDIT
                h = self._head
                off = _CONTROL + (h & self._mask) * _SLOT_SIZE
                mm = self.mm
                try:  # (struct checks msg_type, priority and txid for us)
                    _pack_plain(mm, off, size, msg_type, priority, txid)
                except struct.error:
                    _fetch_add(credits, 1, _SEQ_CST)
                    raise ValueError(
                        f"msg_type and txid must fit a u32, priority an i32 ({msg_type}, "
                        f"{txid}, {priority})"
                    ) from None
                mm[off + _SLOT_HEAD:off + _SLOT_HEAD + size] = payload  # type: ignore[call-overload]
                h += 1
                self._head = h
                if TSO:
                    self._q[_HEAD_Q] = h
                else:
                    store_u64(self._head_ptr, h)
                return SENT
        return self._try_send_general(payload, msg_type, priority, txid, handles)

    def _try_send_general(self, payload: object, msg_type: int, priority: int, txid: int,
                          handles: list[Handle]) -> int:
        """try_send for loans, data segments, handles and any buffer."""
        if self._w[_RX_CLOSED]:
            return CLOSED
        if payload.__class__ is Loan:
            size = payload.nbytes  # type: ignore[attr-defined]
        else:
            view = payload if payload.__class__ is memoryview else memoryview(payload)  # type: ignore[arg-type]
            size = view.nbytes  # type: ignore[union-attr]
        if not _I32[0] <= priority <= _I32[1]:
            raise ValueError(f"priority must fit an i32, not {priority}")
        if size > 0xFFFF_FFFF:  # (a bytearray may have grown since the Message checked)
            raise MessageTooLarge(f"a payload is at most {0xFFFF_FFFF} bytes, not {size}")
        credits = self._credits
        old = _fetch_add(credits, _MINUS_ONE, _SEQ_CST)
        if not 0 < old < 0x8000_0000:  # it was 0, or negative: no credit
            _fetch_add(credits, 1, _SEQ_CST)
            self.data_blocked = 0
            self.socket_blocked = 0
            return NO_CREDIT
        # From here on the credit is ours: publish, or give it back.
        h = self._head
        off = L.CONTROL_SIZE + (h & self._mask) * L.SLOT_SIZE
        mm = self.mm
        flags = 0
        segment_id = 0
        granule = 0
        placed = None
        try:
            if payload.__class__ is Loan:
                segment, offset = self._take_loan(payload)  # type: ignore[arg-type]
                flags = L.SLOT_DATA | L.SLOT_LOAN
                segment_id = segment.id
                granule = offset // L.GRANULE
            elif size <= L.INLINE_MAX:
                if size:
                    start = off + L.SLOT_HEAD
                    mm[start:start + size] = view if view.format == "B" else view.cast("B")
            else:
                placed = self._allocate(size)
                if placed is None:
                    _fetch_add(credits, 1, _SEQ_CST)
                    self.data_blocked = size
                    self.socket_blocked = 0
                    return NO_DATA_ROOM
                self.data_blocked = 0
                segment, offset = placed
                segment.data[offset:offset + size] = view if view.format == "B" else view.cast("B")
                flags = L.SLOT_DATA
                segment_id = segment.id
                granule = offset // L.GRANULE
            fd_count = 0
            if handles:
                fd_count = self._send_handles(handles)  # before the slot is visible
                flags |= L.SLOT_FDS
            _pack_slot(mm, off, size, len(handles), msg_type, 0, priority, txid,
                       flags, fd_count, segment_id, granule)
        except BaseException as e:
            # Nothing was published: the credit and the data room go back.
            if placed is not None:
                placed[0].release_unsent(placed[1])
            _fetch_add(credits, 1, _SEQ_CST)
            if e.__class__ is _Closed:
                return CLOSED
            if e.__class__ is _SocketFull:
                self.socket_blocked = e.args[0]
                return NO_SOCKET_ROOM
            raise
        self.socket_blocked = 0
        h += 1
        self._head = h
        if TSO:
            self._q[_HEAD_Q] = h
        else:
            store_u64(self._head_ptr, h)
        if payload.__class__ is Loan:
            payload.sent = True  # type: ignore[attr-defined]
            payload.release()  # type: ignore[attr-defined]  # the receiver reads it now: no more writes
        return SENT

    def published(self) -> int:
        """Messages published on this connection so far."""
        return self._head

    def ring_if_asleep(self) -> None:
        """After a full fence: write the doorbell if the receiver said it sleeps."""
        if self._w[_RX_STATE]:
            os.eventfd_write(self._doorbell, 1)

    def ring(self) -> None:
        """Write the doorbell (e.g. to ask the receiver for room)."""
        os.eventfd_write(self._doorbell, 1)

    def _send_handles(self, handles: list[Handle]) -> int:
        """Send the handles' record; the handles have moved when it returns.

        Raises (with every handle still valid) if the record cannot go out.
        A record that went out while the slot was not published cannot
        happen: nothing can fail between the two (the slot is packed right
        after, in memory we own).
        """
        objects: list[KernelObject] = [h._require(Rights.TRANSFER) for h in handles]
        HANDLE_TABLE.pin(objects)
        try:
            descriptors, fds = wire.encode_handles(handles, objects, cmsg.MAX_FDS)
            for handle, obj in zip(handles, objects):
                obj.prepare_transfer(handle.rights)
            record = [L.HANDLES_HEAD.pack(L.REC_HANDLES, len(handles)), *descriptors]
            try:
                cmsg.send_record(self.sock, record, fds, _DONTWAIT)
            except (BrokenPipeError, ConnectionResetError):
                raise _Closed() from None
            except BlockingIOError:
                raise _SocketFull(SOCKET_FULL) from None
            except OSError as e:
                if e.errno == errno.ETOOMANYREFS:  # this user's fds in flight: RLIMIT_NOFILE
                    raise _SocketFull(FDS_IN_FLIGHT) from None
                if e.errno == errno.EMSGSIZE:
                    raise MessageTooLarge(f"the handles' record is too large: {e}") from None
                raise
        finally:
            HANDLE_TABLE.unpin(objects)
        for handle in handles:
            handle._moved()
        return len(fds)

    # -- data segments and loans -------------------------------------------------

    def _allocate(self, size: int) -> tuple[SegmentWriter, int] | None:
        current = self._current
        if current is not None and size * 2 <= current.size:
            offset = current.allocate(size)
            if offset >= 0:
                return current, offset
            # Full of payloads the receiver has not released (it may keep
            # them): a bigger segment while there may be one, then wait.
        elif current is not None and current.size >= L.MAX_SEGMENT:
            if size > current.size:
                raise MessageTooLarge(f"a payload is at most {L.MAX_SEGMENT} bytes")
            offset = current.allocate(size)
            return (current, offset) if offset >= 0 else None
        segment = self._new_segment(size)
        if segment is None:
            return None
        offset = segment.allocate(size)
        return (segment, offset) if offset >= 0 else None

    def _new_segment(self, size: int) -> SegmentWriter | None:
        """A bigger segment for ``size``-byte payloads, announced to the receiver."""
        self._retire_idle()
        if len(self._segments) >= L.MAX_SEGMENTS:
            return None
        segment = SegmentWriter(
            self._next_segment_id,
            segment_size_for(size, self._current.size if self._current else 0),
        )
        try:
            head = L.SEGMENT_RECORD.pack(L.REC_SEGMENT, segment.id)
            try:
                cmsg.send_record(self.sock, [head], [segment.fd], _DONTWAIT)
            except (BrokenPipeError, ConnectionResetError):
                raise _Closed() from None
            except BlockingIOError:
                raise _SocketFull(SOCKET_FULL) from None
            except OSError as e:
                if e.errno == errno.ETOOMANYREFS:
                    raise _SocketFull(FDS_IN_FLIGHT) from None
                raise
        except BaseException:
            segment.close()
            raise
        os.close(segment.fd)
        segment.fd = -1
        self._next_segment_id += 1
        self._segments[segment.id] = segment
        self._current = segment
        return segment

    def _retire_idle(self) -> None:
        for seg_id, segment in list(self._segments.items()):
            if segment is not self._current and segment.idle():
                del self._segments[seg_id]
                segment.close()  # the receiver keeps its own mapping until it closes

    def try_loan(self, size: int) -> Loan | int:
        """``size`` writable bytes in a data segment (see ``transport.loan``),
        or why not: NO_DATA_ROOM, NO_SOCKET_ROOM (a new segment could not be
        announced yet) or CLOSED. MessageTooLarge above the largest segment.
        A loan takes no credit: the send does."""
        if size <= 0:
            raise ValueError(f"a loan is at least one byte, not {size}")
        self.socket_blocked = 0
        self.data_blocked = 0
        try:
            placed = self._allocate(size)
        except _Closed:
            return CLOSED
        except _SocketFull as e:
            self.socket_blocked = e.args[0]
            return NO_SOCKET_ROOM
        if placed is None:
            self.data_blocked = size
            return NO_DATA_ROOM
        segment, offset = placed
        return Loan(segment.data[offset:offset + size], self, segment, offset)

    def _take_loan(self, loan: Loan) -> tuple[SegmentWriter, int]:
        if loan.owner is not self or loan.segment is None or loan.sent:
            raise ValueError(
                "this loan belongs to another connection, was released or was sent already"
            )
        return loan.segment, loan.offset

    # -- state -----------------------------------------------------------------

    def closed_reason(self) -> int:
        """Why the receiver ended the connection (``layout.CLOSED_*``), 0 if open
        (or if it hung up without a word: it died)."""
        if self.closed:
            return self._final_reason
        return self._w[_RX_CLOSED]

    def set_waiting(self, waiting: bool) -> None:
        """Say that this sender sleeps for room (the receiver then sends REC_WAKE)."""
        if not self.closed:
            self._w[L.OFF_TX_STATE >> 2] = L.TX_WAITING if waiting else 0

    def credits(self) -> int:
        """The credits left (signed), as the word says now."""
        if self.closed:
            return 0
        v = self._w[L.OFF_CREDITS >> 2]
        return v - (1 << 32) if v & 0x8000_0000 else v

    def room_now(self, credit: bool = True) -> bool:
        """Whether the send (or, ``credit=False``, the loan) that failed would
        succeed now (call it under the lock that serialises this connection's
        sends).

        A waiting sender looks after setting ``TX_WAITING`` and a full fence:
        whatever the receiver frees after the look, it sees the flag and
        wakes us; what it freed before, the look sees.
        """
        if credit and self.credits() <= 0:
            return False
        if self.socket_blocked:
            return self.socket_blocked == SOCKET_FULL and self.socket_writable()
        size = self.data_blocked
        if not size:
            return True
        current = self._current
        if current is not None and current.fits(size):
            return True
        # Or a segment the receiver is done with retires, making way for a new one.
        return any(s is not current and s.idle() for s in self._segments.values())

    def socket_writable(self) -> bool:
        """Whether the connection socket has room for a record now."""
        if self.closed:
            return True  # (the next send reports why)
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLOUT)
        return bool(p.poll(0))

    def drain_wakes(self) -> bool:
        """Read the WAKE records waiting on the socket; False at hang-up."""
        if self.closed:
            return False
        sock = self.sock
        while True:
            try:
                data = sock.recv(_WAKE_RECORD_SIZE, _DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False

    def close(self) -> None:
        """Close everything of this connection in this process."""
        if self.closed:
            return
        self.drain_wakes()  # unread WAKEs would make the receiver's next read fail once
        self._final_reason = self._w[L.OFF_RX_CLOSED >> 2]
        self.closed = True
        self.sock.close()
        self.connected()  # (what only the receiver needed, if still here)
        os.close(self._doorbell)
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
        self._current = None
        self._w.release()
        self._q.release()
        try:
            self.mm.close()
        except BufferError:  # loans still alive: the mapping goes with them
            pass


class _Closed(Exception):
    """The connection's socket is gone (raised inside try_send, turned into CLOSED)."""


class _SocketFull(Exception):
    """The connection's socket has no room for a record (turned into
    NO_SOCKET_ROOM); its argument says why."""
