"""The exchange on one connection to a published name (``docs/names.md``).

The client connects and sends nothing. The publisher reads the client's
credentials from the kernel, decides, and sends exactly one Message (wire
format v1, ``docs/wire-format.md``), then closes the connection:

* ``GRANTED``: one handle attached (a new duplicate of the published
  handle, with its rights), no payload;
* ``REFUSED``: no handle, the reason as UTF-8 text: the client raises
  PermissionDenied;
* ``FAILED``: no handle, the reason as UTF-8 text: the publisher could not
  hand its handle out (the client raises IpcError).

A client whose socket is bound to an address starting with ``QUERY_PREFIX``
asks for the publication's status instead of its handle (``status.py``):
the publisher sees that address in ``accept``, before anything is sent, and
answers ``STATUS`` (a JSON object, UTF-8, no handle) to processes of its own
uid, ``REFUSED`` to others.

Before reading the answer, the client checks with ``SO_PEERCRED`` that the
listening process runs as the uid whose namespace the name is in: anyone
can bind any abstract address, so this is what keeps another user from
answering in the publisher's place.
"""

from __future__ import annotations

import socket

from ..core.object import Handle
from ..errors import IpcError, PermissionDenied, ProtocolError
from ..message import Message
from ..message.wire import send_message
from .credentials import PeerCredentials, peer_credentials

__all__ = [
    "GRANTED", "REFUSED", "FAILED", "STATUS", "QUERY_PREFIX",
    "grant", "refuse", "fail", "answer_status", "is_query", "check_publisher", "read_answer",
]

GRANTED = 1
REFUSED = 2
FAILED = 3
STATUS = 4

QUERY_PREFIX = b"\0redstone-ipc-query/"
"""A client bound to an abstract address starting with this asks for the
status, not the handle (``\0redstone-ipc-query/<pid>/<random hex>``)."""

_MAX_REASON = 1000  # characters of a reason shown to the user
# A client that went away must not kill the publisher with SIGPIPE.
_NOSIGNAL = int(socket.MSG_NOSIGNAL)


def grant(sock: socket.socket, handle: Handle) -> None:
    """Send ``handle`` (it moves to the client); closes it if the send fails."""
    msg = Message(GRANTED)
    try:
        msg.attach_handle(handle)
        send_message(sock, msg, flags=_NOSIGNAL)
    finally:
        handle.close()  # a no-op once sent: the handle has moved


def refuse(sock: socket.socket, reason: str) -> None:
    """Tell the client it is refused, and why."""
    send_message(sock, Message(REFUSED, reason.encode()), flags=_NOSIGNAL)


def fail(sock: socket.socket, reason: str) -> None:
    """Tell the client the publisher could not hand its handle out."""
    send_message(sock, Message(FAILED, reason.encode()), flags=_NOSIGNAL)


def answer_status(sock: socket.socket, status: bytes) -> None:
    """Send the publication's status (JSON, UTF-8) to a query."""
    send_message(sock, Message(STATUS, status), flags=_NOSIGNAL)


def is_query(peer_address: object) -> bool:
    """Whether the address ``accept`` returned for a client marks a status query."""
    return isinstance(peer_address, bytes) and peer_address.startswith(QUERY_PREFIX)


def check_publisher(sock: socket.socket, name: str, owner: int) -> PeerCredentials:
    """The publisher's credentials, after checking it runs as ``owner``.

    PermissionDenied otherwise: another user bound the address first.
    """
    publisher = peer_credentials(sock)
    if publisher.uid != owner:
        raise PermissionDenied(
            f"name {name!r} of uid {owner} is held by pid {publisher.pid} of uid "
            f"{publisher.uid}, not by its owner: not connecting to it"
        )
    return publisher


def read_answer(msg: Message, name: str, publisher: PeerCredentials) -> Handle:
    """The handle a GRANTED answer carries; raises for any other answer."""
    if msg.msg_type == GRANTED and len(msg.handles) == 1:
        return msg.handles[0]
    reason = bytes(msg.payload).decode("utf-8", "replace")[:_MAX_REASON]
    msg.close()  # whatever came with an unexpected answer
    if msg.msg_type == REFUSED:
        raise PermissionDenied(f"connect({name!r}): {reason}")
    if msg.msg_type == FAILED:
        raise IpcError(
            f"connect({name!r}): the publisher (pid {publisher.pid}) could not hand out "
            f"its handle: {reason}"
        )
    raise ProtocolError(
        f"connect({name!r}): unexpected answer from pid {publisher.pid}: type "
        f"{msg.msg_type} with {len(msg.handles)} handles"
    )
