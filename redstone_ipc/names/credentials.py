"""Who is at the other end of a connected AF_UNIX socket, as the kernel saw it.

``SO_PEERCRED`` gives the peer's pid, effective uid and effective gid,
recorded by the kernel when the connection was made (for the connecting
side: when the publisher called ``listen``). ``SO_PEERGROUPS`` (Linux 4.13)
gives its supplementary groups, recorded at the same moment. Neither can be
forged by the peer: they are the kernel's, not something the peer sent.
"""

from __future__ import annotations

import array
import errno
import socket
from typing import NamedTuple

from ..linux.cmsg import CRED

__all__ = ["PeerCredentials", "peer_credentials", "peer_groups"]

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # 59 on every Linux arch we support


class PeerCredentials(NamedTuple):
    """The kernel-checked identity of a connected peer."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The peer's (pid, uid, gid) from ``SO_PEERCRED``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, CRED.size)
    return PeerCredentials(*CRED.unpack(raw))


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The peer's supplementary groups (``SO_PEERGROUPS``); empty where the
    kernel does not report them."""
    for count in (64, 65536):  # NGROUPS_MAX is 65536; most processes have few
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * count)
        except OSError as e:
            if e.errno == errno.ERANGE:
                continue  # more groups than the buffer holds
            if e.errno == errno.ENOPROTOOPT:
                return frozenset()  # a kernel older than 4.13
            raise
        groups = array.array("I")
        groups.frombytes(raw[: len(raw) - len(raw) % 4])
        return frozenset(groups)
    return frozenset()  # pragma: no cover - ERANGE with NGROUPS_MAX groups
