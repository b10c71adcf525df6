"""The wire format: one Message as one SOCK_SEQPACKET record.

Layout (all little-endian; the full specification is ``docs/wire-format.md``)::

    0   MessageHeader       size u32, handle_count u32, msg_type u32, reserved u32
    16  transport header    magic u32 "RSIP", version u16, flags u16,
                            priority i32, txid u32
    32  descriptors         handle_count x (type u16, fd_count u16, rights u32,
                            extra u64)
    ..  payload             header.size bytes (absent if FLAG_PAYLOAD_MEMFD)
    SCM_RIGHTS              the descriptors' fds in order, then the payload memfd

Sending gathers the header block and the caller's payload buffer in one
``sendmsg`` (no concatenation copy). Receiving validates everything before a
single handle is made; on any error every fd that arrived is closed and the
socket is left ready for the next record.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct

from ..core.object import HANDLE_TABLE, Handle, KernelObject, Rights
from ..errors import MessageTooLarge, ProtocolError
from ..linux import cmsg, memfd
from .message import Message, Sender

__all__ = [
    "MAGIC",
    "VERSION",
    "FLAG_PAYLOAD_MEMFD",
    "HEAD_SIZE",
    "DESCRIPTOR_SIZE",
    "send_message",
    "recv_message",
    "encode_handles",
    "decode_handles",
]

MAGIC = 0x50495352  # b"RSIP" read as a little-endian u32
VERSION = 1
FLAG_PAYLOAD_MEMFD = 0x0001  # the payload travels in a sealed memfd, the last fd
_KNOWN_FLAGS = FLAG_PAYLOAD_MEMFD

_HEAD = struct.Struct("<4I IHHiI")
# The same 32 bytes for the receive fast path: magic, version and flags as
# one u64, so that "a v1 record with no flags" is one comparison.
_HEAD_FAST = struct.Struct("<4I QiI")
_DESCRIPTOR = struct.Struct("<HHIQ")
HEAD_SIZE = _HEAD.size  # 32
DESCRIPTOR_SIZE = _DESCRIPTOR.size  # 16
_I32 = (-(2**31), 2**31 - 1)

_CRED = cmsg.CRED
_COPY_LIMIT = cmsg.COPY_LIMIT
_PLAIN_TAG = MAGIC | VERSION << 32  # flags 0
_SCM_CREDENTIALS = cmsg.SCM_CREDENTIALS
_TRUNCATED = cmsg.TRUNCATED
_received = Message._received
_tuple_new = tuple.__new__  # Sender(*creds) without namedtuple's Python-level _make

# Largest record a default unix socket carries: SO_SNDBUF (212,992) - 32.
DEFAULT_MAX_RECORD = 212_960


def send_message(
    sock: socket.socket,
    msg: Message,
    *,
    priority: int = 0,
    txid: int = 0,
    flags: int = 0,
    max_record: int = DEFAULT_MAX_RECORD,
) -> None:
    """Send ``msg`` as one record; on success its handles have moved away.

    Raises what ``sendmsg`` raises (BlockingIOError, BrokenPipeError, ...) with
    every handle still valid. A payload whose record would exceed
    ``max_record`` travels in a sealed memfd (one copy on the sending side,
    none on the receiving side).
    """
    handles = msg.handles
    payload = msg.payload
    # Measured now, not when the payload was attached: a bytearray may have
    # changed size since, and the header must match what is really sent.
    size = payload.nbytes
    if not handles and size <= max_record - HEAD_SIZE:
        # The common case: bytes only, inline. One pack, one syscall.
        try:
            head = _HEAD.pack(size, 0, msg.msg_type, 0, MAGIC, VERSION, 0, priority, txid)
        except struct.error:
            raise ValueError(
                f"priority must fit an i32, txid and msg_type a u32 ({priority}, {txid}, "
                f"{msg.msg_type})"
            ) from None
        sock.sendmsg((head, payload) if size else (head,), (), flags)
        return
    if not _I32[0] <= priority <= _I32[1]:
        raise ValueError(f"priority must fit an i32, not {priority}")
    objects: list[KernelObject] = [h._require(Rights.TRANSFER) for h in handles]
    HANDLE_TABLE.pin(objects)
    try:
        _send_with_handles(sock, msg, objects, priority, txid, flags, max_record)
    finally:
        HANDLE_TABLE.unpin(objects)


def _send_with_handles(
    sock: socket.socket,
    msg: Message,
    objects: list[KernelObject],
    priority: int,
    txid: int,
    flags: int,
    max_record: int,
) -> None:
    """The general case of send_message, with the objects pinned."""
    handles = msg.handles
    payload = msg.payload
    size = payload.nbytes
    descriptors, fds = encode_handles(handles, objects, cmsg.MAX_FDS - 1)
    wire_flags = 0
    payload_fd = -1
    if HEAD_SIZE + DESCRIPTOR_SIZE * len(handles) + size > max_record:
        payload_fd = _payload_memfd(payload, size)
        fds.append(payload_fd)
        wire_flags |= FLAG_PAYLOAD_MEMFD
    head = _HEAD.pack(
        size, len(handles), msg.msg_type, 0, MAGIC, VERSION, wire_flags, priority, txid,
    )
    buffers: list = [head, *descriptors]
    if not wire_flags and size:
        buffers.append(payload)
    try:
        for handle, obj in zip(handles, objects):
            obj.prepare_transfer(handle.rights)
        cmsg.send_record(sock, buffers, fds, flags)
    finally:
        if payload_fd >= 0:
            os.close(payload_fd)
    for handle in handles:
        handle._moved()


def encode_handles(
    handles: list[Handle], objects: list[KernelObject], max_fds: int
) -> tuple[list[bytes], list[int]]:
    """The descriptors and fds that carry ``handles`` (their objects pinned).

    MessageTooLarge if they need more than ``max_fds`` fds.
    """
    descriptors = []
    fds: list[int] = []
    for handle, obj in zip(handles, objects):
        rights = handle.rights
        obj_fds = obj.transfer_fds(rights)
        descriptors.append(
            _DESCRIPTOR.pack(obj.TYPE, len(obj_fds), rights, obj.transfer_extra(rights))
        )
        fds.extend(obj_fds)
    if len(fds) > max_fds:
        raise MessageTooLarge(
            f"the handles need {len(fds)} fds; one message carries at most {max_fds}"
        )
    return descriptors, fds


def decode_handles(data: bytes | memoryview, start: int, count: int, fds: list[int]) -> list[Handle]:
    """Handles from ``count`` descriptors at ``data[start:]`` and their ``fds``.

    Everything is checked before a single handle is made. On success the
    handles own the fds and ``fds`` is emptied; on error (ProtocolError) the
    fds are left to the caller to close.
    """
    plan = _check_descriptors(data, count, len(fds), start)
    objects: list[tuple[KernelObject, Rights]] = []
    position = 0
    try:
        for cls, fd_count, rights, extra in plan:
            objects.append((cls.from_transfer(fds[position : position + fd_count], rights, extra), rights))
            position += fd_count
    except BaseException:
        for obj, _ in objects:
            obj._destroy()
        del fds[:position]  # closed by their objects; the rest is the caller's
        raise
    fds.clear()
    return [HANDLE_TABLE.insert(obj, rights) for obj, rights in objects]


def _payload_memfd(payload: object, size: int) -> int:
    """A memfd holding ``payload``, sealed so the receiver can trust it."""
    fd = os.memfd_create("redstone-payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload).cast("B")  # type: ignore[arg-type]
        written = 0
        while written < size:
            written += os.pwrite(fd, view[written:], written)
        memfd.add_seals(
            fd, memfd.SEAL_WRITE | memfd.SEAL_SHRINK | memfd.SEAL_GROW | memfd.SEAL_SEAL
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def recv_message(
    sock: socket.socket, *, flags: int = 0, max_record: int = DEFAULT_MAX_RECORD
) -> Message | None:
    """Receive and validate one record. ``None`` at end of stream (peer gone).

    Raises ProtocolError or MessageTooLarge for a bad record, after closing
    every fd that came with it; BlockingIOError and other OSErrors as
    ``recvmsg`` raises them.
    """
    buf, nbytes, ancdata, msg_flags = cmsg.recv_raw(sock, max_record, flags)
    if (
        not msg_flags & _TRUNCATED
        and nbytes >= HEAD_SIZE
        and (not ancdata or len(ancdata) == 1 and ancdata[0][1] == _SCM_CREDENTIALS)
    ):
        # The common case, decided without building a Record: no fds, one
        # credentials message, no handles, an inline payload that fits.
        size, handle_count, msg_type, reserved, tag, priority, txid = _HEAD_FAST.unpack_from(buf)
        if tag == _PLAIN_TAG and size == nbytes - HEAD_SIZE and not (handle_count or reserved):
            return _received(
                msg_type,
                buf[HEAD_SIZE:nbytes].tobytes() if size <= _COPY_LIMIT  # cmsg.detach, inlined
                else cmsg.detach(buf, HEAD_SIZE, nbytes).toreadonly(),  # type: ignore[union-attr]
                [], priority, txid,
                _tuple_new(Sender, _CRED.unpack_from(ancdata[0][2])) if ancdata else None,
            )
    record = cmsg.make_record(buf, nbytes, ancdata, msg_flags)
    try:
        if not record.data and not record.fds and not record.truncated:
            if cmsg.peer_hung_up(sock):
                return None
            raise ProtocolError("empty record")
        return _decode(record)
    except BaseException:
        cmsg.close_fds(record.fds)
        raise


def _decode(record: cmsg.Record) -> Message:
    """Build a Message from a record. Owns ``record.fds`` only on success."""
    if record.ctrunc:
        raise ProtocolError(
            f"too many fds: the kernel dropped some (at most {cmsg.MAX_FDS} per message)"
        )
    if record.truncated:
        raise MessageTooLarge(f"record longer than the {len(record.data)}-byte receive buffer")
    data = record.data
    if len(data) < HEAD_SIZE:
        raise ProtocolError(f"truncated record: {len(data)} bytes, the header needs {HEAD_SIZE}")
    (size, handle_count, msg_type, reserved, magic, version, wire_flags, priority, txid) = (
        _HEAD.unpack_from(data)
    )
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(f"not a redstone-ipc v{VERSION} record (magic {magic:#x}, v{version})")
    if reserved:
        raise ProtocolError(f"reserved header field is {reserved}, must be 0")
    if wire_flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown flags {wire_flags & ~_KNOWN_FLAGS:#x}")
    payload_start = HEAD_SIZE + DESCRIPTOR_SIZE * handle_count
    if handle_count > cmsg.MAX_FDS or payload_start > len(data):
        raise ProtocolError(
            f"truncated record: handle_count {handle_count} needs {payload_start} bytes, "
            f"got {len(data)}"
        )
    out_of_line = wire_flags & FLAG_PAYLOAD_MEMFD
    fds = record.fds
    if out_of_line and not fds:
        raise ProtocolError("out-of-line payload flag set but no payload memfd arrived")
    plan = _check_descriptors(data, handle_count, len(fds) - bool(out_of_line)) if (
        handle_count or fds
    ) else []
    inline = len(data) - payload_start
    if out_of_line:
        if inline:
            raise ProtocolError(f"{inline} inline payload bytes beside an out-of-line payload")
        payload: object = _map_payload(fds[-1], size)
    elif inline != size:
        raise ProtocolError(f"header size {size} but the record carries {inline} bytes")
    else:
        payload = memoryview(data)[payload_start:].toreadonly() if size else b""

    # Everything checked: now the objects take their fds, undone on failure.
    objects: list[tuple[KernelObject, Rights]] = []
    position = 0
    try:
        for cls, fd_count, rights, extra in plan:
            objects.append((cls.from_transfer(fds[position : position + fd_count], rights, extra), rights))
            position += fd_count
    except BaseException:
        for obj, _ in objects:
            obj._destroy()
        del fds[:position]  # closed by their objects; the rest is the caller's
        if out_of_line and size:
            payload.release()  # type: ignore[attr-defined]
        raise
    if out_of_line:
        os.close(fds[-1])
    fds.clear()
    return _received(
        msg_type,
        payload,  # type: ignore[arg-type]
        [HANDLE_TABLE.insert(obj, rights) for obj, rights in objects] if objects else [],
        priority,
        txid,
        Sender(*record.creds) if record.creds else None,
    )


def _check_descriptors(
    data: bytes | memoryview, handle_count: int, handle_fds: int, start: int = HEAD_SIZE
) -> list[tuple[type[KernelObject], int, Rights, int]]:
    """Parse and check the descriptors: (class, fd_count, rights, extra) each."""
    if start + DESCRIPTOR_SIZE * handle_count > len(data):
        raise ProtocolError(f"{handle_count} handle descriptors do not fit the record")
    plan = []
    fds_named = 0
    for i in range(handle_count):
        obj_type, fd_count, rights, extra = _DESCRIPTOR.unpack_from(
            data, start + DESCRIPTOR_SIZE * i
        )
        cls = KernelObject.class_for(obj_type)
        if rights & ~cls.ALLOWED_RIGHTS:
            raise ProtocolError(
                f"rights {Rights(rights & ~cls.ALLOWED_RIGHTS)!r} are not allowed "
                f"for a {cls.TYPE.name} handle"
            )
        plan.append((cls, fd_count, Rights(rights), extra))
        fds_named += fd_count
    if fds_named != handle_fds:
        raise ProtocolError(f"descriptors name {fds_named} fds but {handle_fds} arrived")
    return plan


def _map_payload(fd: int, size: int) -> object:
    """Map an out-of-line payload read-only, after checking its seals and size."""
    required = memfd.SEAL_WRITE | memfd.SEAL_SHRINK | memfd.SEAL_GROW
    try:
        seals = memfd.get_seals(fd)
        actual = os.fstat(fd).st_size
    except OSError:
        raise ProtocolError("the out-of-line payload fd is not a memfd") from None
    if seals & required != required:
        raise ProtocolError("the out-of-line payload memfd is not sealed against writes")
    if actual != size:
        raise ProtocolError(f"header size {size} but the payload memfd holds {actual} bytes")
    if size == 0:
        return b""
    try:
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ))
    except OSError as e:  # e.g. a write-only fd
        raise ProtocolError(f"the out-of-line payload memfd cannot be mapped: {e.strerror}") from None

