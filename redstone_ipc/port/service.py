"""The receive sides' service thread: a door is heard while nobody receives.

A sender must be answered even when the receiving process is busy elsewhere
(computing, waiting for a child, awaiting something else in its event
loop): a new sender must be connected and given room, and a sender out of
credits given room when some is free. Otherwise a queue that is not full
would refuse it, or a send with ``timeout=None`` would wait for the
receiver's next ``recv``. So each process that holds a receive side runs one
daemon thread, started with the first, that sleeps in ``epoll`` on the
*doors* — never on the messages: a message does not wake it, only a
connection, a request for room (``DOOR_WANT``) or a door's end — and hands
each event to its receive side (``owner.ReceiveSide.on_door``), which may
take ownership then (a channel endpoint nobody received on yet).

The thread is stopped at exit (before daemon threads are frozen: one frozen
while holding an inbox's lock would hang the handles' finalizers). A forked
child has no thread; it starts its own if it holds receive sides.
"""

from __future__ import annotations

import atexit
import os
import select
import threading
from typing import Any

__all__ = ["watch", "forget"]

_lock = threading.Lock()
_epoll: select.epoll | None = None
_wake = -1  # eventfd: stop
_sides: dict[int, Any] = {}  # door fd -> ReceiveSide
_thread: threading.Thread | None = None
_stopping = False


def watch(side: Any) -> None:
    """Hear ``side``'s door from the service thread (started if needed)."""
    global _epoll, _wake, _thread
    with _lock:
        if _stopping:
            return
        if _epoll is None:
            _epoll = select.epoll()
            _wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            _epoll.register(_wake, select.EPOLLIN)
        fd = side.door.fileno()
        if fd in _sides:
            _sides[fd] = side
            return
        _sides[fd] = side
        # Edge-triggered: a record the receive side cannot read yet (out of
        # fds) must not wake this thread again until another one comes.
        _epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        if _thread is None:
            _thread = threading.Thread(target=_serve, args=(_epoll,), name="redstone-ipc-doors",
                                       daemon=True)
            _thread.start()


def forget(door_fd: int) -> None:
    """Stop hearing the door ``door_fd`` (call before closing it)."""
    with _lock:
        if _sides.pop(door_fd, None) is not None and _epoll is not None:
            try:
                _epoll.unregister(door_fd)
            except (OSError, ValueError):
                pass


def _serve(ep: select.epoll) -> None:
    while not _stopping:
        try:
            events = ep.poll()
        except OSError:
            return
        for fd, _ in events:
            if _stopping:
                return
            if fd == _wake:
                continue
            with _lock:
                side = _sides.get(fd)
            if side is not None:
                try:
                    side.on_door()
                except Exception:  # noqa: BLE001 - never let the thread die
                    forget(fd)


@atexit.register
def _stop() -> None:
    global _stopping
    _stopping = True
    thread = _thread
    if thread is not None and _wake >= 0:
        os.eventfd_write(_wake, 1)
        thread.join(1.0)


def _after_fork_in_child() -> None:
    """No thread crosses fork: start afresh (the parent keeps its own)."""
    global _lock, _epoll, _wake, _thread
    _lock = threading.Lock()
    if _epoll is not None:
        _epoll.close()
        os.close(_wake)
    _epoll = None
    _wake = -1
    _sides.clear()
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
