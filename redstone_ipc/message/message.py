"""The message envelope (seed 4.1): a header, a payload, attached handles.

A :class:`Message` is plain data until it is sent. Sending it *moves* its
handles: after a successful send they are invalid in the sender (their fds
closed there) and live in the receiver. To keep access, attach a duplicate:
``msg.attach_handle(h.duplicate())``. A failed send (QueueFull, a timeout,
PeerClosed) leaves every handle valid.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from ..core.object import Handle, Rights
from ..errors import MessageTooLarge, ProtocolError

__all__ = ["MessageHeader", "Message", "Sender", "Payload"]

Payload = bytes | bytearray | memoryview
"""Anything with the buffer protocol; the message keeps it, uncopied."""

_HEADER = struct.Struct("<4I")
_U32_MAX = 0xFFFF_FFFF


@dataclass(slots=True)
class MessageHeader:
    """The seed's ``#[repr(C)] MessageHeader``: four little-endian u32.

    ``bytes(header)`` is its exact 16-byte C layout.
    """

    size: int = 0  # payload length in bytes
    handle_count: int = 0  # handles attached
    msg_type: int = 0  # user-defined
    reserved: int = 0  # must be 0 on the wire

    SIZE: ClassVar[int] = _HEADER.size

    def __bytes__(self) -> bytes:
        return _HEADER.pack(self.size, self.handle_count, self.msg_type, self.reserved)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> MessageHeader:
        """Parse the first 16 bytes of ``data`` (ProtocolError if shorter)."""
        if len(data) < _HEADER.size:
            raise ProtocolError(f"truncated header: {len(data)} of {_HEADER.size} bytes")
        return cls(*_HEADER.unpack_from(data))


class Sender(NamedTuple):
    """Who sent a message, as the kernel saw it (SCM_CREDENTIALS)."""

    pid: int
    uid: int
    gid: int


class Message:
    """An IPC message: ``header`` + ``payload`` + ``handles``.

    Received messages also carry ``sender`` (kernel-checked credentials),
    ``priority`` and ``txid`` (non-zero for ``Channel.call`` transactions).
    """

    __slots__ = ("header", "_payload", "handles", "txid", "priority", "sender")

    def __init__(self, msg_type: int = 0, payload: Payload = b"") -> None:
        if not 0 <= msg_type <= _U32_MAX:
            raise ValueError(f"msg_type must be a u32, not {msg_type}")
        self.header = MessageHeader(msg_type=msg_type)
        self.handles: list[Handle] = []
        self.txid = 0
        self.priority = 0
        self.sender: Sender | None = None
        self.payload = payload

    @classmethod
    def new(cls, msg_type: int) -> Message:
        """An empty message of ``msg_type`` (seed: ``Message::new``)."""
        return cls(msg_type)

    @classmethod
    def with_data(cls, msg_type: int, data: Payload) -> Message:
        """A message carrying ``data``, which is kept as is, not copied."""
        return cls(msg_type, data)

    @property
    def payload(self) -> Payload:
        """The payload: the very object given (or, received, a view of the record)."""
        return self._payload

    @payload.setter
    def payload(self, data: Payload) -> None:
        size = memoryview(data).nbytes
        if size > _U32_MAX:
            raise MessageTooLarge(f"a payload is at most {_U32_MAX} bytes, not {size}")
        self._payload = data
        self.header.size = size

    @property
    def msg_type(self) -> int:
        return self.header.msg_type

    def attach_handle(self, handle: Handle) -> None:
        """Attach ``handle``; it moves to the receiver when the message is sent.

        Needs TRANSFER (PermissionDenied otherwise) and a valid handle.
        """
        handle._require(Rights.TRANSFER)
        if any(h is handle for h in self.handles):
            raise ValueError(f"handle {handle.value:#x} is already attached")
        self.handles.append(handle)
        self.header.handle_count += 1

    def close(self) -> None:
        """Close every attached handle (e.g. of a received message you drop)."""
        for handle in self.handles:
            handle.close()

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Message type={self.header.msg_type} size={self.header.size} "
            f"handles={self.header.handle_count} txid={self.txid} "
            f"priority={self.priority}>"
        )
