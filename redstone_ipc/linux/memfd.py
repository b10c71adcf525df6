"""memfd, seals, and the buffer address of a Python object.

A memfd is anonymous shared memory owned by file descriptors: the kernel frees
its pages when the last fd and the last mapping go, so a crash leaks nothing
and there is no name in ``/dev/shm`` to unlink.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

__all__ = [
    "SEAL_SEAL",
    "SEAL_SHRINK",
    "SEAL_GROW",
    "SEAL_WRITE",
    "SEAL_FUTURE_WRITE",
    "memfd_create",
    "add_seals",
    "get_seals",
    "reopen_readonly",
    "buffer_address",
]

SEAL_SEAL = fcntl.F_SEAL_SEAL
SEAL_SHRINK = fcntl.F_SEAL_SHRINK
SEAL_GROW = fcntl.F_SEAL_GROW
SEAL_WRITE = fcntl.F_SEAL_WRITE
# Not in the fcntl module: new writable mappings (and write()) fail with
# EPERM for everyone, while mappings made before keep working (Linux 5.1).
SEAL_FUTURE_WRITE = 0x0010


def memfd_create(name: str, size: int) -> int:
    """A close-on-exec, sealable memfd of ``size`` bytes with its size sealed."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        add_seals(fd, SEAL_SHRINK | SEAL_GROW)
    except BaseException:
        os.close(fd)
        raise
    return fd


def add_seals(fd: int, seals: int) -> None:
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)


def get_seals(fd: int) -> int:
    """The fd's seals; OSError (EINVAL) if it is not a sealable memfd."""
    return fcntl.fcntl(fd, fcntl.F_GET_SEALS)


def reopen_readonly(fd: int) -> int:
    """A new O_RDONLY fd to the same memfd (its own open file description).

    A read-only fd cannot be mapped writable; add SEAL_FUTURE_WRITE too, since
    a holder of the same uid could reopen it read-write through /proc.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def buffer_address(obj: object) -> int:
    """The address of ``obj``'s buffer, read-only buffers included.

    The export is released before returning, so it does not pin ``obj``: the
    address is valid only while the caller keeps the memory mapped.
    """
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE
        raise TypeError(f"{type(obj).__name__} does not export a buffer")
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))
