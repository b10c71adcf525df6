"""Asking a published name for its status instead of its handle.

``status(name)`` connects to the name as ``connect`` does, but from a socket
bound to an abstract address under ``\\0redstone-ipc-query/``: seeing that
address in ``accept``, the publisher sends back a description of the
publication and of what its process holds, and no handle. This is what
``redstone-ipc ls`` shows as a name's kind, queue depth and senders.

Only processes of the publisher's uid get an answer (PermissionDenied
otherwise), whatever the publication's ``allow=``: the status tells more
about the publisher than its handle does (pids of its peers, every object it
holds). Asking costs the publisher one JSON dump in its serving thread.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ..errors import IpcError, NameNotFound, ProtocolError, TimedOut
from ..message.wire import recv_message
from . import protocol
from .address import address, owner_uid

__all__ = ["status"]


def status(name: str, *, owner: int | str | None = None, timeout: float = 1.0) -> dict[str, Any]:
    """What the publisher of ``name`` says about it, as a dict.

    Keys: ``name``, ``pid`` and ``uid`` of the publisher, ``kind`` of the
    object (``port``, ``shm``, ...), ``rights`` clients get, ``granted`` and
    ``refused`` (connections so far), ``object`` (the published object,
    described as by :func:`redstone_ipc.introspect.describe`: a port served in
    the publisher's process has its ``depth``, ``capacity`` and ``senders``)
    and ``objects`` (everything the publisher's process holds, as
    :func:`redstone_ipc.introspect.objects`).

    Looks once: NameNotFound if nobody publishes ``name`` now. ``timeout``
    bounds the wait for the answer (TimedOut). PermissionDenied for a
    publisher of another uid, or when the name is held by a process of the
    wrong uid; IpcError if the publisher does not answer queries (an older
    version sent its handle instead: it is closed at once).
    """
    uid = owner_uid(owner)
    addr = address(name, uid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    with sock:
        sock.bind(protocol.QUERY_PREFIX + f"{os.getpid()}/{os.urandom(8).hex()}".encode())
        sock.setblocking(False)
        try:
            sock.connect(addr)
        except (ConnectionRefusedError, BlockingIOError):
            raise NameNotFound(f"nobody publishes {name!r} (names of uid {uid})") from None
        publisher = protocol.check_publisher(sock, name, uid)
        sock.settimeout(timeout)
        try:
            msg = recv_message(sock)
        except TimeoutError:
            raise TimedOut(f"the publisher of {name!r} (pid {publisher.pid}) did not answer") from None
    if msg is None:
        raise NameNotFound(f"the publisher of {name!r} closed it before answering")
    if msg.msg_type != protocol.STATUS:
        if msg.msg_type == protocol.GRANTED:
            msg.close()
            raise IpcError(f"the publisher of {name!r} (pid {publisher.pid}) does not answer status queries")
        protocol.read_answer(msg, name, publisher)  # raises what the answer means
    try:
        answer = json.loads(bytes(msg.payload))
    except ValueError:
        raise ProtocolError(f"the publisher of {name!r} sent a status that is not JSON") from None
    finally:
        msg.close()
    if not isinstance(answer, dict):
        raise ProtocolError(f"the publisher of {name!r} sent a status that is not an object")
    return answer
