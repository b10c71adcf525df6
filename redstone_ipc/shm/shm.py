"""Shared memory: the same physical pages mapped in several processes.

The seed's ``SharedMemory`` allocates frames and maps them into address
spaces; its ``create``, ``map`` and ``unmap`` are stubs. Here a memfd is the
region: its pages are the kernel's own frames, every process that maps it sees
the same frames (``Mapping.frames()`` proves it), and the kernel frees them
when the last fd and the last mapping are gone — in every process, crashes
included. Nothing is named in ``/dev/shm``; nothing can leak.

Rights (default for a new region): READ | WRITE | MAP | DUPLICATE | TRANSFER.
``map()`` maps writable with WRITE and read-only without it. A
:class:`Mapping` has atomic loads, stores and read-modify-writes on its u32
and u64 words, ordered (acquire/release) so that data written before a
store is seen by whoever loads it, on aarch64 too.

What a read-only handle protects, and against whom
---------------------------------------------------
A handle without WRITE travels as a *read-only* fd, and before the first such
fd leaves the process the region is sealed with ``F_SEAL_FUTURE_WRITE``. From
then on the kernel refuses every new writable mapping and every ``write()``
to the region, for everyone: the receiver cannot map it writable, not even by
reopening ``/proc/self/fd/N`` read-write (same uid, or root). Mappings made
before the seal keep working, which is how a producer keeps writing into a
buffer its consumers can only read. The consequence: **map the region
writable before you send a read-only handle to it**; afterwards a new
writable mapping raises PermissionDenied.

The region's size is sealed at creation (``F_SEAL_SHRINK | F_SEAL_GROW``), so
a receiver can trust that the whole region stays mapped: no SIGBUS from a
peer truncating it.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import operator
import os
import stat
import threading
import time
import weakref
from typing import Any, Callable, NewType

from ..core.object import HANDLE_TABLE, Handle, KernelObject, ObjectType, Rights
from ..errors import (
    InvalidAddress,
    MappingInUse,
    NotMapped,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
)
from ..linux import atomic, memfd
from ..mm.page import PAGE_SIZE, frames_of, page_round_up

__all__ = ["ShmId", "SharedMemory", "Mapping"]

ShmId = NewType("ShmId", int)
"""Identifies a region system-wide: the same in every process that holds it."""


_MAX_FILE_SIZE = 2**63 - 1  # off_t


class _ShmObject(KernelObject):
    TYPE = ObjectType.SHM
    DEFAULT_RIGHTS = Rights.READ | Rights.WRITE | Rights.MAP | Rights.DUPLICATE | Rights.TRANSFER
    ALLOWED_RIGHTS = DEFAULT_RIGHTS | Rights.WAIT

    def __init__(self, fd: int, size: int, fd_writable: bool) -> None:
        super().__init__()
        self.fd = fd
        self.size = size
        self.fd_writable = fd_writable
        self.id = ShmId(os.fstat(fd).st_ino)
        self._readonly_fd: int | None = None

    def transfer_fds(self, rights: Rights) -> list[int]:
        if rights & Rights.WRITE:
            return [self.fd]
        if self._readonly_fd is None:
            self._readonly_fd = memfd.reopen_readonly(self.fd)
        return [self._readonly_fd]

    def transfer_extra(self, rights: Rights) -> int:
        return self.size

    def prepare_transfer(self, rights: Rights) -> None:
        # Sealing is for good, even if the send then fails: the receiver must
        # find the seal in place the moment it can hold the fd. A region that
        # arrived read-only is sealed already (and its fd could not add one).
        if not rights & Rights.WRITE and not memfd.get_seals(self.fd) & memfd.SEAL_FUTURE_WRITE:
            memfd.add_seals(self.fd, memfd.SEAL_FUTURE_WRITE)

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> _ShmObject:
        if len(fds) != 1:
            raise ProtocolError(f"a SHM handle carries 1 fd, got {len(fds)}")
        fd = fds[0]
        try:
            seals = memfd.get_seals(fd)
            st = os.fstat(fd)
            mode = os.O_ACCMODE & _fd_flags(fd)
        except OSError:
            raise ProtocolError("a SHM handle arrived with an fd that is not a memfd") from None
        if seals & (memfd.SEAL_SHRINK | memfd.SEAL_GROW) != memfd.SEAL_SHRINK | memfd.SEAL_GROW:
            raise ProtocolError("a SHM handle arrived whose size is not sealed")
        if not stat.S_ISREG(st.st_mode) or st.st_size != extra:
            raise ProtocolError(
                f"a SHM handle declares {extra} bytes but its memfd has {st.st_size}"
            )
        writable = mode == os.O_RDWR
        if rights & Rights.WRITE and not writable:
            raise ProtocolError("a SHM handle with WRITE arrived with a read-only fd")
        if not rights & Rights.WRITE and (writable or not seals & memfd.SEAL_FUTURE_WRITE):
            raise ProtocolError("a read-only SHM handle arrived with a writable region")
        return cls(fd, st.st_size, writable)

    def _destroy(self) -> None:
        os.close(self.fd)
        if self._readonly_fd is not None:
            os.close(self._readonly_fd)


def _fd_flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


class SharedMemory(Handle):
    """A handle to a shared-memory region.

    >>> shm = SharedMemory.create(1 << 20)      # READ|WRITE|MAP|DUPLICATE|TRANSFER
    >>> with shm.map() as m:                    # writable: the handle has WRITE
    ...     m[:5] = b"hello"
    >>> ro = shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER)
    >>> with ro.map() as view:                  # read-only: this handle has no WRITE
    ...     bytes(view[:5])
    b'hello'

    Send the handle (or a read-only duplicate) in a Message; the receiver maps
    the very same pages.
    """

    __slots__ = ()

    @classmethod
    def create(cls, size: int) -> SharedMemory:
        """A new zero-filled region of ``size`` bytes, rounded up to whole pages.

        Raises OutOfMemory when the kernel refuses the memory, ValueError for a
        size that is not positive.
        """
        if size <= 0:
            raise ValueError(f"shared memory size must be positive, not {size}")
        rounded = page_round_up(size)
        if rounded > _MAX_FILE_SIZE:
            raise OutOfMemory(f"{size} bytes is beyond any region the kernel can hold")
        try:
            fd = memfd.memfd_create("redstone-shm", rounded)
        except OSError as e:
            if e.errno in (errno.ENOMEM, errno.EFBIG, errno.ENOSPC, errno.EINVAL):
                raise OutOfMemory(f"the kernel refused {rounded} bytes: {e.strerror}") from None
            raise
        return HANDLE_TABLE.insert(_ShmObject(fd, rounded, True), _ShmObject.DEFAULT_RIGHTS, cls)

    @property
    def id(self) -> ShmId:
        """The region's id (its memfd inode): equal in every process holding it."""
        obj: _ShmObject = self._live()
        return obj.id

    @property
    def size(self) -> int:
        """The region's size in bytes: whole pages, sealed, never changes."""
        obj: _ShmObject = self._live()
        return obj.size

    def map(self, writable: bool | None = None) -> Mapping:
        """Map the whole region into this process.

        ``writable``: None (the default) maps it writable if this handle has
        WRITE and read-only otherwise, so a consumer that was given a
        read-only handle just calls ``map()``. True insists on a writable
        mapping (PermissionDenied without WRITE), False asks for a read-only
        one. Needs MAP and READ. The mapping outlives the handle: the pages
        stay until it is unmapped too.

        PermissionDenied also when a writable mapping is asked for after a
        read-only handle to the region was sent (the seal forbids it: map
        writable first); OutOfMemory when there is no address space for it.
        """
        if writable is None:
            writable = bool(self._rights & Rights.WRITE)
        needed = Rights.MAP | Rights.READ | (Rights.WRITE if writable else Rights.NONE)
        obj: _ShmObject = self._require(needed)
        if writable and not obj.fd_writable:  # pragma: no cover - rights say so first
            raise PermissionDenied("this region arrived read-only")
        try:
            return Mapping._create(obj.fd, obj.size, writable, obj.id)
        except PermissionError:
            raise PermissionDenied(
                "the region is sealed against new writable mappings: a read-only "
                "handle to it was sent; map it writable before sending one"
            ) from None
        except OSError as e:
            if e.errno == errno.ENOMEM:
                raise OutOfMemory(f"no address space for {obj.size} bytes") from None
            raise

    def fileno(self) -> int:
        """The memfd (owned by the handle: do not close it)."""
        obj: _ShmObject = self._live()
        return obj.fd


_ShmObject.HANDLE_CLASS = SharedMemory


_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF

# The ordered operations of this process's atomics mode (linux/atomic.py:
# plain accesses on x86-64, libatomic elsewhere), bound once at import.
_load32 = atomic.load_acquire_u32
_store32 = atomic.store_release_u32
_fetch_add32 = atomic.fetch_add_acq_rel_u32
_cas32 = atomic.cas_acq_rel_u32
_load64 = atomic.load_acquire_u64
_store64 = atomic.store_release_u64
_fetch_add64 = atomic.fetch_add_acq_rel_u64
_cas64 = atomic.cas_acq_rel_u64

_index = operator.index


def _u32(value: int) -> int:
    """``value`` if it is a u32; TypeError / ValueError otherwise."""
    if not 0 <= _index(value) <= _U32_MAX:
        raise ValueError(f"a u32 is 0..{_U32_MAX}, not {value}")
    return value


def _u64(value: int) -> int:
    """``value`` if it is a u64; TypeError / ValueError otherwise."""
    if not 0 <= _index(value) <= _U64_MAX:
        raise ValueError(f"a u64 is 0..{_U64_MAX}, not {value}")
    return value


_VIEWS_ALIVE = (
    "cannot unmap: views of this mapping (memoryview, numpy arrays, ctypes "
    "objects) are still alive; release them first"
)
_BUSY_GRACE = 1.0  # s close() waits for atomic operations of other threads to finish


class Mapping(mmap.mmap):
    """A region mapped into this process: a buffer shared with other processes.

    It is an ``mmap`` (the buffer protocol, slicing, ``memoryview(m)``,
    ``numpy.frombuffer(m, ...)`` — all without copies), read-only when
    :attr:`writable` is False.

    Atomic words
    ------------
    Bytes written through views are plain stores: another process may see
    them late, and on aarch64 in another order. To publish data, write it,
    then store a word with release ordering; a reader loads that word with
    acquire ordering and may then read the data::

        m[64:69] = b"hello"            # the data
        m.store_u64(0, 1)              # release: the data is visible first
        ...                            # in the consumer:
        if m.load_u64(0) == 1:         # acquire
            bytes(m[64:69])            # b"hello", guaranteed

    =========================================  ==========================
    ``load_u32(off)`` / ``load_u64``           acquire
    ``store_u32(off, v)`` / ``store_u64``      release
    ``fetch_add_u32(off, d)`` / ``_u64``       acq_rel; the old value
    ``compare_exchange_u32(off, e, d)`` / ...  acq_rel; ``(ok, observed)``
    =========================================  ==========================

    Offsets are checked on every call: InvalidAddress if misaligned (4 or 8
    bytes) or outside, NotMapped after unmap, PermissionDenied for anything
    but a load on a read-only mapping, ValueError for a value out of range.
    Loads and stores are plain aligned accesses on x86-64 and libatomic
    calls elsewhere (``redstone_ipc.linux.atomic``); every read-modify-write
    is a libatomic call. For a word used in a hot loop, the unchecked
    ``atomic.U32Ref``/``U64Ref`` functions cost less.

    Unmapping
    ---------
    ``unmap()`` (or ``close()``, or leaving a ``with`` block) removes it. It
    refuses, with MappingInUse, while something still uses the memory,
    because unmapping under it would crash the process; the message names
    what it can see: the library's own users (a Semaphore at offset 64, a
    FutexWord, a thread asleep in ``Futex.wait``), or else views of yours
    (memoryviews, numpy arrays) that are still alive.
    """

    address: int
    shm_id: ShmId
    writable: bool
    futex_addresses: dict[int, Any]  # offset -> checked c_void_p (see futex/)
    futex_sleepers: list[int]  # the offset of each Futex.wait asleep on this mapping
    _closing: list[int]  # threads inside close(): no operation may start
    _busy: list[None]  # one entry per atomic operation running on a raw address
    _pins: dict[int, tuple[int, str]]  # id(SharedBlock) -> (offset, owner)
    _refs32: dict[int, atomic.U32Ref]  # offset -> checked ref, for loads
    _wrefs32: dict[int, atomic.U32Ref]  # for writes: _refs32 itself if writable
    _refs64: dict[int, atomic.U64Ref]
    _wrefs64: dict[int, atomic.U64Ref]
    _v32: memoryview  # the whole mapping as u32s, over the raw memory (x86 path)
    _v64: memoryview
    _w32: memoryview | None  # _v32 if writable, else None
    _w64: memoryview | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # mmap.mmap mapped the memory in __new__; this adds our state, so a
        # Mapping made directly (not by SharedMemory.map()) works too.
        view = memoryview(self)
        self.writable = not view.readonly
        view.release()
        self.address = memfd.buffer_address(self)
        self.shm_id = ShmId(0)
        self.futex_addresses = {}
        self.futex_sleepers = []
        self._closing = []
        self._busy = []
        self._pins = {}
        self._refs32 = {}
        self._refs64 = {}
        # A read-only mapping's write caches stay empty: every write misses
        # them and is refused, and no load can let a write skip that check.
        self._wrefs32 = self._refs32 if self.writable else {}
        self._wrefs64 = self._refs64 if self.writable else {}
        self._open_views()
        _MAPPINGS.add(self)

    def _open_views(self) -> None:
        """The plain-access views of the x86 path (see "atomic words")."""
        length = len(self)
        self._v32 = atomic.plain_view(self.address, length - length % 4, "I", self.writable)
        self._v64 = atomic.plain_view(self.address, length - length % 8, "Q", self.writable)
        self._w32 = self._v32 if self.writable else None
        self._w64 = self._v64 if self.writable else None

    def _release_views(self) -> None:
        self._v32.release()
        self._v64.release()

    @classmethod
    def _create(cls, fd: int, size: int, writable: bool, shm_id: ShmId) -> Mapping:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self = cls(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        self.shm_id = shm_id
        return self

    @property
    def size(self) -> int:  # type: ignore[override]  # mmap.size() is the file's size
        """Length of the mapping in bytes."""
        return len(self)

    # -- atomic words ---------------------------------------------------------
    #
    # Safe against a close() in another thread, two ways:
    # * plain loads and stores (the x86 mode) index memoryviews over the raw
    #   memory (_v32/_v64; _w32/_w64 are the same views, or None when the
    #   mapping is read-only). Each access is one C call under the GIL, and
    #   close() releases the views before it unmaps: an access runs before,
    #   or finds its view released (ValueError) and takes the pinned way.
    # * libatomic calls take a raw address, so they pin the mapping: append
    #   to _busy, then check _closing; close() appends to _closing, then
    #   waits for _busy to empty. Under the GIL one of the two sees the other.
    # Errors of the fast paths (misaligned, outside, read-only, a bad value,
    # unmapped) all fall through to the pinned way, whose checks name them.

    if atomic.MODE == "x86":

        def load_u32(self, offset: int) -> int:
            """The u32 at ``offset`` (4-byte aligned), loaded with acquire ordering."""
            try:
                if offset & 3 or offset < 0:
                    raise IndexError
                return self._v32[offset >> 2]
            except (IndexError, ValueError, TypeError):
                return self._pinned(_load32, offset, 4, False)

        def store_u32(self, offset: int, value: int) -> None:
            """Store ``value`` (0 <= value < 2**32) at ``offset`` with release ordering."""
            try:
                if offset & 3 or offset < 0:
                    raise IndexError
                self._w32[offset >> 2] = value  # type: ignore[index]  # None: read-only
            except (IndexError, ValueError, TypeError):
                self._pinned(_store32, offset, 4, True, _u32(value))

        def load_u64(self, offset: int) -> int:
            """The u64 at ``offset`` (8-byte aligned), loaded with acquire ordering."""
            try:
                if offset & 7 or offset < 0:
                    raise IndexError
                return self._v64[offset >> 3]
            except (IndexError, ValueError, TypeError):
                return self._pinned(_load64, offset, 8, False)

        def store_u64(self, offset: int, value: int) -> None:
            """Store ``value`` (0 <= value < 2**64) at ``offset`` with release ordering."""
            try:
                if offset & 7 or offset < 0:
                    raise IndexError
                self._w64[offset >> 3] = value  # type: ignore[index]  # None: read-only
            except (IndexError, ValueError, TypeError):
                self._pinned(_store64, offset, 8, True, _u64(value))

    else:  # plain accesses are not ordered here: libatomic calls, pinned

        def load_u32(self, offset: int) -> int:
            """The u32 at ``offset`` (4-byte aligned), loaded with acquire ordering."""
            try:
                ref = self._refs32[offset]
            except (KeyError, TypeError):
                return self._pinned(_load32, offset, 4, False)
            busy = self._busy
            busy.append(None)
            try:
                if not self._closing:
                    return _load32(ref)
            finally:
                busy.pop()
            return self._pinned(_load32, offset, 4, False)

        def store_u32(self, offset: int, value: int) -> None:
            """Store ``value`` (0 <= value < 2**32) at ``offset`` with release ordering."""
            try:
                ref = self._wrefs32[offset]
            except (KeyError, TypeError):
                return self._pinned(_store32, offset, 4, True, _u32(value))
            value = _u32(value)
            busy = self._busy
            busy.append(None)
            try:
                if not self._closing:
                    return _store32(ref, value)
            finally:
                busy.pop()
            return self._pinned(_store32, offset, 4, True, value)

        def load_u64(self, offset: int) -> int:
            """The u64 at ``offset`` (8-byte aligned), loaded with acquire ordering."""
            try:
                ref = self._refs64[offset]
            except (KeyError, TypeError):
                return self._pinned(_load64, offset, 8, False)
            busy = self._busy
            busy.append(None)
            try:
                if not self._closing:
                    return _load64(ref)
            finally:
                busy.pop()
            return self._pinned(_load64, offset, 8, False)

        def store_u64(self, offset: int, value: int) -> None:
            """Store ``value`` (0 <= value < 2**64) at ``offset`` with release ordering."""
            try:
                ref = self._wrefs64[offset]
            except (KeyError, TypeError):
                return self._pinned(_store64, offset, 8, True, _u64(value))
            value = _u64(value)
            busy = self._busy
            busy.append(None)
            try:
                if not self._closing:
                    return _store64(ref, value)
            finally:
                busy.pop()
            return self._pinned(_store64, offset, 8, True, value)

    def fetch_add_u32(self, offset: int, delta: int) -> int:
        """Add ``delta`` to the u32 at ``offset`` atomically (acq_rel); the old value.

        A negative ``delta`` subtracts; the word wraps modulo 2**32.
        """
        try:
            ref = self._wrefs32[offset]
        except (KeyError, TypeError):
            return self._pinned(_fetch_add32, offset, 4, True, _index(delta))
        busy = self._busy
        busy.append(None)
        try:
            if not self._closing:
                return _fetch_add32(ref, delta)
        finally:
            busy.pop()
        return self._pinned(_fetch_add32, offset, 4, True, delta)

    def compare_exchange_u32(self, offset: int, expected: int, desired: int) -> tuple[bool, int]:
        """If the u32 at ``offset`` holds ``expected``, store ``desired``.

        Returns ``(ok, observed)``: whether it swapped, and the value the word
        held (``expected`` when it swapped): what a retry loop needs next.
        acq_rel ordering when it swaps, acquire when it does not.
        """
        if not (0 <= expected <= _U32_MAX and 0 <= desired <= _U32_MAX):
            raise ValueError(f"a u32 is 0..{_U32_MAX}, not {expected}, {desired}")
        try:
            ref = self._wrefs32[offset]
        except (KeyError, TypeError):
            return self._pinned(_cas32, offset, 4, True, expected, desired)
        busy = self._busy
        busy.append(None)
        try:
            if not self._closing:
                return _cas32(ref, expected, desired)
        finally:
            busy.pop()
        return self._pinned(_cas32, offset, 4, True, expected, desired)

    def fetch_add_u64(self, offset: int, delta: int) -> int:
        """Add ``delta`` to the u64 at ``offset`` atomically (acq_rel); the old
        value. A negative ``delta`` subtracts; the word wraps modulo 2**64."""
        try:
            ref = self._wrefs64[offset]
        except (KeyError, TypeError):
            return self._pinned(_fetch_add64, offset, 8, True, _index(delta))
        busy = self._busy
        busy.append(None)
        try:
            if not self._closing:
                return _fetch_add64(ref, delta)
        finally:
            busy.pop()
        return self._pinned(_fetch_add64, offset, 8, True, delta)

    def compare_exchange_u64(self, offset: int, expected: int, desired: int) -> tuple[bool, int]:
        """:meth:`compare_exchange_u32` on the u64 at ``offset`` (8-byte aligned)."""
        if not (0 <= expected <= _U64_MAX and 0 <= desired <= _U64_MAX):
            raise ValueError(f"a u64 is 0..{_U64_MAX}, not {expected}, {desired}")
        try:
            ref = self._wrefs64[offset]
        except (KeyError, TypeError):
            return self._pinned(_cas64, offset, 8, True, expected, desired)
        busy = self._busy
        busy.append(None)
        try:
            if not self._closing:
                return _cas64(ref, expected, desired)
        finally:
            busy.pop()
        return self._pinned(_cas64, offset, 8, True, expected, desired)

    def _pinned(self, op: Callable[..., Any], offset: object, size: int, write: bool, *args: Any) -> Any:
        """``op(ref, *args)`` on the word at ``offset``: checked (InvalidAddress,
        NotMapped, PermissionDenied), with the mapping pinned."""
        busy = self._busy
        while True:
            ref = self._ref(offset, size, write)
            busy.append(None)
            try:
                if not self._closing:
                    return op(ref, *args)
            finally:
                busy.pop()
            self._closed_meanwhile()  # NotMapped; or the close failed: again

    def _ref(self, offset: object, size: int, write: bool) -> Any:
        """The checked ref of the ``size``-byte word at ``offset``, cached."""
        if not isinstance(offset, int):
            raise InvalidAddress(f"offset must be an int, not {type(offset).__name__}")
        address = self.word_address(offset, size)  # NotMapped / InvalidAddress
        if write and not self.writable:
            raise PermissionDenied("this mapping is read-only: its words can only be loaded")
        # (A ref cached after close() emptied the cache is harmless: every
        # use checks _closing first.)
        if size == 4:
            ref: Any = atomic.U32Ref(address)
            self._refs32[offset] = ref
        else:
            ref = atomic.U64Ref(address)
            self._refs64[offset] = ref
        return ref

    def _closed_meanwhile(self) -> None:
        """An operation found a close() under way: NotMapped if it unmaps;
        if it fails instead, return (the caller tries again)."""
        closing = self._closing
        me = threading.get_ident()
        while closing:
            if self.closed or me in closing:  # (me: a signal handler inside our own close)
                raise NotMapped("the mapping was unmapped")
            time.sleep(0.0001)

    # -- unmapping ------------------------------------------------------------

    def unmap(self) -> None:
        """Remove the mapping. NotMapped if already unmapped; MappingInUse
        (naming what) while something still uses it, see :meth:`close`."""
        if self.closed:
            raise NotMapped("the mapping was already unmapped")
        self.close()

    def close(self) -> None:
        """``mmap.close``, made safe; idempotent.

        MappingInUse (a BufferError) instead of unmapping memory that is still
        in use, naming what uses it: the primitives of ``redstone_ipc.sync``,
        ``WaitQueue``s and ``FutexWord``s still open on it ("a Semaphore at
        offset 64"; close them), threads asleep in ``Futex.wait`` on it (wake
        them), or, when the library sees none of those, views of it
        (memoryview, numpy arrays, ctypes objects; release them). Atomic
        operations running in other threads are waited for.
        """
        if self.closed:
            return
        closing = self._closing
        me = threading.get_ident()
        try:
            closing.append(me)  # from here on no atomic operation or Futex.wait starts
            if self._busy:
                deadline = time.monotonic() + _BUSY_GRACE
                while self._busy and time.monotonic() < deadline:
                    time.sleep(0.0001)  # they never block: a few hundred ns each
            in_use = self._in_use()
            if in_use:
                raise MappingInUse(in_use)
            self._release_views()  # ours: mmap does not see them (see "atomic words")
            try:
                super().close()
            except BaseException as exc:
                self._open_views()
                if isinstance(exc, BufferError):
                    raise MappingInUse(_VIEWS_ALIVE) from None
                raise
        except BaseException:
            if me in closing:
                closing.remove(me)  # (it stays in the list once closed: ops see it)
            raise
        # Cached addresses are stale from now on (every user checks _closing).
        self.futex_addresses.clear()
        self._refs32.clear()
        self._refs64.clear()

    def _in_use(self) -> str:
        """Why close() must refuse, in words; "" if the library sees no user."""
        parts = []
        pins = sorted(self._pins.values())
        if pins:
            names = [f"{owner} at offset {offset}" for offset, owner in pins[:8]]
            if len(pins) > 8:
                names.append(f"{len(pins) - 8} more")
            verb, them = ("is", "it") if len(pins) == 1 else ("are", "them")
            parts.append(f"{_join(names)} {verb} still open on it (close() {them} first)")
        sleepers = sorted(set(self.futex_sleepers))
        if sleepers:
            where = ", ".join(str(offset) for offset in sleepers)
            threads = len(self.futex_sleepers)
            who = "a thread is" if threads == 1 else f"{threads} threads are"
            parts.append(
                f"{who} asleep in Futex.wait on the word at offset {where} "
                f"(wake {'it' if threads == 1 else 'them'} first)"
            )
        if self._busy:
            parts.append("an atomic operation in another thread did not finish")
        return "cannot unmap: " + "; ".join(parts) if parts else ""

    def word_address(self, offset: int, size: int = 4) -> int:
        """Address of the ``size``-byte word at ``offset``, checked.

        NotMapped after unmap; InvalidAddress if ``offset`` is not aligned to
        ``size`` or the word does not lie inside the mapping.
        """
        if self.closed:
            raise NotMapped("the mapping was unmapped")
        if offset < 0 or offset + size > len(self):
            raise InvalidAddress(f"offset {offset} is outside the mapping of {len(self)} bytes")
        if offset % size:
            raise InvalidAddress(f"offset {offset} is not aligned to {size} bytes")
        return self.address + offset

    def frames(self) -> list[int]:
        """Physical frame numbers of every page, in order (faulting them in).

        Two processes mapping the same region get the same list. Raises
        PermissionDenied where the kernel hides frame numbers (no
        CAP_SYS_ADMIN).
        """
        if self.closed:
            raise NotMapped("the mapping was unmapped")
        view = memoryview(self)
        try:
            for page in range(0, len(self), PAGE_SIZE):
                view[page]  # a read fault gives the page its frame
        finally:
            view.release()
        result = frames_of(self.address, len(self))
        return [f for f in result if f is not None]

    def __exit__(self, *exc_info: Any) -> None:
        if not self.closed:
            self.unmap()

    def __repr__(self) -> str:
        if self.closed:
            return "<Mapping unmapped>"
        mode = "rw" if self.writable else "r"
        return f"<Mapping {len(self)} bytes at {self.address:#x} {mode} shm={self.shm_id}>"


_MAPPINGS: weakref.WeakSet[Mapping] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the thread that forked runs in the child: the atomic operations,
    # Futex.wait sleeps and close() calls that other threads had under way
    # are not running here, and must not keep the child's mappings in use.
    for mapping in list(_MAPPINGS):
        mapping._busy.clear()
        mapping.futex_sleepers.clear()
        if not mapping.closed:
            mapping._closing.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _join(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
