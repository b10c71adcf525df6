"""Kernel objects, handles, rights and the per-process handle table.

In RedstoneOS a process names a kernel object only through a *handle*: an
entry of its handle table holding the object and the rights granted. Here the
Linux kernel plays the kernel: an object is one or more file descriptors, and
file descriptors are unforgeable capabilities that only ``SCM_RIGHTS`` (or
``fork``) can move between processes.

* A :class:`KernelObject` owns its fds and knows how to hand them to the
  message transport (``transfer_fds``) and how to be rebuilt from fds that
  arrived (``from_transfer``).
* A :class:`Handle` is an entry of :data:`HANDLE_TABLE`: ``(value, object,
  rights)``. Typed handles (``Port``, ``SharedMemory``, ...) subclass it and
  add the object's operations, each checking its right first.
* The object's fds are closed when the last handle to it goes, whether it is
  closed, replaced, moved to another process in a message, or garbage
  collected.

Rights are stated per object type, as Zircon does: ``DEFAULT_RIGHTS`` is what
a freshly created object's handle holds; ``ALLOWED_RIGHTS`` is the most any
handle of the type may ever hold (a received descriptor asking for more is a
protocol error).
"""

from __future__ import annotations

import enum
import itertools
import os
import threading
import weakref
from multiprocessing import reduction
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import InvalidHandle, PermissionDenied, ProtocolError

if TYPE_CHECKING:
    from .export import ExportedHandle

__all__ = [
    "Rights",
    "ObjectType",
    "KernelObject",
    "Handle",
    "HandleTable",
    "HANDLE_TABLE",
    "FdObject",
    "FdHandle",
]


class Rights(enum.IntFlag):
    """What a handle allows. Operations check exactly one right each."""

    NONE = 0
    READ = 1 << 0  # read bytes (pipe reader, shm contents)
    WRITE = 1 << 1  # write bytes (pipe writer, writable shm mappings)
    MAP = 1 << 2  # map shared memory into the address space
    SEND = 1 << 3  # enqueue messages (port, channel)
    RECEIVE = 1 << 4  # dequeue messages (port, channel)
    DUPLICATE = 1 << 5  # make another handle to the same object
    TRANSFER = 1 << 6  # move the handle to another process in a message
    WAIT = 1 << 7  # wait for the object's signals (readiness, futex words)

    BASIC = DUPLICATE | TRANSFER | WAIT


class ObjectType(enum.IntEnum):
    """Kinds of kernel object. The numbers are part of the wire format."""

    FD = 1  # any file descriptor (a file, a socket, ...): no rights enforced
    PORT = 2
    CHANNEL = 3
    PIPE_READER = 4
    PIPE_WRITER = 5
    SHM = 6


_H = TypeVar("_H", bound="Handle")


class KernelObject:
    """Base of kernel objects: owns file descriptors, counts its handles.

    Subclasses set ``TYPE``, ``DEFAULT_RIGHTS``, ``ALLOWED_RIGHTS`` and
    ``HANDLE_CLASS``, and implement ``transfer_fds``, ``transfer_extra``,
    ``from_transfer`` and ``_destroy``.
    """

    TYPE: ClassVar[ObjectType]
    DEFAULT_RIGHTS: ClassVar[Rights]
    ALLOWED_RIGHTS: ClassVar[Rights]
    HANDLE_CLASS: ClassVar[type[Handle]]

    _registry: ClassVar[dict[ObjectType, type[KernelObject]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" in cls.__dict__:
            KernelObject._registry[cls.TYPE] = cls

    def __init__(self) -> None:
        # Guarded by HANDLE_TABLE's lock:
        self._handle_count = 0
        self._pins = 0  # sends in flight that carry this object's fds
        self._destroyed = False

    @staticmethod
    def class_for(obj_type: int) -> type[KernelObject]:
        """The class registered for a wire type number (ProtocolError if none)."""
        try:
            return KernelObject._registry[ObjectType(obj_type)]
        except (ValueError, KeyError):
            raise ProtocolError(f"unknown handle type {obj_type}") from None

    # -- transfer: the contract between an object and the message transport --

    def transfer_fds(self, rights: Rights) -> list[int]:
        """The fds that carry a handle with ``rights`` to another process.

        Only what those rights need: a SEND-only port handle carries no fd
        that could receive, so the kernel itself enforces the right.
        """
        raise NotImplementedError

    def transfer_extra(self, rights: Rights) -> int:
        """A u64 the receiver needs to rebuild the object (e.g. a size)."""
        return 0

    def prepare_transfer(self, rights: Rights) -> None:
        """Called before the fds are sent (e.g. to seal shared memory)."""

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> KernelObject:
        """Rebuild an object from fds received for a handle with ``rights``.

        Owns ``fds`` on success. On failure raises ProtocolError and leaves
        closing the fds to the caller.
        """
        raise NotImplementedError

    def _destroy(self) -> None:
        """Release the fds. Called once, when the last handle goes."""
        raise NotImplementedError

    def _on_handle_closed(self) -> None:
        """A handle to it was closed, not the last one: threads blocked on that
        handle may need waking (they look at their handle and raise)."""


class HandleTable:
    """The process's handle table: value -> live handle.

    Values are unique in the process and never reused (a monotonically growing
    counter), so a stale value can never name a newer object. The table holds
    handles weakly: a handle that is garbage collected is closed, like a file.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._handles: weakref.WeakValueDictionary[int, Handle] = (
            weakref.WeakValueDictionary()
        )
        # Start away from 0 and small ints so values are not mistaken for fds.
        self._counter = itertools.count(0x1000)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # The child keeps every handle it inherited; only the lock, which
        # another thread may have held at fork time, must be made anew.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._handles)

    def get(self, value: int) -> Handle:
        """The live handle with this value, or InvalidHandle."""
        handle = self._handles.get(value)
        if handle is None or handle._object is None:
            raise InvalidHandle(f"no handle with value {value:#x} in this process")
        return handle

    def values(self) -> list[int]:
        """Values of the live handles (a snapshot)."""
        with self._lock:
            return [v for v, h in list(self._handles.items()) if h._object is not None]

    def insert(self, obj: KernelObject, rights: Rights, cls: type[_H] | None = None) -> _H:
        """Make a new handle to ``obj`` with ``rights``; the object gains a reference."""
        handle_cls: Any = cls or obj.HANDLE_CLASS
        handle = object.__new__(handle_cls)  # Handle.__init__ refuses direct construction
        with self._lock:
            if obj._destroyed:
                raise InvalidHandle("the object is already destroyed")
            value = next(self._counter)
            handle._value = value
            handle._rights = Rights(rights)
            handle._object = obj
            obj._handle_count += 1
            self._handles[value] = handle
        return handle

    def remove(self, handle: Handle) -> KernelObject | None:
        """Invalidate ``handle``. Returns its object if it must now be destroyed:
        that was its last handle and no send is carrying its fds."""
        with self._lock:
            obj = handle._object
            if obj is None:
                return None
            handle._object = None
            self._handles.pop(handle._value, None)
            obj._handle_count -= 1
            if obj._handle_count == 0 and not obj._pins and not obj._destroyed:
                obj._destroyed = True
                return obj
            return None

    def pin(self, objects: list[KernelObject]) -> None:
        """Keep the objects' fds open while a send carries them.

        Without this, another thread closing an attached handle mid-send
        would close an fd the kernel has not copied yet, and a reused fd
        number could carry some unrelated file to the receiver.
        """
        with self._lock:
            for obj in objects:
                obj._pins += 1

    def unpin(self, objects: list[KernelObject]) -> None:
        """End a send; destroys objects whose last handle went meanwhile."""
        doomed = []
        with self._lock:
            for obj in objects:
                obj._pins -= 1
                if obj._pins == 0 and obj._handle_count == 0 and not obj._destroyed:
                    obj._destroyed = True
                    doomed.append(obj)
        for obj in doomed:
            obj._destroy()


HANDLE_TABLE = HandleTable()


class Handle:
    """An entry of the process's handle table: a capability to one object.

    Handles are made by the objects' constructors and by receiving messages,
    never directly. Every use checks that the handle is still valid (else
    :class:`InvalidHandle`) and holds the right the operation needs (else
    :class:`PermissionDenied`).
    """

    __slots__ = ("_value", "_rights", "_object", "__weakref__")

    _value: int
    _rights: Rights
    _object: KernelObject | None

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} handles are made by their objects")

    # -- identity --------------------------------------------------------------

    @property
    def value(self) -> int:
        """The handle's number, unique in this process, never reused."""
        return self._value

    @property
    def rights(self) -> Rights:
        """The rights this handle holds."""
        return self._rights

    @property
    def type(self) -> ObjectType:
        """The kind of object this handle names."""
        return self._live().TYPE

    @property
    def valid(self) -> bool:
        """False once the handle is closed, replaced or moved away."""
        return self._object is not None

    def __repr__(self) -> str:
        state = "" if self._object is not None else " closed"
        return (
            f"<{type(self).__name__} {self._value:#x} "
            f"rights={_rights_repr(self._rights)}{state}>"
        )

    # -- checks used by every operation -----------------------------------------

    def _live(self) -> Any:
        """The object, or InvalidHandle."""
        obj = self._object
        if obj is None:
            raise InvalidHandle(f"handle {self._value:#x} is closed or was transferred")
        return obj

    def _require(self, right: Rights) -> Any:
        """The object, after checking validity and ``right``."""
        obj = self._object
        if obj is None:
            raise InvalidHandle(f"handle {self._value:#x} is closed or was transferred")
        if int.__and__(self._rights, right) != right:  # int ops: IntFlag's cost 0.5 us
            raise PermissionDenied(
                f"handle {self._value:#x} lacks {_rights_repr(right & ~self._rights)}"
                f" (holds {_rights_repr(self._rights)})"
            )
        return obj

    # -- lifecycle -------------------------------------------------------------

    def duplicate(self: _H, rights: Rights | None = None) -> _H:
        """A new handle to the same object with ``rights`` (default: the same).

        Needs DUPLICATE. ``rights`` must be a subset of the rights held:
        rights can only shrink, never grow.
        """
        obj = self._require(Rights.DUPLICATE)
        new_rights = self._rights if rights is None else Rights(rights)
        self._check_subset(new_rights)
        return HANDLE_TABLE.insert(obj, new_rights, type(self))

    def replace(self: _H, rights: Rights) -> _H:
        """Swap this handle for one with fewer ``rights``; this one is invalidated."""
        obj = self._live()
        new_rights = Rights(rights)
        self._check_subset(new_rights)
        new = HANDLE_TABLE.insert(obj, new_rights, type(self))
        HANDLE_TABLE.remove(self)  # never the last: ``new`` holds the object
        return new

    def _check_subset(self, rights: Rights) -> None:
        if rights & ~self._rights:
            raise PermissionDenied(
                f"cannot grant {_rights_repr(rights & ~self._rights)}: handle "
                f"{self._value:#x} holds only {_rights_repr(self._rights)}"
            )

    def close(self) -> None:
        """Invalidate the handle; the object's fds close with its last handle.

        Closing an already closed handle does nothing (like ``socket.close``).
        """
        obj = self._object
        last = HANDLE_TABLE.remove(self)
        if last is not None:
            last._destroy()
        elif obj is not None:
            obj._on_handle_closed()

    def _moved(self) -> None:
        """The transport sent this handle away: it is gone from this process."""
        self.close()

    def export(self) -> ExportedHandle:
        """Move this handle out of Python as raw parts: for a process in
        another language (or one started without multiprocessing).

        Returns an :class:`~redstone_ipc.core.export.ExportedHandle`: the
        object ``type``, the ``rights``, the ``extra`` word and duplicated
        ``fds`` that the caller owns (hand them over, e.g. with
        ``subprocess.Popen(pass_fds=exported.fds)``, then ``close()``
        them). Needs TRANSFER. Like a successful send, it invalidates this
        handle (export a ``duplicate()`` to keep one); on error the handle
        is untouched. Which fd is which, per type, and what a peer does with
        them: ``docs/wire-format.md``. ``redstone_ipc.adopt_handle`` (or
        ``exported.adopt()``) turns such parts back into a handle.
        """
        from .export import export_handle

        return export_handle(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # multiprocessing pickles with ForkingPickler, whose dispatch table is
        # consulted before __reduce__ and by exact type: every class needs
        # its own entry, subclasses included.
        reduction.ForkingPickler.register(cls, _reduce_for_multiprocessing)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Refuse ordinary pickling: a pickle cannot carry file descriptors.

        Only multiprocessing's own pickler can (see
        ``_reduce_for_multiprocessing``). Anything else (``pickle.dumps``, a
        file, a socket, ``copy.copy``) raises TypeError here, at once, rather
        than producing bytes that fail later in another process.
        """
        raise TypeError(
            f"a {type(self).__name__} handle cannot be pickled: it is a file descriptor, and "
            "only multiprocessing can carry one (Process arguments under spawn or forkserver, "
            "a multiprocessing Pipe or Queue). To give a handle to a process started on its "
            "own, publish it: redstone_ipc.publish(name, handle) here, "
            "redstone_ipc.connect(name) there. In this process, use handle.duplicate()."
        )

    def __enter__(self: _H) -> _H:
        self._live()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A dropped handle is closed, so forgetting ``close`` leaks nothing.
        try:
            if self._object is not None:
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _reduce_for_multiprocessing(handle: Handle) -> tuple[Any, tuple[Any, ...]]:
    """Pickle a handle for multiprocessing: the child gets its own copy.

    Registered with ``multiprocessing.reduction.ForkingPickler`` for every
    handle class, so it runs when multiprocessing pickles a handle for
    another process (``Process`` arguments under spawn or forkserver,
    ``Queue.put``, ``Connection.send``): each fd travels with
    ``multiprocessing.reduction.DupFd``, the way multiprocessing passes its
    own connections. Like fork, this *copies* the capability (the parent
    keeps its handle); to move one, send it in a Message. Needs TRANSFER.
    """
    obj: KernelObject = handle._require(Rights.TRANSFER)
    rights = handle._rights
    obj.prepare_transfer(rights)
    fds = [reduction.DupFd(fd) for fd in obj.transfer_fds(rights)]
    return _rebuild_handle, (int(obj.TYPE), int(rights), obj.transfer_extra(rights), fds)


def _rebuild_handle(obj_type: int, rights: int, extra: int, dup_fds: list[Any]) -> Handle:
    """Unpickle a handle (see ``_reduce_for_multiprocessing``), validating what arrived."""
    from .export import adopt_handle

    return adopt_handle(obj_type, rights, extra, [d.detach() for d in dup_fds])


def _rights_repr(rights: Rights) -> str:
    names = [r.name for r in Rights if r and r.name != "BASIC" and rights & r == r]
    return "|".join(n for n in names if n) or "NONE"


# -- the simplest object: one file descriptor ---------------------------------


class FdObject(KernelObject):
    """Any file descriptor (a file, a socket, a memfd) carried as a handle.

    The kernel does not enforce READ or WRITE on it: they record intent. Use
    the typed objects (Pipe, SharedMemory, ...) for enforced rights.
    """

    TYPE = ObjectType.FD
    DEFAULT_RIGHTS = Rights.READ | Rights.WRITE | Rights.BASIC
    ALLOWED_RIGHTS = DEFAULT_RIGHTS

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def transfer_fds(self, rights: Rights) -> list[int]:
        return [self.fd]

    @classmethod
    def from_transfer(cls, fds: list[int], rights: Rights, extra: int) -> FdObject:
        if len(fds) != 1:
            raise ProtocolError(f"an FD handle carries 1 fd, got {len(fds)}")
        return cls(fds[0])

    def _destroy(self) -> None:
        os.close(self.fd)


class FdHandle(Handle):
    """A handle to a plain file descriptor."""

    __slots__ = ()

    @classmethod
    def adopt(cls, fd: int, rights: Rights = FdObject.DEFAULT_RIGHTS) -> FdHandle:
        """Take ownership of ``fd``: it is closed with the last handle."""
        if rights & ~FdObject.ALLOWED_RIGHTS:
            raise PermissionDenied(f"an FD handle cannot hold {_rights_repr(rights)}")
        return HANDLE_TABLE.insert(FdObject(fd), rights, cls)

    def fileno(self) -> int:
        """The underlying fd, owned by the handle: do not close it yourself."""
        obj: FdObject = self._live()
        return obj.fd


FdObject.HANDLE_CLASS = FdHandle
