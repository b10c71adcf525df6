"""Handles for processes that are not Python: export to raw fds, adopt back.

A handle is, underneath, a few file descriptors plus three numbers (its
object type, its rights and a type-specific ``extra`` word): exactly what a
message carries for it (``docs/wire-format.md``, "Handle descriptor"). This
module hands those parts to the caller, so that a program in any language
can be given a capability by the means Unix offers — an inherited fd
(``subprocess.Popen(pass_fds=...)``), ``SCM_RIGHTS`` on a socket of its own
— and takes such parts back into a handle, checked as strictly as a handle
that arrived in a message.

>>> port = Port(capacity=16)
>>> exported = port.duplicate(Rights.SEND | Rights.TRANSFER).export()   # moves it
>>> exported.type, exported.rights, exported.extra, exported.fds
(<ObjectType.PORT: 2>, <Rights.SEND|TRANSFER: 72>, 16, (7,))
>>> child = subprocess.Popen(["./peer", str(exported.fds[0])], pass_fds=exported.fds)
>>> exported.close()                      # the child has its own copies now

Export **moves**, like a send: it needs TRANSFER, runs the type's
``prepare_transfer`` (a read-only SHM region is sealed, a RECEIVE right
makes sure the receive side may leave this process), duplicates the fds
the rights need (``transfer_fds``: a SEND-only port handle carries no fd
that can read the queue) and then invalidates the handle here, exactly as
a successful send does. To keep a copy, export a ``duplicate()``. If
anything fails, the handle is untouched and no fd is left open. Moving,
not copying, is what keeps the capability rules whole: a channel endpoint
has no DUPLICATE right, so no process may end up with two of it, and a
RECEIVE right that stayed here would keep serving the queue (this process
holds the owner lock) instead of the foreign receiver.

The :class:`ExportedHandle` owns its fds (close-on-exec duplicates) until
``close()``, or until ``adopt()`` turns them back into a handle: the way to
get the capability back if the foreign process never took it.

:func:`adopt_handle` is the other direction: parts that came from outside
(a C peer's eventfd or memfd, fds a parent passed down) become a handle
after the checks a receiver makes (``KernelObject.class_for(type)``, the
type's allowed rights, ``from_transfer``: fd kinds, seals, sizes, shutdown
directions). On any error every fd given is closed and nothing reaches the
handle table.
"""

from __future__ import annotations

import builtins
import fcntl
import os
import struct
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar, overload

from ..errors import ProtocolError
from .object import HANDLE_TABLE, Handle, KernelObject, ObjectType, Rights

__all__ = ["ExportedHandle", "export_handle", "adopt_handle"]

_H = TypeVar("_H", bound=Handle)

DESCRIPTOR = struct.Struct("<HHIQ")
"""A handle descriptor as messages carry it: type u16, fd_count u16, rights
u32, extra u64 (``docs/wire-format.md``)."""


class ExportedHandle:
    """A handle's parts, owned by the caller: ``type``, ``rights``, ``extra``, ``fds``.

    ``fds`` are this process's own duplicates (close-on-exec: hand them to a
    child with ``Popen(pass_fds=...)``, or send them with ``SCM_RIGHTS``);
    which fd is which, per type, is in ``docs/wire-format.md``. Close them
    with ``close()`` (or a ``with`` block) once the other process has its
    copies, or ``adopt()`` them back into a handle. An exported handle
    garbage collected with its fds still open closes them, with a
    ResourceWarning, as a socket does.
    """

    __slots__ = ("type", "rights", "extra", "_fds")

    type: ObjectType
    rights: Rights
    extra: int

    def __init__(self, obj_type: int, rights: int, extra: int, fds: Sequence[int]) -> None:
        """Wrap parts (of this process, or from outside); the object owns ``fds``."""
        self.type = ObjectType(obj_type)
        self.rights = Rights(rights)
        self.extra = int(extra)
        self._fds: tuple[int, ...] | None = tuple(fds)

    @property
    def fds(self) -> tuple[int, ...]:
        """The fds, in the order the type defines (ValueError once closed or adopted)."""
        fds = self._fds
        if fds is None:
            raise ValueError("the exported handle was closed or adopted: its fds are gone")
        return fds

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``adopt()`` let go of the fds."""
        return self._fds is None

    def descriptor(self) -> bytes:
        """The 16-byte handle descriptor of these parts, as a ``REC_HANDLES``
        record or a socket message carries it (a peer can send it as is)."""
        return DESCRIPTOR.pack(int(self.type), len(self.fds), int(self.rights), self.extra)

    def close(self) -> None:
        """Close the fds (idempotent). The capability lives on in whichever
        processes hold copies; if none does, the object is gone."""
        fds, self._fds = self._fds, None
        if fds:
            _close_all(fds)

    @overload
    def adopt(self) -> Handle: ...
    @overload
    def adopt(self, kind: builtins.type[_H]) -> _H: ...
    def adopt(self, kind: builtins.type[Handle] | None = None) -> Any:
        """Turn the parts back into a handle (see :func:`adopt_handle`); the
        fds then belong to the handle, or are closed if that fails."""
        fds = self.fds
        self._fds = None
        return adopt_handle(self.type, self.rights, self.extra, fds, kind=kind)

    def __enter__(self) -> ExportedHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fds = "closed" if self._fds is None else f"fds={list(self._fds)}"
        return f"<ExportedHandle {self.type.name} rights={self.rights!r} extra={self.extra:#x} {fds}>"

    def __del__(self) -> None:
        try:
            fds = self._fds
        except AttributeError:  # __init__ failed
            return
        if fds:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()


def export_handle(handle: Handle) -> ExportedHandle:
    """``handle.export()``: the handle's parts, the handle moved out (see the
    module docstring). Needs TRANSFER."""
    obj: KernelObject = handle._require(Rights.TRANSFER)
    rights = handle.rights
    dups: list[int] = []
    HANDLE_TABLE.pin([obj])  # another thread closing the handle must not close the fds mid-dup
    try:
        obj.prepare_transfer(rights)
        for fd in obj.transfer_fds(rights):
            dups.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0))
        exported = ExportedHandle(obj.TYPE, rights, obj.transfer_extra(rights), dups)
    except BaseException:
        _close_all(dups)
        raise
    finally:
        HANDLE_TABLE.unpin([obj])
    handle._moved()
    return exported


@overload
def adopt_handle(obj_type: int, rights: int, extra: int, fds: Sequence[int]) -> Handle: ...
@overload
def adopt_handle(obj_type: int, rights: int, extra: int, fds: Sequence[int], *,
                 kind: type[_H]) -> _H: ...
@overload
def adopt_handle(obj_type: int, rights: int, extra: int, fds: Sequence[int], *,
                 kind: None) -> Handle: ...
def adopt_handle(obj_type: int, rights: int, extra: int, fds: Sequence[int], *,
                 kind: type[Handle] | None = None) -> Any:
    """A handle made of parts that came from outside; it owns ``fds``.

    ``obj_type``, ``rights`` and ``extra`` are a handle descriptor's fields
    (``ExportedHandle`` holds them, or a foreign process says them), ``fds``
    the fds in the type's order. Checked as a receiver checks a message's
    handle: ProtocolError for an unknown type, rights the type never
    allows, or fds that are not what the type needs (the type's
    ``from_transfer``); ValueError for a negative or repeated fd number.
    ``kind`` (e.g. ``kind=Port``): the handle class expected, TypeError
    otherwise. On every error each fd given is closed.

    Ownership passes with the call: do not use or close ``fds`` afterwards.
    """
    fds = [int(fd) for fd in fds]
    try:
        if any(fd < 0 for fd in fds) or len(set(fds)) != len(fds):
            raise ValueError(f"fds must be distinct open fds, not {fds}")
        cls = KernelObject.class_for(obj_type)
        if kind is not None and not issubclass(cls.HANDLE_CLASS, kind):
            raise TypeError(f"a {cls.TYPE.name} handle is a {cls.HANDLE_CLASS.__name__}, "
                            f"not a {kind.__name__}")
        if rights & ~cls.ALLOWED_RIGHTS:
            raise ProtocolError(
                f"rights {rights:#x} are not allowed for a {cls.TYPE.name} handle "
                f"(at most {int(cls.ALLOWED_RIGHTS):#x})"
            )
        if not 0 <= extra < 1 << 64:
            raise ProtocolError(f"extra must be a u64, not {extra}")
        obj = cls.from_transfer(list(fds), Rights(rights), extra)
    except BaseException:
        _close_all(fd for fd in set(fds) if fd >= 0)
        raise
    return HANDLE_TABLE.insert(obj, Rights(rights))


def _close_all(fds: Any) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
