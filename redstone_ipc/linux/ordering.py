"""Memory ordering for data shared with another process, from Python.

Two processes that hand data over through shared memory need three things
from the CPU: a *release* store (everything written before it is visible
before it), an *acquire* load (nothing read after it is read before it), and
now and then a *full fence* (a store followed by a load of another word,
StoreLoad, as in "publish, then check whether the peer sleeps").

* **x86_64** (total store order): every aligned load is an acquire and every
  aligned store a release, so a ``memoryview`` item access — one aligned
  ``mov`` in C — is enough and costs ~30 ns. Only StoreLoad needs a locked
  instruction: acquiring and releasing a ``threading.Lock`` executes one
  (~0.1 µs), which is cheaper than a ctypes call.
* **aarch64** (weakly ordered): plain accesses may be reordered. Loads and
  stores that publish go through libatomic's ``__atomic_load_N`` /
  ``__atomic_store_N`` with ACQUIRE / RELEASE, and fences through
  ``atomic_thread_fence(SEQ_CST)`` (``dmb ish``); each is a ctypes call
  (~0.2–0.3 µs).

:data:`TSO` follows ``linux.atomic.MODE`` (``REDSTONE_IPC_ATOMICS``): True on
x86_64, False with ``REDSTONE_IPC_ATOMICS=libatomic``, which forces the
aarch64 path on x86 (where it is also correct, only slower): the test suite
runs the atomics' tests and the Port and Channel specifications that way in
a subprocess (tests/test_atomic.py, tests/test_weak_ordering.py), so the
weakly ordered code path is exercised on every machine.

Every function here takes a prebuilt :class:`ctypes.c_void_p` (see
``linux.atomic``) and checks nothing: the caller keeps the memory mapped.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable

from .atomic import MODE as _ATOMICS_MODE
from .atomic import _lib

__all__ = [
    "MODE",
    "TSO",
    "RELAXED",
    "ACQUIRE",
    "RELEASE",
    "SEQ_CST",
    "full_fence",
    "load_u64",
    "store_u64",
    "load_u32",
    "store_u32",
    "store_u8",
    "load_u8",
]

RELAXED, ACQUIRE, RELEASE, SEQ_CST = 0, 2, 3, 5

TSO = _ATOMICS_MODE == "x86"
MODE = "tso" if TSO else "libatomic"


def _fn(name: str, restype: object) -> Callable[..., int]:
    f = _lib[name]  # a private function object: no argtypes, prebuilt arguments
    f.restype = restype  # type: ignore[assignment]
    return f  # type: ignore[no-any-return]


_load8 = _fn("__atomic_load_8", ctypes.c_uint64)
_store8 = _fn("__atomic_store_8", None)
_load4 = _fn("__atomic_load_4", ctypes.c_uint32)
_store4 = _fn("__atomic_store_4", None)
_load1 = _fn("__atomic_load_1", ctypes.c_uint8)
_store1 = _fn("__atomic_store_1", None)
_fence = _fn("atomic_thread_fence", None)


def _lock_fence() -> Callable[[], None]:
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def fence() -> None:
        acquire()
        release()

    return fence


def _seq_cst_fence() -> None:
    _fence(SEQ_CST)


full_fence: Callable[[], None] = _lock_fence() if TSO else _seq_cst_fence
"""A StoreLoad barrier: no load after it is done before a store before it."""


def load_u64(addr: ctypes.c_void_p) -> int:
    """Acquire load of a u64 (libatomic; TSO code reads a memoryview instead)."""
    return _load8(addr, ACQUIRE)


def store_u64(addr: ctypes.c_void_p, value: int) -> None:
    """Release store of a u64."""
    _store8(addr, value, RELEASE)


def load_u32(addr: ctypes.c_void_p) -> int:
    """Acquire load of a u32."""
    return _load4(addr, ACQUIRE)


def store_u32(addr: ctypes.c_void_p, value: int) -> None:
    """Release store of a u32."""
    _store4(addr, value, RELEASE)


def load_u8(addr: ctypes.c_void_p) -> int:
    """Acquire load of a byte."""
    return _load1(addr, ACQUIRE)


def store_u8(addr: ctypes.c_void_p, value: int) -> None:
    """Release store of a byte."""
    _store1(addr, value, RELEASE)
