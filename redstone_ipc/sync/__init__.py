"""Synchronisation primitives in shared memory, usable by many processes.

Each lives at an offset of a :class:`~redstone_ipc.shm.shm.Mapping` and
occupies ``cls.SIZE`` bytes at an offset aligned to ``cls.ALIGN``.
``cls.create(mapping, offset, ...)`` initialises the bytes (once, before the
memory is shared); ``cls(mapping, offset, ...)`` attaches to bytes already
initialised, in any process that maps the region. Blocking always sleeps in
the kernel (futex); uncontended operations make no system call. Each object
pins its mapping (``unmap()`` refuses, naming it) until ``close()``, which
every one has, idempotent.

``with`` holds the lock of the lock-like ones (``Mutex``, ``Semaphore``,
``Condition``), as ``threading``'s do; on an ``Event`` it closes the Event
on exit. Blocking calls take ``timeout=None`` (for ever) or seconds and,
like their ``threading`` twins, return False when it runs out.
"""

from .condition import Condition
from .event import Event
from .mutex import Mutex
from .semaphore import Semaphore

__all__ = ["Condition", "Event", "Mutex", "Semaphore"]
