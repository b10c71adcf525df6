"""A checked, pinned block of words inside a shared-memory Mapping.

Everything that keeps state in shared memory (the primitives in
``redstone_ipc.sync``, ``redstone_ipc.sched.WaitQueue``) lives at an offset of
a :class:`~redstone_ipc.shm.shm.Mapping`. :class:`SharedBlock` does the
checks they all need, once, when they attach:

* the object is a real ``Mapping`` (memory that came from a SharedMemory
  handle, so the kernel keys its futexes by the shared page, and a bad object
  cannot make us poke at arbitrary addresses): else InvalidAddress;
* the block is aligned and inside the mapping: else InvalidAddress
  (NotMapped if the mapping is gone);
* the mapping is writable when the owner needs to write: else
  PermissionDenied.

It then *pins* the mapping by keeping a memoryview slice of the block:
``Mapping.unmap()`` refuses (ShmError) while the slice lives, so the raw
addresses handed to the kernel and to libatomic can never point at memory
that has been unmapped. :meth:`SharedBlock.close` lets go of it.
"""

from __future__ import annotations

from ..errors import InvalidAddress, NotMapped, PermissionDenied
from ..shm.shm import Mapping

__all__ = ["SharedBlock", "check_mapping"]


def check_mapping(mapping: object) -> Mapping:
    """``mapping`` itself if it is a Mapping; InvalidAddress otherwise."""
    if not isinstance(mapping, Mapping):
        raise InvalidAddress(
            f"futex words must live in a redstone_ipc Mapping (from SharedMemory.map()), "
            f"not in a {type(mapping).__name__}"
        )
    return mapping


class SharedBlock:
    """``size`` bytes at ``offset`` of ``mapping``, checked and pinned.

    ``address`` is the block's first byte in this process. ``owner`` names
    the primitive in error messages.
    """

    __slots__ = ("mapping", "offset", "size", "address", "writable", "_view")

    def __init__(
        self,
        mapping: Mapping,
        offset: int,
        size: int,
        *,
        align: int = 4,
        writable: bool = True,
        owner: str = "this primitive",
    ) -> None:
        check_mapping(mapping)
        if not isinstance(offset, int):
            raise InvalidAddress(f"offset must be an int, not {type(offset).__name__}")
        self.address = mapping.word_address(offset, align)  # NotMapped / InvalidAddress
        if offset + size > len(mapping):
            raise InvalidAddress(
                f"{owner} needs {size} bytes at offset {offset}, past the end of "
                f"the mapping of {len(mapping)} bytes"
            )
        if writable and not mapping.writable:
            raise PermissionDenied(f"{owner} needs a writable mapping; this one is read-only")
        self.mapping = mapping
        self.offset = offset
        self.size = size
        self.writable = mapping.writable
        self._view: memoryview | None = memoryview(mapping)[offset : offset + size]

    @property
    def closed(self) -> bool:
        return self._view is None

    def view(self) -> memoryview:
        """The block's bytes (NotMapped after close)."""
        if self._view is None:
            raise NotMapped("closed")
        return self._view

    def close(self) -> None:
        """Unpin the mapping. Idempotent."""
        view, self._view = self._view, None
        if view is not None:
            view.release()
