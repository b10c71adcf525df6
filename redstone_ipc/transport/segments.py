"""Data segments: where payloads that do not fit a slot travel, without copies.

A segment is a memfd the *sender* creates, maps read-write, and announces to
the receiver on the connection's socket (``REC_SEGMENT``). Its data area is a
byte ring of a power-of-two size (``layout``):

* the sender allocates in order, in ``GRANULE`` units, never across the end
  of the ring (it skips the tail instead), and reuses memory only behind
  the oldest allocation the receiver has *released*;
* the receiver releases an allocation by setting the tag byte of its first
  granule to ``TAG_RELEASED`` (a release store), as soon as it has copied
  the payload out, or when the last view of a zero-copy payload goes.

Releases come in any order (a view may outlive later messages); the sender
keeps its allocations in a deque and advances past released ones when it
needs room. One byte per 64-byte granule, written by the receiver only after
the sender cleared it for that allocation, so there is no ABA: a tag set for
an old allocation was cleared again before the memory was handed out anew.

``SegmentWriter`` is the sender's side, ``SegmentReader`` the receiver's.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import weakref
from collections import deque
from typing import Callable

from ..errors import OutOfMemory, ProtocolError
from ..linux import memfd
from ..linux.memfd import buffer_address
from ..linux.ordering import TSO, load_u8, store_u8
from . import layout as L

__all__ = ["SegmentWriter", "SegmentReader", "segment_size_for"]

_c_void_p = ctypes.c_void_p


def segment_size_for(payload: int, current: int = 0) -> int:
    """The data size of a new segment for a payload of ``payload`` bytes:
    at least four such payloads and twice the current segment (but growth
    alone stops at GROWTH_LIMIT: a segment's pages stay touched), a power of
    two between MIN_SEGMENT and MAX_SEGMENT."""
    want = max(L.MIN_SEGMENT, 4 * payload, min(2 * current, L.GROWTH_LIMIT))
    size = 1
    while size < want:
        size <<= 1
    return min(size, L.MAX_SEGMENT)


class SegmentWriter:
    """The sender's side of one segment: allocation and reuse.

    ``allocate(n)`` returns the data offset of ``n`` free bytes, or -1 when
    the ring is full of unreleased payloads (wait for the receiver, or make
    a bigger segment). Not thread-safe: the sender's lock covers it.
    """

    __slots__ = (
        "id", "fd", "mm", "size", "data", "tags", "_tag_base", "_head", "_tail",
        "_pending", "_mask",
    )

    def __init__(self, segment_id: int, data_size: int) -> None:
        total = L.segment_size(data_size)
        try:
            fd = memfd.memfd_create("redstone-segment", total)  # size sealed
        except OSError as e:
            if e.errno in (errno.ENOMEM, errno.ENOSPC, errno.EFBIG):
                raise OutOfMemory(f"the kernel refused a data segment of {total} bytes: {e.strerror}") from None
            raise
        try:
            mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ENOMEM:
                raise OutOfMemory(f"no address space for a data segment of {total} bytes") from None
            raise
        except BaseException:
            os.close(fd)
            raise
        L.SEGMENT.pack_into(mm, 0, L.SEGMENT_MAGIC, L.VERSION, 0, segment_id, 0, data_size)
        self.id = segment_id
        self.fd = fd  # sent once (REC_SEGMENT), then closed by the caller
        self.mm = mm
        self.size = data_size
        self._mask = data_size - 1
        data_start = L.SEGMENT_HEADER + L.tags_size(data_size)
        self.data = memoryview(mm)[data_start:data_start + data_size]
        self.tags = memoryview(mm)[L.SEGMENT_HEADER:L.SEGMENT_HEADER + data_size // L.GRANULE]
        self._tag_base = buffer_address(mm) + L.SEGMENT_HEADER
        self._head = 0  # bytes ever allocated (unwrapped)
        self._tail = 0  # start of the oldest allocation not known to be released
        self._pending: deque[tuple[int, int]] = deque()  # (start, end) unwrapped

    def allocate(self, n: int) -> int:
        """Offset (bytes, granule-aligned) of ``n`` bytes of data, or -1."""
        need = (n + L.GRANULE - 1) & ~(L.GRANULE - 1) or L.GRANULE
        size = self.size
        head = self._head
        pos = head & self._mask
        if pos + need > size:  # never wrap inside a payload: skip the tail
            if not self._room(size - pos + need):
                return -1
            self._pending.append((head, head + size - pos))
            self._release_local(pos)
            head += size - pos
            pos = 0
        elif not self._room(need):
            return -1
        self._pending.append((head, head + need))
        self.tags[pos // L.GRANULE] = 0  # ours again until the receiver says so
        self._head = head + need
        return pos

    def release_unsent(self, offset: int) -> None:
        """Give back an allocation that was never published (a dropped loan)."""
        self._release_local(offset)

    def _release_local(self, offset: int) -> None:
        self.tags[offset // L.GRANULE] = L.TAG_RELEASED

    def _room(self, need: int) -> bool:
        """Whether ``need`` more bytes fit, after reclaiming what was released."""
        if self._head + need - self._tail <= self.size:
            return True
        pending = self._pending
        tags = self.tags
        mask = self._mask
        while pending:
            start, end = pending[0]
            g = (start & mask) // L.GRANULE
            released = tags[g] if TSO else load_u8(_c_void_p(self._tag_base + g))
            if released != L.TAG_RELEASED:
                break
            pending.popleft()
            self._tail = end
        if not pending:
            self._tail = self._head
        return self._head + need - self._tail <= self.size

    def fits(self, n: int) -> bool:
        """Whether ``allocate(n)`` would succeed now (it reclaims, allocates nothing)."""
        need = (n + L.GRANULE - 1) & ~(L.GRANULE - 1) or L.GRANULE
        pos = self._head & self._mask
        if pos + need > self.size:
            return self._room(self.size - pos + need)
        return self._room(need)

    def idle(self) -> bool:
        """Whether every allocation was released (the segment can retire)."""
        self._room(self.size + 1)  # reclaims all it can, then answers no
        return self._tail == self._head

    def close(self) -> None:
        self.data.release()
        self.tags.release()
        try:
            self.mm.close()
        except BufferError:  # a loan's view is still held: the mapping goes with it
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SegmentReader:
    """The receiver's side of one segment: checked mapping, copies, views.

    ``view(offset, n)`` hands out a read-only memoryview of the payload that
    releases it when the last reference to it goes; ``copy(offset, n)``
    copies it out and releases it at once.
    """

    __slots__ = ("id", "mm", "size", "_data_start", "_tags", "_tag_base", "_views", "__weakref__",
                 "on_release")

    def __init__(self, fd: int, segment_id: int, on_release: Callable[[], None]) -> None:
        """Map a segment that arrived on a connection; ProtocolError if it is
        not one (the caller closes ``fd``)."""
        try:
            seals = memfd.get_seals(fd)
            total = os.fstat(fd).st_size
        except OSError:
            raise ProtocolError("a data segment arrived as an fd that is not a memfd") from None
        if seals & (memfd.SEAL_SHRINK | memfd.SEAL_GROW) != memfd.SEAL_SHRINK | memfd.SEAL_GROW:
            raise ProtocolError("a data segment arrived whose size is not sealed")
        if total < L.SEGMENT_HEADER + L.PAGE:
            raise ProtocolError(f"a data segment of {total} bytes is too small")
        try:
            mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED)
        except OSError as e:
            raise ProtocolError(f"a data segment cannot be mapped: {e.strerror}") from None
        magic, version, _, seg_id, _, size = L.SEGMENT.unpack_from(mm, 0)
        if (
            magic != L.SEGMENT_MAGIC or version != L.VERSION or seg_id != segment_id
            or size < L.MIN_SEGMENT or size > L.MAX_SEGMENT or size & (size - 1)
            or L.segment_size(size) != total
        ):
            mm.close()
            raise ProtocolError(
                f"a data segment's header does not match its record (id {seg_id} vs "
                f"{segment_id}, data size {size}, file {total} bytes)"
            )
        self.id = segment_id
        self.mm = mm
        self.size = size
        self._data_start = L.SEGMENT_HEADER + L.tags_size(size)
        self._tags = memoryview(mm)[L.SEGMENT_HEADER:L.SEGMENT_HEADER + size // L.GRANULE]
        self._tag_base = buffer_address(mm) + L.SEGMENT_HEADER
        self._views = 0  # zero-copy payloads still alive
        self.on_release = on_release  # the connection wants to know (a sender may wait)

    def check(self, offset: int, n: int) -> None:
        """ProtocolError unless ``[offset, offset+n)`` lies in the data ring (and
        starts in it: releasing it writes the tag of its first granule)."""
        if offset + n > self.size or n < 0 or offset >= self.size:
            raise ProtocolError(
                f"a payload of {n} bytes at offset {offset} overruns its "
                f"{self.size}-byte data segment"
            )

    def copy(self, offset: int, n: int) -> bytes:
        """The payload's bytes; the allocation is released at once."""
        start = self._data_start + offset
        data = self.mm[start:start + n]
        self.release(offset)
        return data

    def view(self, offset: int, n: int) -> memoryview:
        """A read-only view of the payload, released when its last reference goes."""
        start = self._data_start + offset
        holder = (ctypes.c_char * n).from_buffer(self.mm, start)
        self._views += 1
        weakref.finalize(holder, _release_view, weakref.ref(self), offset)
        return memoryview(holder).cast("B").toreadonly()

    def release(self, offset: int) -> None:
        g = offset // L.GRANULE
        if TSO:
            self._tags[g] = L.TAG_RELEASED
        else:
            store_u8(_c_void_p(self._tag_base + g), L.TAG_RELEASED)

    def close(self) -> bool:
        """Unmap, unless views are alive; whether done. With views alive, drop
        this reader (nothing may keep it): each view holds the mapping
        itself, and the last one to go unmaps it (the mmap's own dealloc)."""
        if self._views:
            return False
        self._tags.release()
        self.mm.close()
        return True


def _release_view(segment_ref: weakref.ref[SegmentReader], offset: int) -> None:
    segment = segment_ref()
    if segment is None or segment.mm.closed:
        return  # (its connection ended: nobody reads the tags any more)
    segment._views -= 1
    segment.release(offset)
    segment.on_release()
