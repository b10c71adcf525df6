"""Writing into a pipe or socket whose reader is gone, without dying of SIGPIPE.

``write(2)`` and ``splice(2)`` into a pipe without readers (or a socket
without a peer) send SIGPIPE to the calling *thread* (the kernel's
``send_sig`` is thread-directed). CPython ignores SIGPIPE, but a program, a C
library or an embedding application may have set ``SIG_DFL``, which kills the
process. Blocking SIGPIPE in this thread for the duration of the call leaves
the signal pending instead; ``sigtimedwait`` with a zero timeout then
consumes it, and the call reports EPIPE like any other error. A SIGPIPE that
was already pending before the call (the thread had it blocked) is not ours,
and is left alone. libpq protects its socket writes the same way.

Usage::

    state = block()
    try:
        os.write(fd, data)            # EPIPE -> BrokenPipeError, no signal
    finally:
        restore(state, raised=True)   # True when a SIGPIPE may have been raised
"""

from __future__ import annotations

import signal

# signal.pthread_sigmask wraps every returned signal number in a Signals enum
# (1.5 µs per block/unblock pair); the C functions it wraps return plain ints
# (0.6 µs). They are the same functions, documented under ``signal``.
try:
    import _signal as _sig
except ImportError:  # pragma: no cover - an interpreter without _signal
    _sig = signal  # type: ignore[assignment]

__all__ = ["block", "restore"]

_SIGPIPE_NO = int(signal.SIGPIPE)
_SIGPIPE = {_SIGPIPE_NO}
_SIG_BLOCK, _SIG_UNBLOCK = int(signal.SIG_BLOCK), int(signal.SIG_UNBLOCK)
_WE_BLOCKED, _WAS_BLOCKED, _WAS_PENDING = 0, 1, 2


def block() -> int:
    """Block SIGPIPE in this thread; returns the state ``restore`` needs."""
    old = _sig.pthread_sigmask(_SIG_BLOCK, _SIGPIPE)
    if _SIGPIPE_NO not in old:
        return _WE_BLOCKED
    return _WAS_PENDING if _SIGPIPE_NO in _sig.sigpending() else _WAS_BLOCKED


def restore(state: int, raised: bool) -> None:
    """Consume the SIGPIPE the guarded call may have raised, then unblock it.

    ``raised``: the call failed with EPIPE, or it was a splice (which can
    raise SIGPIPE and still report bytes moved). A plain non-blocking
    ``write`` into a pipe raises SIGPIPE only together with EPIPE.
    """
    if raised and state != _WAS_PENDING and _SIGPIPE_NO in _sig.sigpending():
        _sig.sigtimedwait(_SIGPIPE, 0)
    if state == _WE_BLOCKED:
        _sig.pthread_sigmask(_SIG_UNBLOCK, _SIGPIPE)
