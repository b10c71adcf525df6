"""Shared memory: the same physical pages mapped in several processes.

The seed's ``SharedMemory`` allocates frames and maps them into address
spaces; its ``create``, ``map`` and ``unmap`` are stubs. Here a memfd is the
region: its pages are the kernel's own frames, every process that maps it sees
the same frames (``Mapping.frames()`` proves it), and the kernel frees them
when the last fd and the last mapping are gone — in every process, crashes
included. Nothing is named in ``/dev/shm``; nothing can leak.

Rights (default for a new region): READ | WRITE | MAP | DUPLICATE | TRANSFER.

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
import os
import stat
from typing import Any, NewType

from ..core.object import HANDLE_TABLE, Handle, KernelObject, ObjectType, Rights
from ..errors import (
    InvalidAddress,
    MappingInUse,
    NotMapped,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
)
from ..linux import memfd
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
    >>> with shm.map() as m:                    # a writable Mapping
    ...     m[:5] = b"hello"
    >>> ro = shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER)

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

    def map(self, writable: bool = True) -> Mapping:
        """Map the whole region into this process.

        Needs MAP and READ, and WRITE when ``writable``. The mapping outlives
        the handle: the pages stay until it is unmapped too.
        """
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


class Mapping(mmap.mmap):
    """A region mapped into this process: a buffer shared with other processes.

    It is an ``mmap`` (the buffer protocol, slicing, ``memoryview(m)``,
    ``numpy.frombuffer(m, ...)`` — all without copies). ``unmap()`` (or leaving
    a ``with`` block) removes it; it refuses, with MappingInUse, while views of it
    are still alive, because unmapping under a view would crash the process.
    """

    address: int
    shm_id: ShmId
    writable: bool
    futex_addresses: dict[int, Any]  # offset -> checked c_void_p (see futex/)
    futex_sleepers: list[None]  # one entry per Futex.wait asleep on this mapping

    @classmethod
    def _create(cls, fd: int, size: int, writable: bool, shm_id: ShmId) -> Mapping:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self = cls(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        self.address = memfd.buffer_address(self)
        self.shm_id = shm_id
        self.writable = writable
        self.futex_addresses = {}
        self.futex_sleepers = []
        return self

    @property
    def size(self) -> int:  # type: ignore[override]  # mmap.size() is the file's size
        """Length of the mapping in bytes."""
        return len(self)

    def unmap(self) -> None:
        """Remove the mapping. NotMapped if already unmapped."""
        if self.closed:
            raise NotMapped("the mapping was already unmapped")
        self.close()

    def close(self) -> None:
        """``mmap.close``, made safe: MappingInUse (a BufferError) instead of
        unmapping memory that a view or a sleeping ``Futex.wait`` still uses.
        Idempotent."""
        # (getattr: a Mapping made directly, not by SharedMemory.map(), has neither)
        if getattr(self, "futex_sleepers", None):
            raise MappingInUse("cannot unmap: a thread is waiting on a futex word in it")
        try:
            super().close()
        except BufferError:
            raise MappingInUse(
                "cannot unmap: views of this mapping (memoryview, numpy arrays, "
                "ctypes objects) are still alive; release them first"
            ) from None
        cache = getattr(self, "futex_addresses", None)
        if cache:
            cache.clear()  # Futex's cached addresses: stale from now on

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
