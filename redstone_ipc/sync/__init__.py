"""Synchronisation primitives in shared memory, usable by many processes.

Each lives at an offset of a :class:`~redstone_ipc.shm.shm.Mapping` and
occupies ``cls.SIZE`` bytes at an offset aligned to ``cls.ALIGN``.
``cls.create(mapping, offset, ...)`` initialises the bytes (once, before the
memory is shared); ``cls(mapping, offset, ...)`` attaches to bytes already
initialised, in any process that maps the region. Blocking always sleeps in
the kernel (futex); uncontended operations make no system call. Each object
pins its mapping (``unmap()`` refuses) until ``close()``.
"""

from .condition import Condition
from .event import Event
from .mutex import Mutex
from .semaphore import Semaphore

__all__ = ["Condition", "Event", "Mutex", "Semaphore"]
