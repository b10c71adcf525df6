"""redstone-ipc: the IPC model of RedstoneOS between real Linux processes.

This module is the seed's ``ipc/mod.rs``: it re-exports the public API.
Capabilities are handles; the Linux kernel enforces them (file descriptors
are unforgeable, SCM_RIGHTS moves them, memfd pages are the frames, futex(2)
is the futex).
"""

from .core.object import FdHandle, Handle, HandleTable, HANDLE_TABLE, ObjectType, Rights
from .core.export import ExportedHandle, adopt_handle
from .errors import (
    CapacityError,
    ConnectTimedOut,
    Empty,
    FutexError,
    InvalidAddress,
    InvalidHandle,
    IpcError,
    MappingInUse,
    MessageTooLarge,
    NameInUse,
    NameNotFound,
    NotMapped,
    OutOfFds,
    OutOfMemory,
    PeerClosed,
    PermissionDenied,
    PortClosed,
    ProtocolError,
    QueueFull,
    ReceiveTimedOut,
    SendTimedOut,
    ShmError,
    TimedOut,
    WouldBlock,
)
from .message import Message, MessageHeader, Sender
from .mm import PAGE_SIZE
from .shm import Mapping, SharedMemory, ShmId
from .pipe import PIPE_BUF, Pipe, PipeReader, PipeWriter
from .port import Port, PortId, PortStatus
from .channel import Channel, ChannelEndpoint, ChannelPair
from .futex import Futex, FutexWord
from .sched import WaitQueue
from .sync import Condition, Event, Mutex, Semaphore
from .transport.loan import Loan
from .names import Allow, Publication, connect, connect_async, publish
from . import introspect

__version__ = "0.1.0"

__all__ = [
    "HANDLE_TABLE",
    "PAGE_SIZE",
    "PIPE_BUF",
    "Allow",
    "CapacityError",
    "Channel",
    "ChannelEndpoint",
    "ChannelPair",
    "Condition",
    "ConnectTimedOut",
    "Empty",
    "Event",
    "ExportedHandle",
    "FdHandle",
    "Futex",
    "FutexError",
    "FutexWord",
    "Handle",
    "HandleTable",
    "InvalidAddress",
    "InvalidHandle",
    "IpcError",
    "Loan",
    "Mapping",
    "Message",
    "MessageHeader",
    "MessageTooLarge",
    "NameInUse",
    "NameNotFound",
    "Mutex",
    "NotMapped",
    "MappingInUse",
    "OutOfFds",
    "ObjectType",
    "OutOfMemory",
    "PeerClosed",
    "PermissionDenied",
    "Pipe",
    "PipeReader",
    "PipeWriter",
    "Port",
    "PortClosed",
    "PortId",
    "PortStatus",
    "Publication",
    "ProtocolError",
    "QueueFull",
    "ReceiveTimedOut",
    "Rights",
    "Semaphore",
    "SendTimedOut",
    "Sender",
    "SharedMemory",
    "ShmError",
    "ShmId",
    "TimedOut",
    "WaitQueue",
    "WouldBlock",
    "adopt_handle",
    "connect",
    "introspect",
    "connect_async",
    "publish",
]
