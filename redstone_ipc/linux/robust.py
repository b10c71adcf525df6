"""Robust futexes: the kernel releases a lock whose holder died.

A futex-based lock keeps its owner's thread id (TID) in the lock word. If the
owner dies holding it (SIGKILL, a crash, a thread that just returns), nobody
would ever unlock it. Linux solves this with a per-thread *robust list*
(Documentation/locking/robust-futex-ABI.rst): each thread registers, with
``set_robust_list(2)``, the address of a ``robust_list_head`` in its own
memory::

    struct robust_list      { struct robust_list *next; };
    struct robust_list_head { struct robust_list list;        /* first entry */
                              long futex_offset;               /* entry -> word */
                              struct robust_list *list_op_pending; };

Every lock the thread holds has an *entry* linked into that circular list,
and the lock word lives at ``entry + futex_offset``. When the thread exits
(for any reason, including SIGKILL and execve) the kernel walks the list and,
for each word whose TID bits are the dying thread's, sets
``FUTEX_OWNER_DIED`` (keeping ``FUTEX_WAITERS``, clearing the TID) and wakes
one waiter. ``list_op_pending`` covers the instants between taking the word
and linking the entry (and between unlinking and releasing): the kernel
treats that entry as listed too, and if the word is free it wakes a waiter
in case the dying thread was the one that had been woken.

glibc already registers one head per thread (and re-registers an empty one
in a fork child), with ``futex_offset`` chosen for ``pthread_mutex_t``. We
share that list instead of replacing it, so glibc's own robust mutexes keep
working: our entries use the same node shape (``prev`` just before ``next``,
both pointing at neighbours' ``next`` fields; the kernel follows ``next``),
are inserted right after the head, as glibc and musl do, and are unlinked the
way they unlink. Because the kernel finds the word at ``entry +
futex_offset``, and ``futex_offset`` is glibc's (read from the head at run
time, -32 on x86_64 and aarch64), the entry must sit in the **same shared
mapping** as the word: every lock reserves :data:`ENTRY_ROOM` bytes starting
at its word, and :data:`ENTRY_OFFSET` says where, inside that room, this
process puts the entry's ``next`` field. Entries hold pointers valid in the
owner's address space only; only the owner reads or writes its entry, and it
is unlinked before the word is released, so the next owner, in whatever
process, starts from its own pointers.

Fallback
--------
If the kernel refuses robust lists (``ENOSYS``, some sandboxes) or the libc
places the word where an entry cannot fit, :data:`AVAILABLE` is False (per
thread: :attr:`RobustList.enabled`). Lock owners then mark the word with
:data:`NOT_ROBUST`, and waiters that see the mark sleep in bounded slices
(:data:`LIVENESS_SLICE`), checking after each slice whether the owner thread
still exists (``/proc/<tid>/stat``, zombies count as dead) and taking the
lock over if not. Its known weakness: a TID reused by a new thread before the
check keeps the lock "alive" until that thread ends too.

Rules for users of this module: link and unlink only from the owning thread,
never from a signal handler (the list is plain memory, not reentrant), and
keep every process sharing a lock in one PID namespace (the word holds TIDs).
"""

from __future__ import annotations

import ctypes
import os
import threading

from .libc import SYS, libc

__all__ = [
    "FUTEX_WAITERS",
    "FUTEX_OWNER_DIED",
    "FUTEX_TID_MASK",
    "NOT_ROBUST",
    "OWNER_MASK",
    "ENTRY_ROOM",
    "ENTRY_OFFSET",
    "AVAILABLE",
    "LIVENESS_SLICE",
    "RobustList",
    "current",
    "thread_alive",
]

FUTEX_WAITERS = 0x80000000  # kernel ABI: someone sleeps (or may sleep) on the word
FUTEX_OWNER_DIED = 0x40000000  # kernel ABI: set by the kernel when the owner died
FUTEX_TID_MASK = 0x3FFFFFFF  # kernel ABI: the owner's TID
# Ours, inside the kernel's TID field: set by owners that are NOT on a robust
# list (fallback). The kernel then never matches the word to a TID (harmless:
# such owners are not on any list), and waiters know to poll for liveness.
# TIDs never reach it: PID_MAX_LIMIT is 2**22.
NOT_ROBUST = 0x20000000
OWNER_MASK = 0x1FFFFFFF  # the TID itself

ENTRY_ROOM = 64  # bytes a lock reserves from its word on, for the word and the entry
LIVENESS_SLICE = 0.1  # seconds between owner-liveness checks in fallback mode

_PTR = ctypes.sizeof(ctypes.c_void_p)
_HEAD_SIZE = 3 * _PTR  # sizeof(struct robust_list_head), what the kernel checks
_NOT_PI = ~1  # list pointers may carry bit 0 (PI futex) in glibc; mask it
_Cell = ctypes.c_size_t  # a pointer-sized unsigned cell at an address

_get_robust_list = libc["syscall"]
_get_robust_list.restype = ctypes.c_long


def _registered_head() -> tuple[int, int] | None:
    """(head address, futex_offset) of this thread's registered list, or None."""
    head = ctypes.c_void_p()
    size = ctypes.c_size_t()
    if _get_robust_list(SYS["get_robust_list"], 0, ctypes.byref(head), ctypes.byref(size)) != 0:
        return None  # ENOSYS (or a sandbox that forbids it): no robust lists
    if not head.value:
        return 0, 0
    return head.value, ctypes.c_long.from_address(head.value + _PTR).value


# Heads we registered ourselves (for threads whose libc registered none). Never
# freed: the kernel walks a head at thread exit, after Python let go of it.
_own_heads: list[ctypes.Array] = []


def _register_own_head(futex_offset: int) -> int | None:
    # [prev][list][futex_offset][list_op_pending]; the kernel sees &list.
    # The prev cell is the glibc-style "prev of the head" that nobody reads.
    block = (_Cell * 4)()
    head = ctypes.addressof(block) + _PTR
    block[1] = head  # empty circular list: points at itself
    ctypes.c_long.from_address(head + _PTR).value = futex_offset
    set_robust_list = libc["syscall"]
    set_robust_list.restype = ctypes.c_long
    if set_robust_list(SYS["set_robust_list"], ctypes.c_void_p(head), _HEAD_SIZE) != 0:
        return None
    _own_heads.append(block)
    return head


def _entry_offset() -> int | None:
    """Where the entry's ``next`` field goes, counted from the word, or None."""
    found = _registered_head()
    if found is None:
        return None
    head, futex_offset = found
    if not head:
        futex_offset = -32  # we will register our own heads, glibc's layout
    offset = -futex_offset
    # The entry (prev, next) must lie after the word and inside ENTRY_ROOM.
    if offset - _PTR < 4 or offset + _PTR > ENTRY_ROOM or offset % 4:
        return None
    return offset


ENTRY_OFFSET: int | None = _entry_offset()
AVAILABLE: bool = ENTRY_OFFSET is not None


class RobustList:
    """The calling thread's robust list: its TID and its head.

    Get it with :func:`current`, on the thread that uses it. ``enabled`` is
    False when this thread cannot use a robust list (then owners mark their
    words NOT_ROBUST).
    """

    __slots__ = ("tid", "enabled", "head", "_list", "_pending")

    def __init__(self) -> None:
        self.tid: int = threading.get_native_id()
        self.enabled = False
        self.head = 0
        if not AVAILABLE:
            return
        found = _registered_head()
        if found is None:
            return
        head, futex_offset = found
        if not head:
            own = _register_own_head(-ENTRY_OFFSET)  # type: ignore[operator]
            if own is None:
                return
            head = own
            futex_offset = -ENTRY_OFFSET  # type: ignore[operator]
        if futex_offset != -ENTRY_OFFSET:  # type: ignore[operator]
            return  # a libc with another layout on this thread: fall back
        self.head = head
        self._list = _Cell.from_address(head)  # head.list.next
        self._pending = _Cell.from_address(head + 2 * _PTR)  # head.list_op_pending
        self.enabled = True

    # Contract (all four): call on the owning thread only; ``entry`` is the
    # address of the entry's ``next`` field, ``word + ENTRY_OFFSET``.

    def begin(self, entry: int) -> None:
        """Announce a lock or unlock operation on ``entry`` (list_op_pending)."""
        self._pending.value = entry

    def end(self) -> None:
        """The operation is over (or abandoned): clear list_op_pending."""
        self._pending.value = 0

    def link(self, entry: int) -> None:
        """Insert ``entry`` right after the head; the caller owns its word."""
        head = self.head
        first = self._list.value
        _Cell.from_address(entry).value = first  # entry.next
        _Cell.from_address(entry - _PTR).value = head  # entry.prev
        if first & _NOT_PI != head:
            _Cell.from_address((first & _NOT_PI) - _PTR).value = entry  # first.prev
        # Publishing last: the kernel (on this very thread's exit) must only
        # ever see a fully built entry.
        self._list.value = entry

    def unlink(self, entry: int) -> None:
        """Remove ``entry`` from the list (``begin(entry)`` first)."""
        head = self.head
        nxt = _Cell.from_address(entry).value
        prev = _Cell.from_address(entry - _PTR).value & _NOT_PI
        if prev == head:
            self._list.value = nxt
        else:
            _Cell.from_address(prev).value = nxt
        if nxt & _NOT_PI != head:
            _Cell.from_address((nxt & _NOT_PI) - _PTR).value = prev

    def entries(self) -> list[int]:
        """The addresses of the entries now listed (for tests and debugging)."""
        found: list[int] = []
        node = self._list.value & _NOT_PI if self.enabled else self.head
        while node != self.head and len(found) < 2048:  # the kernel's own limit
            found.append(node)
            node = _Cell.from_address(node).value & _NOT_PI
        return found


_tls = threading.local()


def current() -> RobustList:
    """This thread's :class:`RobustList` (built on first use, per thread)."""
    try:
        return _tls.list
    except AttributeError:
        state = _tls.list = RobustList()
        return state


def _after_fork_in_child() -> None:
    # New TID; glibc gave the child an empty, freshly registered list. The old
    # per-thread state describes the parent: drop all of it.
    global _tls
    _tls = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)


def thread_alive(tid: int) -> bool:
    """Whether the thread ``tid`` exists and is not a zombie (fallback mode only).

    Works for any thread, not just process leaders: /proc/<tid> resolves TIDs.
    """
    try:
        with open(f"/proc/{tid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # exists but unreadable: assume alive rather than steal
    # "pid (comm) S ...": comm may contain ')' so take the last one.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x")
