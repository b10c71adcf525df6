"""Pipes: one-way byte streams between processes (seed: ``ipc/pipe``).

The user's guide is :mod:`redstone_ipc.pipe.pipe`. The modules, one concept each:

* ``pipe``: the ``Pipe`` factory and the guide;
* ``_kernel``: the kernel object, a unix stream socketpair shut down one way per end;
* ``_end``: a pipe end as a kernel object: its socket's lifetime, transfer, waiting;
* ``_handles``: ``PipeReader`` and ``PipeWriter``, which check rights;
* ``_io``: the blocking read and write paths;
* ``_async``: the asyncio paths and their loop registrations;
* ``_splice``: zero-copy moves with ``splice(2)``;
* ``_deadline``, ``_turn``, ``_sigpipe``: timeouts, writers taking turns, SIGPIPE.
"""

from .pipe import PIPE_BUF, CapacityError, Pipe, PipeReader, PipeWriter

__all__ = ["PIPE_BUF", "CapacityError", "Pipe", "PipeReader", "PipeWriter"]
