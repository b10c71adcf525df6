"""Pipes: one-way byte streams between processes (seed: ``ipc/pipe``)."""

from .pipe import PIPE_BUF, CapacityError, Pipe, PipeReader, PipeWriter

__all__ = ["PIPE_BUF", "CapacityError", "Pipe", "PipeReader", "PipeWriter"]
