"""What ``/proc`` shows of redstone objects in other processes, without asking them.

* ``/proc/net/unix`` lists every abstract socket in this network namespace,
  to every user: published names are the listeners at
  ``@redstone-ipc/<uid>/<name>``.
* ``/proc/<pid>/fd`` (readable for the processes this user may inspect:
  its own, or all of them for root) names each fd: ``socket:[inode]``, or
  ``/memfd:redstone-<what> (deleted)`` for the library's memfds:
  ``shm`` (a SharedMemory region), ``ring`` and ``segment`` (a connection
  from a sender to a port or endpoint, and its data), ``owner`` (the lock a
  RECEIVE holder keeps: one per port or endpoint it may receive on) and
  ``payload`` (a large message in flight through a socket).
* ``/proc/<pid>/maps`` shows which of those memfds each process maps.

What ``/proc`` cannot show: a queue's depth or senders (they live inside
the receiving process), and which unnamed sockets are pipe ends. Those
come from the publishers' own answers (``redstone_ipc.names.status``).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field

__all__ = ["Listener", "Memfd", "Process", "listeners", "processes"]

_PREFIX = "@redstone-ipc/"
_MEMFD = "/memfd:redstone-"
_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: a listener


@dataclass
class Listener:
    """A published name: the listening socket bound to its address."""

    name: str
    uid: int  # the namespace it is in: the publisher's uid
    inode: int  # the socket's inode, to find the process holding it


@dataclass
class Memfd:
    """One of the library's memfds, as one process holds or maps it."""

    kind: str  # shm, ring, segment, owner, payload
    inode: int
    size: int  # bytes (of the memfd; of the mapping when only mapped)
    held: bool = False  # an fd is open on it
    mapped: bool = False  # mapped into the address space
    writable: bool = False  # mapped writable


@dataclass
class Process:
    """A process holding redstone objects, as /proc shows it."""

    pid: int
    uid: int
    command: str
    memfds: dict[int, Memfd] = field(default_factory=dict)  # by inode
    sockets: set[int] = field(default_factory=set)  # inodes of its sockets

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def listeners(path: str = "/proc/net/unix") -> list[Listener]:
    """Every published name in this network namespace (any user's)."""
    found = []
    with open(path, encoding="ascii", errors="replace") as f:
        next(f, None)  # the header
        for line in f:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path
            if len(fields) < 8 or not fields[7].startswith(_PREFIX):
                continue
            if not int(fields[3], 16) & _ACCEPTCON:
                continue  # a connected socket, not the listener
            uid, _, name = fields[7][len(_PREFIX):].partition("/")
            if uid.isdigit() and name:
                found.append(Listener(name, int(uid), int(fields[6])))
    return found


def processes() -> tuple[list[Process], int]:
    """The processes that hold or map a redstone memfd or hold a socket, among
    those this user may inspect; and how many others could not be read."""
    found = []
    hidden = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            proc = _process(int(entry))
        except PermissionError:
            hidden += 1
            continue
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
        if proc is not None:
            found.append(proc)
    found.sort(key=lambda p: p.pid)
    return found, hidden


def _process(pid: int) -> Process | None:
    base = f"/proc/{pid}"
    fds = os.listdir(f"{base}/fd")  # PermissionError: not ours to inspect
    memfds: dict[int, Memfd] = {}
    sockets: set[int] = set()
    for fd in fds:
        try:
            target = os.readlink(f"{base}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(int(target[8:-1]))
            elif target.startswith(_MEMFD):
                st = os.stat(f"{base}/fd/{fd}")
                kind = target[len(_MEMFD):].split(" ", 1)[0]
                memfd = memfds.setdefault(st.st_ino, Memfd(kind, st.st_ino, st.st_size))
                memfd.held = True
        except (FileNotFoundError, ValueError):
            continue  # closed while we looked
    with open(f"{base}/maps", encoding="ascii", errors="replace") as f:
        for line in f:
            if _MEMFD not in line:
                continue
            # address perms offset dev inode path
            span, perms, _offset, _dev, inode, path = line.split(None, 5)
            start, end = (int(x, 16) for x in span.split("-"))
            kind = path[len(_MEMFD):].split(" ", 1)[0]
            found = memfds.get(int(inode))
            if found is None:
                found = memfds[int(inode)] = Memfd(kind, int(inode), 0)
            memfd = found
            if not memfd.held:
                memfd.size = max(memfd.size, end - start)
            memfd.mapped = True
            memfd.writable |= perms[1] == "w"
    if not memfds and not sockets:
        return None
    with open(f"{base}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    command = " ".join(a.decode(errors="replace") for a in argv if a)
    return Process(pid, os.stat(base).st_uid, command, memfds, sockets)
