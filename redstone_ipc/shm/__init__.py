"""Shared memory (seed: ``ipc/shm``)."""

from .shm import Mapping, SharedMemory, ShmId

__all__ = ["Mapping", "SharedMemory", "ShmId"]
