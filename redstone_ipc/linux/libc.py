"""ctypes access to libc: loaded once, errno kept, syscall numbers per arch.

Every ctypes function used on a hot path gets its ``argtypes``/``restype`` set
once here, so calls do not re-derive conversions (each ctypes call costs
microseconds; see design.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["libc", "syscall", "SYS", "check"]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# syscall(long number, ...) -> long.  Arguments are passed as c_long so that
# pointers (ints) and small ints share one signature.
syscall = libc.syscall
syscall.restype = ctypes.c_long

_SYSCALLS = {
    "x86_64": {
        "futex": 202,
        "gettid": 186,
        "get_robust_list": 274,
        "set_robust_list": 273,
        "pidfd_open": 434,
    },
    "aarch64": {
        "futex": 98,
        "gettid": 178,
        "get_robust_list": 100,
        "set_robust_list": 99,
        "pidfd_open": 434,
    },
}

try:
    SYS: dict[str, int] = _SYSCALLS[platform.machine()]
except KeyError:  # pragma: no cover - depends on the machine
    raise ImportError(
        f"redstone_ipc supports Linux on {', '.join(_SYSCALLS)}, "
        f"not {platform.machine()!r}"
    ) from None


def check(result: int) -> int:
    """Raise OSError from errno when a libc call returned -1."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result
