"""The message envelope (seed 4.1): a header, a payload, attached handles.

A :class:`Message` is plain data until it is sent. Sending it *moves* its
handles: after a successful send they are invalid in the sender (their fds
closed there) and live in the receiver. To keep access, attach a duplicate:
``msg.attach_handle(h.duplicate())``. A failed send (QueueFull, a timeout,
PeerClosed) leaves every handle valid.

The payload
-----------
``msg.payload`` is always a :class:`memoryview` of bytes, whatever the size
and whichever side you are on: ``bytes(msg.payload)``, ``.tobytes()``,
slicing, ``len``, comparison with ``bytes`` and ``numpy.frombuffer`` all
work, without a copy. ``bytes(msg)`` gives the payload as ``bytes``
(``json.loads(bytes(msg))``).

On a received message the view is read-only. A small payload (up to
``COPY_LIMIT`` bytes) was copied out of shared memory and stays valid for
as long as you keep it. A large one, or one the sender loaned (``loan()``),
is *not* copied: the view reads the sender's shared pages directly, and
the sender may reuse them as soon as the view is released — when the last
reference to it (and to anything made from it, such as a numpy array)
goes, or when ``msg.close()`` drops it. Keep ``bytes(msg.payload)`` if you
need the data longer than the view.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, TypeVar, Union

from ..core.object import Handle, Rights
from ..errors import MessageTooLarge, ProtocolError
from ..transport.loan import Loan

__all__ = ["MessageHeader", "Message", "Sender", "Payload", "COPY_LIMIT"]

Payload = Union[bytes, bytearray, memoryview, Loan]
"""What a payload can be made of: anything with the buffer protocol (kept
as is, not copied), or a :class:`~redstone_ipc.transport.loan.Loan`."""

COPY_LIMIT = 64 * 1024
"""Received payloads up to this size are copied out of shared memory; larger
ones (and loans) are zero-copy views of the sender's pages."""

_H = TypeVar("_H", bound=Handle)
_HEADER = struct.Struct("<4I")
_U32_MAX = 0xFFFF_FFFF
_EMPTY = memoryview(b"")


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
    """An IPC message: a type, a payload, handles.

    ``Message(msg_type, payload)`` (or ``Message.with_data``) makes one;
    ``attach_handle`` adds handles, which move to the receiver when it is
    sent. ``msg.payload`` is always a ``memoryview`` of bytes (read-only on
    a received message) and ``bytes(msg)`` its bytes. On a received
    message, ``msg.take(Port)`` (``handle`` to look without detaching) gives
    an attached handle with its real type; ``msg.handles`` is the plain list.

    Received messages also carry ``sender`` (kernel-checked credentials of
    the sending process), ``priority`` and ``txid`` (non-zero for requests
    made with ``ChannelEndpoint.call`` and their replies). A message is a
    context manager: leaving ``with msg:`` closes it (:meth:`close`).
    """

    __slots__ = ("msg_type", "_payload", "handles", "txid", "priority", "sender")

    msg_type: int
    _payload: object
    handles: list[Handle]
    txid: int
    priority: int
    sender: Sender | None

    def __init__(self, msg_type: int = 0, payload: Payload = b"") -> None:
        if not 0 <= msg_type <= _U32_MAX:
            raise ValueError(f"msg_type must be a u32, not {msg_type}")
        self.msg_type = msg_type
        self.handles = []
        self.txid = 0
        self.priority = 0
        self.sender = None
        self.payload = payload  # type: ignore[assignment]

    @classmethod
    def new(cls, msg_type: int) -> Message:
        """An empty message of ``msg_type`` (seed: ``Message::new``)."""
        return cls(msg_type)

    @classmethod
    def with_data(cls, msg_type: int, data: Payload) -> Message:
        """A message carrying ``data``, which is kept as is, not copied."""
        return cls(msg_type, data)

    @classmethod
    def _received(
        cls,
        msg_type: int,
        payload: bytes | memoryview,
        handles: list[Handle],
        priority: int,
        txid: int,
        sender: Sender | None,
    ) -> Message:
        """A message as a transport delivers it (fields already checked)."""
        msg = _new(cls)
        msg.msg_type = msg_type
        msg._payload = payload
        msg.handles = handles
        msg.txid = txid
        msg.priority = priority
        msg.sender = sender
        return msg

    # -- the payload ---------------------------------------------------------

    @property
    def payload(self) -> memoryview:
        """The payload as a memoryview of bytes (see the module docstring)."""
        p = self._payload
        if p.__class__ is memoryview:
            return p  # type: ignore[return-value]
        if p.__class__ is bytes:
            return memoryview(p)  # type: ignore[arg-type]
        return _as_view(p)

    @payload.setter
    def payload(self, data: Payload) -> None:
        size = payload_size(data)
        if size > _U32_MAX:
            raise MessageTooLarge(f"a payload is at most {_U32_MAX} bytes, not {size}")
        self._payload = data

    def __bytes__(self) -> bytes:
        """The payload as bytes (no copy when it already is bytes)."""
        p = self._payload
        if p.__class__ is bytes:
            return p  # type: ignore[return-value]
        return self.payload.tobytes()

    @property
    def header(self) -> MessageHeader:
        """The seed's header, computed from the message now."""
        return MessageHeader(payload_size(self._payload), len(self.handles), self.msg_type, 0)

    # -- handles -------------------------------------------------------------

    def attach_handle(self, handle: Handle) -> None:
        """Attach ``handle``; it moves to the receiver when the message is sent.

        Needs TRANSFER (PermissionDenied otherwise) and a valid handle.
        """
        handle._require(Rights.TRANSFER)
        if any(h is handle for h in self.handles):
            raise ValueError(f"handle {handle.value:#x} is already attached")
        if self.handles.__class__ is not list:  # a received message's shared empty tuple
            self.handles = list(self.handles)
        self.handles.append(handle)

    def handle(self, kind: type[_H], index: int = 0) -> _H:
        """The attached handle at ``index``, as a ``kind`` (``Port``,
        ``SharedMemory``, ...): typed for type checkers, checked at run time.

        It stays attached: ``msg.close()`` (or leaving ``with msg:``) closes
        it, and sending ``msg`` on moves it. To keep it, :meth:`take` it.
        TypeError if it is another kind of handle (the message is left as it
        was), IndexError if there is no handle ``index``.
        """
        return _checked(self.handles, kind, index)

    def take(self, kind: type[_H], index: int = 0) -> _H:
        """Detach the handle at ``index`` and return it, as a ``kind``.

        The usual way to use the handles a message brought::

            with port.recv() as request:
                reply_to = request.take(ChannelEndpoint)   # yours now
                frames = request.take(SharedMemory)        # the next one
            ...                                            # both outlive the message

        ``list.pop`` style: the handles after it move down one place, so
        calls with the default ``index=0`` take them in the order they were
        attached. The message no longer holds it: closing the message leaves
        it open, closing it is yours. TypeError if it is another kind of
        handle (it stays attached, and closes with the message), IndexError
        if there is no handle ``index``.
        """
        handle = _checked(self.handles, kind, index)
        del self.handles[index]
        return handle

    def close(self) -> None:
        """Close every attached handle and drop the payload.

        For a received message this gives a zero-copy payload's memory back
        to its sender at once, unless you still hold views made from it.
        """
        handles, self.handles = self.handles, []
        for handle in handles:
            handle.close()
        p = self._payload
        self._payload = b""
        if p.__class__ is memoryview:
            try:
                p.release()  # type: ignore[attr-defined]
            except BufferError:  # views made from it still use it: they decide
                pass

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Message type={self.msg_type} size={payload_size(self._payload)} "
            f"handles={len(self.handles)} txid={self.txid} priority={self.priority}>"
        )


_new = object.__new__


def _checked(handles: list[Handle], kind: type[_H], index: int) -> _H:
    """``handles[index]`` if it is a ``kind``; else TypeError, or IndexError."""
    if not (isinstance(kind, type) and issubclass(kind, Handle)):
        raise TypeError(f"kind is a handle class (Port, SharedMemory, ...), not {kind!r}")
    try:
        handle = handles[index]
    except IndexError:
        count = len(handles)
        raise IndexError(
            f"the message carries {count} handle{'' if count == 1 else 's'}: "
            f"there is no handle {index}"
        ) from None
    if not isinstance(handle, kind):
        raise TypeError(
            f"handle {index} of the message is a {type(handle).__name__}, not a {kind.__name__}"
        )
    return handle


def payload_size(data: object) -> int:
    """Bytes in a payload (a buffer or a Loan)."""
    if data.__class__ is bytes:
        return len(data)  # type: ignore[arg-type]
    nbytes = getattr(data, "nbytes", None)  # memoryview, Loan, numpy arrays
    if nbytes is not None:
        return int(nbytes)
    return memoryview(data).nbytes  # type: ignore[arg-type]


def _as_view(data: object) -> memoryview:
    if isinstance(data, Loan):
        return data.view
    mv = memoryview(data)  # type: ignore[arg-type]
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
