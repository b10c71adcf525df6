"""The connecting side: ``connect`` and ``connect_async`` find a published name.

Both connect to the name's abstract address, check that the process
listening there runs as the namespace's uid, and read the one answer
(``protocol.py``). While nobody publishes the name, they retry with a
backoff (1 ms, doubling, at most 50 ms between attempts): Linux offers no
way to be woken when an abstract address is bound, and this keeps a waiting
client near-idle (at most 20 cheap attempts a second) while still noticing
a new publisher within 50 ms.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from ..core.object import Handle
from ..core.timeout import seconds
from ..errors import ConnectTimedOut, TimedOut
from ..message.wire import recv_message
from . import protocol
from .address import address, owner_uid

__all__ = ["connect", "connect_async"]

_H = TypeVar("_H", bound=Handle)

_FIRST_DELAY = 0.001
_MAX_DELAY = 0.05
ANSWER_GRACE = 1.0
"""Once connected, the publisher gets at least this long to answer, even
past the timeout: its serving thread answers in microseconds, and
``timeout=0`` ("do not wait for the name") must still get the answer."""


@overload
def connect(
    name: str, *, timeout: float | None = None, owner: int | str | None = None
) -> Handle: ...
@overload
def connect(
    name: str, *, kind: type[_H], timeout: float | None = None, owner: int | str | None = None
) -> _H: ...
def connect(
    name: str,
    *,
    kind: type[Handle] | None = None,
    timeout: float | None = None,
    owner: int | str | None = None,
) -> Any:
    """A handle to what ``name`` publishes: a new duplicate, with its rights.

    ``timeout``: how long to wait for the name to be published. ``None``
    (the default) waits as long as it takes, so a client may start before
    its server; ``0`` looks once. Raises ConnectTimedOut when the time is
    up (a ``TimeoutError``, and a NameNotFound: a ``FileNotFoundError``),
    PermissionDenied if the
    publisher's ``allow=`` refuses this process (with its reason) or if a
    process of another uid holds the name, and TimedOut if a publisher was
    found but did not answer in time (at least 1 s, ``ANSWER_GRACE``).

    ``owner``: whose names to look in, as a uid or a user name (default:
    this process's effective uid). ``kind``: the handle class expected,
    e.g. ``kind=Port`` (a handle of another kind is closed, TypeError);
    type checkers then know what is returned.
    """
    addr, uid, deadline = _prepare(name, kind, timeout, owner)
    delays = _delays()
    while True:
        sock = _open(addr)
        if sock is not None:
            with sock:
                publisher = protocol.check_publisher(sock, name, uid)
                sock.settimeout(_answer_time(deadline))
                try:
                    msg = recv_message(sock)
                except TimeoutError:
                    raise _no_answer(name, publisher.pid) from None
            if msg is not None:  # None: it closed or died before answering
                return _checked(protocol.read_answer(msg, name, publisher), kind, name)
        time.sleep(_next_delay(delays, deadline, name, uid, timeout))


@overload
async def connect_async(
    name: str, *, timeout: float | None = None, owner: int | str | None = None
) -> Handle: ...
@overload
async def connect_async(
    name: str, *, kind: type[_H], timeout: float | None = None, owner: int | str | None = None
) -> _H: ...
async def connect_async(
    name: str,
    *,
    kind: type[Handle] | None = None,
    timeout: float | None = None,
    owner: int | str | None = None,
) -> Any:
    """``connect`` for asyncio: waits in the event loop, never blocks it.

    Same arguments, results and errors as :func:`connect`. Cancelling it
    leaves nothing behind.
    """
    loop = asyncio.get_running_loop()
    addr, uid, deadline = _prepare(name, kind, timeout, owner)
    delays = _delays()
    while True:
        sock = _open(addr)
        if sock is not None:
            with sock:
                publisher = protocol.check_publisher(sock, name, uid)
                msg = await _recv_async(loop, sock, _answer_time(deadline), name, publisher.pid)
            if msg is not None:
                return _checked(protocol.read_answer(msg, name, publisher), kind, name)
        await asyncio.sleep(_next_delay(delays, deadline, name, uid, timeout))


# -- the steps both share -----------------------------------------------------


def _prepare(
    name: str, kind: type[Handle] | None, timeout: float | None, owner: int | str | None
) -> tuple[bytes, int, float | None]:
    """Check the arguments: (address, owner uid, deadline or None)."""
    if kind is not None and not (isinstance(kind, type) and issubclass(kind, Handle)):
        raise TypeError(f"kind is a handle class (Port, SharedMemory, ...), not {kind!r}")
    timeout = seconds(timeout)
    uid = owner_uid(owner)
    addr = address(name, uid)
    return addr, uid, None if timeout is None else time.monotonic() + timeout


def _open(addr: bytes) -> socket.socket | None:
    """A socket connected to ``addr``, or None if nobody listens there now.

    Connecting to a listening AF_UNIX socket never waits (the connection is
    queued in the listener's backlog), so the socket is non-blocking here.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.connect(addr)
    except (ConnectionRefusedError, BlockingIOError):
        # ECONNREFUSED: the name is not bound, or not listening (yet);
        # EAGAIN: its backlog is full. Both: try again after a delay.
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return sock


def _delays() -> Iterator[float]:
    delay = _FIRST_DELAY
    while True:
        yield delay
        delay = min(delay * 2, _MAX_DELAY)


def _next_delay(
    delays: Iterator[float], deadline: float | None, name: str, uid: int, timeout: float | None
) -> float:
    """How long to sleep before the next attempt; ConnectTimedOut if time is up."""
    delay = next(delays)
    if deadline is None:
        return delay
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        waited = f" within {timeout:g} s" if timeout and timeout > 0 else ""
        raise ConnectTimedOut(
            f"nobody publishes {name!r}{waited} (names of uid {uid}; "
            "another user's names need connect(..., owner=uid))"
        )
    return min(delay, remaining)


def _answer_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), ANSWER_GRACE)


def _no_answer(name: str, pid: int) -> TimedOut:
    return TimedOut(f"connect({name!r}): the publisher (pid {pid}) did not answer in time")


async def _recv_async(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    timeout: float | None,
    name: str,
    pid: int,
) -> Any:
    """The answer on ``sock``, waiting for it in the event loop."""
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), on_readable)
    try:
        await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        raise _no_answer(name, pid) from None
    finally:
        loop.remove_reader(sock.fileno())
    return recv_message(sock)


def _checked(handle: Handle, kind: type[Handle] | None, name: str) -> Handle:
    if kind is not None and not isinstance(handle, kind):
        handle.close()
        raise TypeError(f"{name!r} publishes a {type(handle).__name__}, not a {kind.__name__}")
    return handle
