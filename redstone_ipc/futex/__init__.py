"""Futex (seed: ``ipc/futex``): wait/wake on u32 words of shared memory."""

from .block import SharedBlock
from .futex import WAKE_ALL, Futex, FutexWord

__all__ = ["Futex", "FutexWord", "SharedBlock", "WAKE_ALL"]
