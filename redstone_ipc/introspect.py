"""What this process holds: every live object of its handle table, described.

``objects()`` lists one dict per kernel object (several handles to one
object count once), in a form ``json.dumps`` takes as is. It is what a
publication answers to ``redstone-ipc ls`` (``names.status``), and a
program may log it itself:

>>> from redstone_ipc import Port, introspect
>>> port = Port(capacity=8)
>>> introspect.objects()
[{'kind': 'port', 'id': 863287, 'handles': 1,
  'rights': 'SEND|RECEIVE|DUPLICATE|TRANSFER|WAIT', 'capacity': 8,
  'receiving': False, 'owner_lock': 303643}]

Fields, by kind:

* every object: ``kind`` (``port``, ``endpoint``, ``shm``, ``pipe-reader``,
  ``pipe-writer``, ``fd``), ``id`` (the same number in every process holding
  the object: a port's PortId, a region's ShmId, a pipe end's socket inode,
  an endpoint's door inode), ``handles`` (how many handles here) and
  ``rights`` (all that they hold together);
* ``port`` and ``endpoint``: ``capacity``; ``receiving``, whether its queue
  is served in this process; if so, ``depth`` (messages queued, read or
  not) and ``senders`` (the pids of the processes connected to it, one
  entry per connection); ``owner_lock``, the inode of the ``redstone-owner``
  memfd that a RECEIVE holder keeps (what ``/proc/<pid>/fd`` shows of it);
* ``shm``: ``size`` in bytes and ``mappings`` (live in this process);
* pipe ends: ``capacity`` (the kernel's budget for unread bytes) and
  ``buffered`` (unread bytes now, on the reader's side).

Reading the numbers takes the queue's lock for a moment, never a queue that
is not served here: describing a port never makes this process its receiver.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
from typing import Any

from .core.object import HANDLE_TABLE, Handle, KernelObject, ObjectType, Rights
from .errors import InvalidHandle

__all__ = ["objects", "describe", "kind_name", "rights_text"]

_KINDS = {
    ObjectType.PORT: "port",
    ObjectType.CHANNEL: "endpoint",
    ObjectType.SHM: "shm",
    ObjectType.PIPE_READER: "pipe-reader",
    ObjectType.PIPE_WRITER: "pipe-writer",
    ObjectType.FD: "fd",
}
_INT = struct.Struct("i")


def objects() -> list[dict[str, Any]]:
    """Every object this process holds a live handle to, described (a snapshot).

    Handles that reach one object through several local copies (a port
    received back in the process that made it, say) are merged into one
    entry, by kind and id.
    """
    found: dict[int, tuple[KernelObject, list[Handle]]] = {}
    for value in HANDLE_TABLE.values():
        try:
            handle = HANDLE_TABLE.get(value)
        except InvalidHandle:  # closed meanwhile
            continue
        obj = handle._object
        if obj is not None:
            found.setdefault(id(obj), (obj, []))[1].append(handle)
    merged: dict[tuple[str, int], tuple[dict[str, Any], Rights]] = {}
    for obj, handles in found.values():
        rights = Rights.NONE
        for h in handles:
            rights |= h._rights
        try:
            info = _describe(obj, rights, len(handles))
        except (OSError, InvalidHandle):  # it went away while we looked
            continue
        key = (info["kind"], info["id"])
        if key in merged:
            other, other_rights = merged[key]
            rights |= other_rights
            if other.get("receiving"):  # the copy that serves the queue knows it
                info, other = other, info
            info["handles"] += other["handles"]
            info["rights"] = rights_text(rights)
            if "owner_lock" in other:
                info.setdefault("owner_lock", other["owner_lock"])
        merged[key] = (info, rights)
    return sorted((info for info, _ in merged.values()), key=lambda d: (d["kind"], d["id"]))


def describe(handle: Handle) -> dict[str, Any]:
    """One handle's object, described as in :func:`objects` (with this
    handle's rights and ``handles`` 1). InvalidHandle if it is closed."""
    return _describe(handle._live(), handle.rights, 1)


def _describe(obj: Any, rights: Rights, handles: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kind": kind_name(obj.TYPE), "id": 0, "handles": handles, "rights": rights_text(rights),
    }
    if obj.TYPE in (ObjectType.PORT, ObjectType.CHANNEL):
        info["id"] = obj.door_key
        info["capacity"] = obj.capacity
        receive = obj.receive
        inbox = receive.inbox if receive is not None else None
        info["receiving"] = inbox is not None
        if inbox is not None:
            stats = inbox.stats()
            info["depth"] = stats["depth"]
            info["senders"] = sorted(pid for pid, _uid, _gid in inbox.senders())
        if receive is not None and receive.lock_fd >= 0:
            info["owner_lock"] = os.fstat(receive.lock_fd).st_ino
    elif obj.TYPE is ObjectType.SHM:
        from .shm.shm import _MAPPINGS

        info["id"] = obj.id
        info["size"] = obj.size
        info["mappings"] = sum(1 for m in list(_MAPPINGS) if not m.closed and m.shm_id == obj.id)
    elif obj.TYPE in (ObjectType.PIPE_READER, ObjectType.PIPE_WRITER):
        fd = obj.fd
        info["id"] = os.fstat(fd).st_ino
        info["capacity"] = obj.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if obj.TYPE is ObjectType.PIPE_READER:
            raw = fcntl.ioctl(fd, termios.FIONREAD, bytes(_INT.size))
            info["buffered"] = _INT.unpack(raw)[0]
    elif obj.TYPE is ObjectType.FD:
        info["id"] = os.fstat(obj.fd).st_ino
    return info


def kind_name(obj_type: ObjectType) -> str:
    """The word ``objects()`` uses for a kind: ``port``, ``endpoint``, ``shm``, ..."""
    return _KINDS.get(obj_type, obj_type.name.lower())


def rights_text(rights: Rights) -> str:
    """``SEND|DUPLICATE|TRANSFER``: one name per right held, ``NONE`` for none."""
    # One name per bit (Python 3.10 also iterates aliases such as BASIC).
    names = [r.name for r in Rights if r.name and bin(r).count("1") == 1 and r & rights]
    return "|".join(n for n in names if n) or "NONE"

