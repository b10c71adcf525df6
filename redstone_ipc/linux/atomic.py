"""Atomic operations on 32-bit words in shared memory, through libatomic.

Python has no atomic read-modify-write on raw memory, and a ``memoryview``
store is not one: two processes incrementing the same word through views lose
updates. GCC's ``libatomic.so.1`` exports the ``__atomic_*_4`` builtins as
plain C functions; called through ctypes they are correct across processes
(the memory is the same physical page; the CPU's lock-prefixed or LL/SC
instructions work on physical cache lines) and cost about 0.2–0.4 µs each.
Every operation here is sequentially consistent (``__ATOMIC_SEQ_CST``).

Addresses
---------
Each function takes ``addr`` as a :class:`ctypes.c_void_p` built once per
word (``ptr(address)``), because that is the cheapest form to hand to ctypes:
the functions are called without ``argtypes`` so that no per-call conversion
runs. A plain ``int`` address is accepted too, at the price of one small
allocation per call. The caller guarantees that the address is a 4-byte
aligned word of memory that stays mapped (and writable, for anything but
:func:`load_u32`) for the duration of the call: there is no checking here,
and a bad address crashes the process. The typed primitives above this
module (``redstone_ipc.sync``) do that checking once, when they attach.
"""

from __future__ import annotations

import ctypes
from typing import Any
import ctypes.util

__all__ = [
    "SEQ_CST",
    "ptr",
    "load_u32",
    "store_u32",
    "exchange_u32",
    "cas_u32",
    "fetch_add_u32",
    "fetch_or_u32",
    "fetch_and_u32",
]

SEQ_CST = 5  # __ATOMIC_SEQ_CST
_MASK = 0xFFFFFFFF

try:
    _lib = ctypes.CDLL(ctypes.util.find_library("atomic") or "libatomic.so.1")
except OSError as exc:  # pragma: no cover - depends on the machine
    raise ImportError(
        "redstone_ipc needs GCC's libatomic.so.1 for atomic operations on shared "
        "memory, and it could not be loaded. Install it (Debian/Ubuntu: "
        "'apt install libatomic1'; Fedora/RHEL: 'dnf install libatomic'; "
        f"Alpine: 'apk add libatomic'). Loader said: {exc}"
    ) from exc


def _fn(name: str, restype: Any) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    # A private function object per symbol: ``argtypes`` stay unset on purpose
    # (arguments are prebuilt c_void_p or small ints, which ctypes passes
    # without conversion), ``restype`` gives the u32 result.
    f = _lib[name]
    f.restype = restype
    return f


_load = _fn("__atomic_load_4", ctypes.c_uint32)
_store = _fn("__atomic_store_4", None)
_exchange = _fn("__atomic_exchange_4", ctypes.c_uint32)
# bool __atomic_compare_exchange_4(u32 *mptr, u32 *eptr, u32 desired,
#                                  int success_order, int failure_order)
_cas = _fn("__atomic_compare_exchange_4", ctypes.c_bool)
_fetch_add = _fn("__atomic_fetch_add_4", ctypes.c_uint32)
_fetch_or = _fn("__atomic_fetch_or_4", ctypes.c_uint32)
_fetch_and = _fn("__atomic_fetch_and_4", ctypes.c_uint32)

_c_void_p = ctypes.c_void_p
_c_uint32 = ctypes.c_uint32
_byref = ctypes.byref

def ptr(address: int) -> ctypes.c_void_p:
    """A prebuilt pointer for ``address``: build it once, pass it on every call."""
    return _c_void_p(address)


def load_u32(addr: ctypes.c_void_p | int) -> int:
    """The word's current value."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _load(addr, SEQ_CST)


def store_u32(addr: ctypes.c_void_p | int, value: int) -> None:
    """Store ``value`` (taken modulo 2**32)."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    _store(addr, value & _MASK, SEQ_CST)


def exchange_u32(addr: ctypes.c_void_p | int, value: int) -> int:
    """Store ``value`` and return the value it replaced, in one atomic step."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _exchange(addr, value & _MASK, SEQ_CST)


def cas_u32(addr: ctypes.c_void_p | int, expected: int, desired: int) -> tuple[bool, int]:
    """Compare-and-swap: if the word holds ``expected``, store ``desired``.

    Returns ``(ok, observed)``: ``ok`` tells whether the swap happened and
    ``observed`` is the value the word held (``expected`` when ``ok``), which
    is what a retry loop needs next.
    """
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    # A fresh cell per call, not a shared one: a signal handler (or another
    # thread) running between filling and reading a shared cell could swap
    # against the wrong expected value.
    cell = _c_uint32(expected & _MASK)
    ok = _cas(addr, _byref(cell), desired & _MASK, SEQ_CST, SEQ_CST)
    return ok, cell.value


def fetch_add_u32(addr: ctypes.c_void_p | int, delta: int) -> int:
    """Add ``delta`` (negative subtracts; wraps modulo 2**32); return the old value."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _fetch_add(addr, delta & _MASK, SEQ_CST)


def fetch_or_u32(addr: ctypes.c_void_p | int, bits: int) -> int:
    """Set ``bits``; return the old value."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _fetch_or(addr, bits & _MASK, SEQ_CST)


def fetch_and_u32(addr: ctypes.c_void_p | int, mask: int) -> int:
    """Keep only ``mask``'s bits (``fetch_and_u32(a, ~BIT)`` clears BIT); return the old value."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _fetch_and(addr, mask & _MASK, SEQ_CST)
