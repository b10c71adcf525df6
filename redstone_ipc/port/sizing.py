"""Record size and socket buffer: making ``capacity`` exact in bytes too.

A port or channel direction is one ``SOCK_SEQPACKET`` socket. Besides our
credits (which count messages), the kernel bounds the *bytes* queued on it:
each record is charged to the sending socket's ``SO_SNDBUF`` (shared by every
dup of that end, in every process) at its ``truesize`` — the record rounded up
to a kmalloc bucket plus the skb overhead (32 B cost 768 B, 16 KiB cost
20,736 B; SCM_RIGHTS fds and credentials cost nothing there). When that
budget runs out, ``sendmsg`` would block (or fail with EAGAIN) even though
credits remain, and ``capacity`` would no longer be exact.

So each queue gets a **record limit** ``max_record`` and a send buffer large
enough for ``capacity`` records of that size:

* the largest ``max_record`` in :data:`CANDIDATES` (64 KiB down to 128 B)
  whose truesize, times ``capacity``, fits what the kernel grants
  unprivileged processes (``2 * net.core.wmem_max``: 425,984 B on a default
  system), is chosen; truesizes are measured once per process on a probe
  socket (``SIOCOUTQ``), not guessed from kernel internals;
* the sending end's ``SO_SNDBUF`` is set to ``capacity * truesize(max_record)``;
* a message whose record (32 B header + 16 B per handle + payload) would
  exceed ``max_record`` has its payload carried out of line in a sealed memfd
  (``message.wire`` does this by itself), so its record stays small.

The result: ``capacity`` messages always fit, whatever their payload size.
The one exception is a message with hundreds of handles on a queue whose
``max_record`` is below 4 KiB (descriptors always travel inline): it may use
more than its share of the byte budget. A capacity too large for any
candidate raises ValueError naming the sysctl to raise.

The receiver's buffer is ``max(max_record, 4096)``: enough for any record a
well-behaved sender makes (the out-of-line case included). ``SO_RCVBUF`` is
left alone: on AF_UNIX datagram and seqpacket sockets queued records are
charged to the *sender's* buffer only (a receiving end with a 2 KiB
SO_RCVBUF still queues 93 records of 1 KiB).
"""

from __future__ import annotations

import fcntl
import functools
import socket
import struct
import termios
from typing import NamedTuple

from ..linux import cmsg
from ..message import wire

__all__ = ["CANDIDATES", "RECV_FLOOR", "Plan", "plan", "apply", "truesize", "sndbuf_limit"]

CANDIDATES = (65536, 32768, 16384, 8192, 4096, 2048, 1024, 512, 256, 128)
"""Record limits tried, largest first. Above 64 KiB a memfd costs less than
the copies through the socket anyway."""

RECV_FLOOR = 4096
"""Smallest receive buffer: a header plus 252 descriptors (4,064 B) fits."""
assert RECV_FLOOR >= wire.HEAD_SIZE + wire.DESCRIPTOR_SIZE * (cmsg.MAX_FDS - 1)

_U32 = 0xFFFF_FFFF  # capacities travel in 32 bits (``transfer_extra``)
_SIOCOUTQ = termios.TIOCOUTQ  # on a unix socket: bytes charged to its send buffer
_INT = struct.Struct("i")


class Plan(NamedTuple):
    """Sizes for one queue direction."""

    max_record: int  # records up to this size travel inline
    sndbuf: int  # what SO_SNDBUF must reach so that capacity records fit
    recv_size: int  # the receiver's buffer


@functools.lru_cache(maxsize=None)
def truesize(record: int) -> int:
    """What the kernel charges the send buffer for one record of ``record`` bytes."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, record * 4)
        a.send(bytes(record), socket.MSG_DONTWAIT)
        return _INT.unpack(fcntl.ioctl(a, _SIOCOUTQ, bytes(_INT.size)))[0]
    finally:
        a.close()
        b.close()


@functools.lru_cache(maxsize=None)
def sndbuf_limit() -> int:
    """The largest SO_SNDBUF an unprivileged process gets (2 x net.core.wmem_max)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 0x3FFF_FFFF)
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def plan(capacity: int) -> Plan:
    """The sizes that make ``capacity`` records always fit.

    ValueError unless ``capacity`` is an int from 1 to 2**32-1 (the wire
    carries it in 32 bits), or if no record size fits.
    """
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= _U32:
        raise ValueError(f"capacity must be an int from 1 to {_U32}, not {capacity!r}")
    return _fitting_plan(capacity)


@functools.lru_cache(maxsize=None)
def _fitting_plan(capacity: int) -> Plan:
    limit = sndbuf_limit()
    for max_record in CANDIDATES:
        need = capacity * truesize(max_record)
        if need <= limit:
            return Plan(max_record, need, max(max_record, RECV_FLOOR))
    most = limit // truesize(CANDIDATES[-1])
    raise ValueError(
        f"capacity {capacity} does not fit this system's socket buffers: at most "
        f"{most} messages (raise net.core.wmem_max, now {limit // 2} bytes)"
    )


def apply(sock: socket.socket, sizes: Plan) -> None:
    """Give ``sock`` (a sending end) the send buffer ``sizes`` needs."""
    # The kernel doubles what is asked (for its own bookkeeping), capped at
    # wmem_max; never shrink below its default.
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < sizes.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, (sizes.sndbuf + 1) // 2)
