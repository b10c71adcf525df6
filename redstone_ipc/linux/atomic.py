"""Atomic operations on 32- and 64-bit words of shared memory.

Python has no atomic read-modify-write on raw memory, and a ``memoryview``
store is not one: two processes incrementing the same word through views lose
updates. GCC's ``libatomic.so.1`` exports the ``__atomic_*_N`` builtins as
plain C functions; called through ctypes they are correct across processes
(the memory is the same physical page; the CPU's lock-prefixed or LL/SC
instructions work on physical cache lines).

This module is the unchecked bottom layer. Two families:

* **Sequentially consistent** (:func:`load_u32`, :func:`store_u32`,
  :func:`exchange_u32`, :func:`cas_u32`, :func:`fetch_add_u32`,
  :func:`fetch_or_u32`, :func:`fetch_and_u32`, and the ``_u64`` forms):
  always libatomic with ``__ATOMIC_SEQ_CST``. The primitives in
  ``redstone_ipc.sync`` use these: their "announce, then look" protocols
  need one total order of all operations.
* **Ordered**, for data paths (a ring's head and tail, a sequence word):
  :func:`load_acquire_u32`/``_u64`` (acquire), :func:`store_release_u32`/
  ``_u64`` (release), :func:`fetch_add_acq_rel_u32`/``_u64`` and
  :func:`cas_acq_rel_u32`/``_u64`` (acq_rel; acquire when a CAS fails).
  Loads and stores are implemented per :data:`MODE`; read-modify-writes
  always go through libatomic.

The ordering switch: :data:`MODE`
---------------------------------
``"x86"``: on x86-64 (TSO) every aligned load is an acquire and every
aligned store is a release, so the ordered loads and stores are plain
accesses through a prebuilt ctypes cell: ``ref.cell.value``, which CPython
performs as one aligned 4- or 8-byte ``mov`` (disassembled in CPython 3.11's
``_ctypes``: ``I_get``/``Q_get`` are one load; ``I_set``/``Q_set`` read the
old word, for bitfields, then write the new one with one store) inside a C
function of its own, so the C compiler cannot move it across the other
memory accesses of the program: each is a separate call made by the
interpreter. About 55 ns a call, where a libatomic call costs 220 to 400 ns
(``bench/bench_atomic.py``; ``--asm`` shows the instructions).

``"libatomic"``: loads are ``__atomic_load_N(p, __ATOMIC_ACQUIRE)`` and
stores ``__atomic_store_N(p, v, __ATOMIC_RELEASE)`` (``ldar``/``stlr`` on
aarch64). This is the only correct choice where stores may be reordered
(aarch64, which redstone-ipc supports), and correct, only slower, on x86.

:data:`MODE` is chosen once, at import: the ``REDSTONE_IPC_ATOMICS``
environment variable if it is set (``x86``, ``libatomic`` or ``auto``),
otherwise from ``platform.machine()`` (``x86`` on x86-64, ``libatomic``
anywhere else). ``x86`` is refused on other machines. The module-level
ordered functions are those of ``build_ops(MODE)``, and so are the ones
``Mapping.load_u32`` and its siblings use. :func:`build_ops` builds the set
for any mode, which lets a test run the ``libatomic`` path on x86 in-process;
run a whole interpreter with ``REDSTONE_IPC_ATOMICS=libatomic`` to make the
package itself use it.

Addresses: the contract
-----------------------
Each function takes the address of its word prebuilt once, never converted
per call (the functions are called without ``argtypes``):

* the ordered functions take a :class:`U32Ref` or :class:`U64Ref`: a
  ``ctypes.c_void_p`` (pass it to ``futex(2)`` or to the seq_cst functions
  too) that also carries the ctypes cell of the x86 path. Use a ``U32Ref``
  with the ``_u32`` functions and a ``U64Ref`` with the ``_u64`` ones;
* the seq_cst functions take any ``ctypes.c_void_p`` (:func:`ptr`), or a
  plain ``int`` at the price of one allocation per call.

The caller guarantees that the address is an aligned word (4 or 8 bytes;
the ref classes check it) of memory that stays mapped for the duration of
the call, and writable for anything but a load. Nothing else is checked: a
bad address crashes the process. The checked layer above this module is
``Mapping.load_u32`` and its siblings, and the primitives in
``redstone_ipc.sync``, which check once, when they attach.

Values are taken modulo 2**32 (2**64): ``fetch_add_u32(p, -1)`` subtracts
one. The libatomic functions run without releasing the GIL (``PyDLL``): they
never block, and releasing and taking the GIL back would cost more than the
operation. ``bench/bench_atomic.py`` measures every operation in both modes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import operator
import os
import platform
from typing import Any, Callable, NamedTuple

__all__ = [
    "RELAXED",
    "ACQUIRE",
    "RELEASE",
    "ACQ_REL",
    "SEQ_CST",
    "MODES",
    "MODE",
    "ENV_VAR",
    "default_mode",
    "build_ops",
    "AtomicOps",
    "OPS",
    "U32Ref",
    "U64Ref",
    "ptr",
    "plain_view",
    # sequentially consistent, always libatomic
    "load_u32",
    "store_u32",
    "exchange_u32",
    "cas_u32",
    "fetch_add_u32",
    "fetch_or_u32",
    "fetch_and_u32",
    "load_u64",
    "store_u64",
    "exchange_u64",
    "cas_u64",
    "fetch_add_u64",
    # ordered, per MODE
    "load_acquire_u32",
    "store_release_u32",
    "fetch_add_acq_rel_u32",
    "cas_acq_rel_u32",
    "load_acquire_u64",
    "store_release_u64",
    "fetch_add_acq_rel_u64",
    "cas_acq_rel_u64",
]

# The C11 memory orders, as GCC numbers them (__ATOMIC_*).
RELAXED = 0
ACQUIRE = 2
RELEASE = 3
ACQ_REL = 4
SEQ_CST = 5

_MASK = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF

try:
    # PyDLL: the GIL stays held during the call (see the module docstring).
    _lib = ctypes.PyDLL(ctypes.util.find_library("atomic") or "libatomic.so.1")
except OSError as exc:  # pragma: no cover - depends on the machine
    raise ImportError(
        "redstone_ipc needs GCC's libatomic.so.1 for atomic operations on shared "
        "memory, and it could not be loaded. Install it (Debian/Ubuntu: "
        "'apt install libatomic1'; Fedora/RHEL: 'dnf install libatomic'; "
        f"Alpine: 'apk add libatomic'). Loader said: {exc}"
    ) from exc


def _fn(name: str, restype: Any) -> Any:
    # A private function object per symbol: ``argtypes`` stay unset on purpose
    # (arguments are prebuilt c_void_p, small ints or c_uint64 objects, which
    # ctypes passes without conversion), ``restype`` gives the result.
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

_load8 = _fn("__atomic_load_8", ctypes.c_uint64)
_store8 = _fn("__atomic_store_8", None)
_exchange8 = _fn("__atomic_exchange_8", ctypes.c_uint64)
_cas8 = _fn("__atomic_compare_exchange_8", ctypes.c_bool)
_fetch_add8 = _fn("__atomic_fetch_add_8", ctypes.c_uint64)

_c_void_p = ctypes.c_void_p
_c_uint32 = ctypes.c_uint32
# 64-bit values travel as c_uint64 objects: without argtypes ctypes passes a
# Python int as a C int, whose upper 32 bits the callee would read from
# whatever libffi left in the register. c_uint64(v) also takes v mod 2**64.
_c_uint64 = ctypes.c_uint64
_byref = ctypes.byref


def ptr(address: int) -> ctypes.c_void_p:
    """A prebuilt pointer for ``address``: build it once, pass it on every call."""
    return _c_void_p(address)


class U32Ref(ctypes.c_void_p):
    """The address of a u32, prebuilt once for the ordered ``_u32`` functions.

    A ``ctypes.c_void_p`` (usable wherever one is: ``futex(2)``, the seq_cst
    functions) that also holds ``cell``, a ``ctypes.c_uint32`` at the same
    address: the plain access of the x86 path. Neither pins the memory: the
    caller keeps it mapped while it uses the ref. ValueError if ``address``
    is not 4-byte aligned (a misaligned atomic is a SIGBUS on aarch64).
    """

    __slots__ = ("cell",)

    def __init__(self, address: int) -> None:
        if address <= 0 or address % 4:
            raise ValueError(f"a u32 needs a 4-byte aligned address, not {address:#x}")
        super().__init__(address)
        self.cell = _c_uint32.from_address(address)

    def __repr__(self) -> str:
        return f"U32Ref({self.value or 0:#x})"


class U64Ref(ctypes.c_void_p):
    """The address of a u64, prebuilt once for the ordered ``_u64`` functions.

    As :class:`U32Ref`, with an 8-byte ``ctypes.c_uint64`` cell; the address
    must be 8-byte aligned (ValueError otherwise).
    """

    __slots__ = ("cell",)

    def __init__(self, address: int) -> None:
        if address <= 0 or address % 8:
            raise ValueError(f"a u64 needs an 8-byte aligned address, not {address:#x}")
        super().__init__(address)
        self.cell = _c_uint64.from_address(address)

    def __repr__(self) -> str:
        return f"U64Ref({self.value or 0:#x})"


_memory_view = ctypes.pythonapi.PyMemoryView_FromMemory
_memory_view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
_memory_view.restype = ctypes.py_object
_PYBUF_READ = 0x100
_PYBUF_WRITE = 0x200


def plain_view(address: int, length: int, fmt: str, writable: bool) -> memoryview:
    """A memoryview of ``length`` bytes at ``address``, cast to ``fmt`` ("I"
    or "Q"): the x86 path's plain accesses for a whole region.

    ``view[i]`` and ``view[i] = v`` are one aligned load or store: CPython's
    ``unpack_single``/``pack_single`` copy the item with a ``memcpy`` of its
    fixed size, which compiles to one ``mov`` (checked in 3.11's
    ``pack_single``). Unlike ``memoryview(mapping)``, the view is not an export of
    any object: it neither pins the memory nor keeps an object alive, so the
    caller must ``release()`` it before the memory is unmapped; an access
    after that raises ValueError instead of touching the memory. Read-only
    (stores raise TypeError) unless ``writable``.
    """
    base = _memory_view(address, length, _PYBUF_WRITE if writable else _PYBUF_READ)
    try:
        return base.cast(fmt)
    finally:
        base.release()  # the cast keeps the memory's description alive


# -- sequentially consistent: always libatomic ----------------------------------


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
    cell = _c_uint32(expected)
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


def load_u64(addr: ctypes.c_void_p | int) -> int:
    """The u64's current value (the address must be 8-byte aligned)."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _load8(addr, SEQ_CST)


def store_u64(addr: ctypes.c_void_p | int, value: int) -> None:
    """Store ``value`` (taken modulo 2**64)."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    _store8(addr, _c_uint64(value), SEQ_CST)


def exchange_u64(addr: ctypes.c_void_p | int, value: int) -> int:
    """Store ``value`` and return the value it replaced, in one atomic step."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _exchange8(addr, _c_uint64(value), SEQ_CST)


def cas_u64(addr: ctypes.c_void_p | int, expected: int, desired: int) -> tuple[bool, int]:
    """Compare-and-swap on a u64; ``(ok, observed)`` as :func:`cas_u32`."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    cell = _c_uint64(expected)
    ok = _cas8(addr, _byref(cell), _c_uint64(desired), SEQ_CST, SEQ_CST)
    return ok, cell.value


def fetch_add_u64(addr: ctypes.c_void_p | int, delta: int) -> int:
    """Add ``delta`` (wraps modulo 2**64); return the old value."""
    if addr.__class__ is int:
        addr = _c_void_p(addr)
    return _fetch_add8(addr, _c_uint64(delta), SEQ_CST)


# -- ordered: loads and stores per mode, read-modify-writes through libatomic ------

# x86: plain accesses through the ref's cell. attrgetter is a C callable: no
# Python frame for the load.
_x86_load = operator.attrgetter("cell.value")


def _x86_store(ref: Any, value: int) -> None:
    ref.cell.value = value  # ctypes takes it modulo 2**32 (2**64)


def _lib_load_acquire_u32(ref: U32Ref) -> int:
    return _load(ref, ACQUIRE)


def _lib_store_release_u32(ref: U32Ref, value: int) -> None:
    _store(ref, value & _MASK, RELEASE)


def _lib_load_acquire_u64(ref: U64Ref) -> int:
    return _load8(ref, ACQUIRE)


def _lib_store_release_u64(ref: U64Ref, value: int) -> None:
    _store8(ref, _c_uint64(value), RELEASE)


def _fetch_add_acq_rel_u32(ref: U32Ref, delta: int) -> int:
    return _fetch_add(ref, delta & _MASK, ACQ_REL)


def _fetch_add_acq_rel_u64(ref: U64Ref, delta: int) -> int:
    return _fetch_add8(ref, _c_uint64(delta), ACQ_REL)


def _cas_acq_rel_u32(ref: U32Ref, expected: int, desired: int) -> tuple[bool, int]:
    cell = _c_uint32(expected)  # fresh per call: see cas_u32
    ok = _cas(ref, _byref(cell), desired & _MASK, ACQ_REL, ACQUIRE)
    return ok, cell.value


def _cas_acq_rel_u64(ref: U64Ref, expected: int, desired: int) -> tuple[bool, int]:
    cell = _c_uint64(expected)
    ok = _cas8(ref, _byref(cell), _c_uint64(desired), ACQ_REL, ACQUIRE)
    return ok, cell.value


class AtomicOps(NamedTuple):
    """The ordered operations of one mode (see :func:`build_ops`).

    Every function takes a :class:`U32Ref` (``_u32``) or :class:`U64Ref`
    (``_u64``) and follows the module's address contract.
    """

    mode: str
    #: ``(ref) -> value``: an acquire load.
    load_acquire_u32: Callable[[U32Ref], int]
    #: ``(ref, value) -> None``: a release store of ``value`` mod 2**32.
    store_release_u32: Callable[[U32Ref, int], None]
    #: ``(ref, delta) -> old``: an acq_rel atomic add (wraps).
    fetch_add_acq_rel_u32: Callable[[U32Ref, int], int]
    #: ``(ref, expected, desired) -> (ok, observed)``: acq_rel, acquire on failure.
    cas_acq_rel_u32: Callable[[U32Ref, int, int], tuple[bool, int]]
    load_acquire_u64: Callable[[U64Ref], int]
    store_release_u64: Callable[[U64Ref, int], None]
    fetch_add_acq_rel_u64: Callable[[U64Ref, int], int]
    cas_acq_rel_u64: Callable[[U64Ref, int, int], tuple[bool, int]]


MODES = ("x86", "libatomic")
ENV_VAR = "REDSTONE_IPC_ATOMICS"


def default_mode(machine: str | None = None) -> str:
    """The mode for ``machine`` (default: this one): ``"x86"`` on x86-64,
    ``"libatomic"`` on anything else."""
    machine = platform.machine() if machine is None else machine
    return "x86" if machine.lower() in ("x86_64", "amd64") else "libatomic"


def build_ops(mode: str) -> AtomicOps:
    """The ordered operations implemented the ``mode`` way.

    ``"libatomic"`` works everywhere. ``"x86"`` relies on x86-64's memory
    model, so it is refused (ValueError) on other machines, as is an
    unknown mode.
    """
    if mode == "libatomic":
        load32: Callable[[U32Ref], int] = _lib_load_acquire_u32
        store32: Callable[[U32Ref, int], None] = _lib_store_release_u32
        load64: Callable[[U64Ref], int] = _lib_load_acquire_u64
        store64: Callable[[U64Ref, int], None] = _lib_store_release_u64
    elif mode == "x86":
        if default_mode() != "x86":
            raise ValueError(
                f"the x86 atomics mode relies on x86-64's memory ordering; "
                f"this machine is {platform.machine()!r}: use 'libatomic'"
            )
        load32 = load64 = _x86_load
        store32 = store64 = _x86_store
    else:
        raise ValueError(f"unknown atomics mode {mode!r}: choose one of {', '.join(MODES)}")
    return AtomicOps(
        mode,
        load32,
        store32,
        _fetch_add_acq_rel_u32,
        _cas_acq_rel_u32,
        load64,
        store64,
        _fetch_add_acq_rel_u64,
        _cas_acq_rel_u64,
    )


def _mode_from_environment() -> str:
    wanted = os.environ.get(ENV_VAR, "").strip().lower()
    if wanted in ("", "auto"):
        return default_mode()
    if wanted not in MODES:
        raise ImportError(
            f"{ENV_VAR}={wanted!r} is not an atomics mode: use x86, libatomic or auto"
        )
    return wanted


#: How the ordered loads and stores are implemented in this process:
#: ``"x86"`` or ``"libatomic"``, fixed at import (see the module docstring).
MODE: str = _mode_from_environment()

try:
    #: The ordered operations of :data:`MODE`; the functions below are its fields.
    OPS: AtomicOps = build_ops(MODE)
except ValueError as exc:  # REDSTONE_IPC_ATOMICS=x86 on another machine
    raise ImportError(f"{ENV_VAR}: {exc}") from None

load_acquire_u32 = OPS.load_acquire_u32
store_release_u32 = OPS.store_release_u32
fetch_add_acq_rel_u32 = OPS.fetch_add_acq_rel_u32
cas_acq_rel_u32 = OPS.cas_acq_rel_u32
load_acquire_u64 = OPS.load_acquire_u64
store_release_u64 = OPS.store_release_u64
fetch_add_acq_rel_u64 = OPS.fetch_add_acq_rel_u64
cas_acq_rel_u64 = OPS.cas_acq_rel_u64
