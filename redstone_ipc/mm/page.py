"""Pages and physical frames, as the kernel reports them.

The seed's ``crate::mm`` provides ``PAGE_SIZE`` and ``PhysFrame``. Here the
frames are the Linux kernel's own; ``/proc/self/pagemap`` tells which frame
backs each virtual page, which is how tests prove that two processes map the
same memory (zero copy).
"""

from __future__ import annotations

import os
import struct

from ..errors import PermissionDenied

__all__ = ["PAGE_SIZE", "page_round_up", "frames_of"]

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")

_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63


def page_round_up(size: int) -> int:
    """``size`` rounded up to whole pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def frames_of(address: int, size: int) -> list[int | None]:
    """Physical frame numbers of the pages in ``[address, address+size)``.

    ``None`` marks a page with no frame yet (never touched). The kernel shows
    frame numbers only to processes with CAP_SYS_ADMIN; without it every
    number reads as 0 and PermissionDenied is raised rather than lying.
    """
    first = address // PAGE_SIZE
    count = (address + size + PAGE_SIZE - 1) // PAGE_SIZE - first
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            data = os.pread(pagemap.fileno(), 8 * count, 8 * first)
    except PermissionError:  # e.g. a process that changed uid is not dumpable
        raise PermissionDenied(
            "this process may not read /proc/self/pagemap (frame numbers need "
            "CAP_SYS_ADMIN)"
        ) from None
    entries = struct.unpack(f"<{count}Q", data)
    frames: list[int | None] = [
        (e & _PFN_MASK) if e & _PRESENT else None for e in entries
    ]
    if any(f == 0 for f in frames):
        raise PermissionDenied(
            "the kernel hides physical frame numbers from this process "
            "(reading /proc/self/pagemap needs CAP_SYS_ADMIN)"
        )
    return frames
