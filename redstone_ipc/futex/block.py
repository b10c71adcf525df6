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
``Mapping.unmap()`` refuses (MappingInUse) while the slice lives, so the raw
addresses handed to the kernel and to libatomic can never point at memory
that has been unmapped. The block also registers itself with the mapping
(``owner`` and ``offset``), so that the refusal names it: "an Event at
offset 128 is still open on it". :meth:`SharedBlock.close` lets go of both;
a block that is garbage collected lets go too.

:class:`SharedPrimitive` is the base of those primitives: it attaches the
block, keeps the address of its first word (the one every operation starts
from) and gives them the same ``closed``, ``close()``, ``repr`` and context
manager (``with`` closes on exit; the lock-like ones, Mutex, Semaphore and
Condition, take and release their lock instead).
"""

from __future__ import annotations

import ctypes
import time
from typing import ClassVar, TypeVar

from ..errors import InvalidAddress, NotMapped, PermissionDenied
from ..shm.shm import Mapping

__all__ = ["SharedBlock", "SharedPrimitive", "check_mapping", "time_left", "acquire_timeout"]

_P = TypeVar("_P", bound="SharedPrimitive")


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
    the primitive in error messages, and in the MappingInUse that
    ``mapping.unmap()`` raises while the block is open.
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
        self._view: memoryview | None = None  # (set first: __del__ may run on a failed init)
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
        try:
            view = memoryview(mapping)[offset : offset + size]
        except ValueError:  # unmapped by another thread since word_address()
            raise NotMapped("the mapping was unmapped") from None
        self._view = view
        mapping._pins[id(self)] = (offset, owner)

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
            self.mapping._pins.pop(id(self), None)
            view.release()

    def __del__(self) -> None:
        # A primitive dropped without close(): its view goes anyway, and so
        # must its name from the mapping's list of pins.
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class SharedPrimitive:
    """A primitive that lives in a :class:`SharedBlock`: attach, use, close.

    A subclass sets ``SIZE`` (bytes, a multiple of ``ALIGN``), ``ALIGN`` and
    ``_OWNER`` (how error messages name it: ``"an Event"``), and adds its
    operations. ``_word`` is the address of the block's first word, the one
    the primitive's futex lives on; None once closed. Operations start with
    ``self._live()``, which raises NotMapped after ``close()``.
    """

    SIZE: ClassVar[int]
    ALIGN: ClassVar[int]
    _OWNER: ClassVar[str]
    _WRITABLE: ClassVar[bool] = True  # False: a read-only mapping may attach

    __slots__ = ("_block", "_word", "__weakref__")

    def __init__(self, mapping: Mapping, offset: int) -> None:
        # Contract: InvalidAddress (not a Mapping / misaligned / outside),
        # NotMapped, PermissionDenied (read-only, unless _WRITABLE is False).
        # Pins the mapping until close().
        self._block = SharedBlock(
            mapping, offset, self.SIZE, align=self.ALIGN, writable=self._WRITABLE, owner=self._OWNER
        )
        self._word: ctypes.c_void_p | None = ctypes.c_void_p(self._block.address)

    def _live(self) -> ctypes.c_void_p:
        """The first word's address; NotMapped once closed."""
        word = self._word
        if word is None:
            raise NotMapped(f"the {type(self).__name__} was closed")
        return word

    @property
    def closed(self) -> bool:
        return self._word is None

    def close(self) -> None:
        """Detach: unpin the mapping. Idempotent."""
        self._word = None
        self._block.close()

    def __enter__(self: _P) -> _P:
        """``with Event(m, 0) as event:``: the primitive, closed on exit
        (NotMapped if already closed). Mutex, Semaphore and Condition replace
        this with their lock: use ``contextlib.closing`` to close those."""
        self._live()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._word is None:
            return f"<{type(self).__name__} closed>"
        return f"<{type(self).__name__} at {self._block.address:#x}{self._state()}>"

    def _state(self) -> str:
        """What ``repr`` shows after the address (open only): ``" value=3"``."""
        return ""


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value), 0 or less
    once it has passed; None for no deadline. The waits' timeout for the
    next sleep: a caller gives up when it is not None and ``<= 0``."""
    return None if deadline is None else deadline - time.monotonic()


def acquire_timeout(blocking: object, timeout: float | None) -> float | None:
    """The timeout of ``acquire(blocking, timeout)`` when ``blocking`` is not
    True: 0 (only try) for False, as ``threading``'s acquire does; ValueError
    for a timeout with ``blocking=False`` (as threading); TypeError for
    anything but a bool (or 0/1), because ``acquire(5)`` is almost surely a
    timeout meant as ``acquire(timeout=5)``, and threading would block for
    ever instead."""
    if blocking.__class__ is int and blocking in (0, 1) or blocking.__class__ is bool:
        if blocking:
            return timeout
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0
    raise TypeError(
        f"blocking must be True or False, not {blocking!r}: pass a number of "
        f"seconds as timeout= (acquire(timeout={blocking!r}))"
    )
