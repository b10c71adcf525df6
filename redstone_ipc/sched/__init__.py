"""Scheduling integration (seed: ``crate::sched``): cross-process wait queues."""

from .wait import WaitQueue

__all__ = ["WaitQueue"]
