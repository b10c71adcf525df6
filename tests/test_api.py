"""The public surface: names, the exception hierarchy, typing marker."""

from __future__ import annotations

import importlib.resources

import pytest

import redstone_ipc
from redstone_ipc import errors

pytestmark = pytest.mark.timeout(30)

PUBLIC = """
    Handle HandleTable HANDLE_TABLE Rights ObjectType FdHandle
    Message MessageHeader Sender
    Port PortId PortStatus Channel ChannelPair ChannelEndpoint
    Pipe PipeReader PipeWriter
    SharedMemory ShmId Mapping PAGE_SIZE
    Futex FutexWord WaitQueue Mutex Event Semaphore Condition
    IpcError PortClosed QueueFull Empty InvalidHandle PermissionDenied PeerClosed
    MessageTooLarge ProtocolError ShmError OutOfMemory InvalidAddress NotMapped MappingInUse
    FutexError WouldBlock TimedOut
""".split()


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_importable_from_the_package(name):
    assert hasattr(redstone_ipc, name)
    assert name in redstone_ipc.__all__


def test_all_names_exist():
    missing = [n for n in redstone_ipc.__all__ if not hasattr(redstone_ipc, n)]
    assert missing == []


@pytest.mark.parametrize(
    "error, bases",
    [
        (errors.PortClosed, (errors.IpcError,)),
        (errors.QueueFull, (errors.IpcError,)),
        (errors.Empty, (errors.IpcError,)),
        (errors.InvalidHandle, (errors.IpcError, ValueError)),
        (errors.PermissionDenied, (errors.IpcError, PermissionError)),
        (errors.PeerClosed, (errors.IpcError, ConnectionError)),
        (errors.MessageTooLarge, (errors.IpcError,)),
        (errors.ProtocolError, (errors.IpcError,)),
        (errors.OutOfMemory, (errors.ShmError, MemoryError)),
        (errors.NotMapped, (errors.ShmError,)),
        (errors.MappingInUse, (errors.ShmError, BufferError)),
        (errors.InvalidAddress, (errors.ShmError, errors.FutexError)),
        (errors.WouldBlock, (errors.FutexError, BlockingIOError)),
        (errors.TimedOut, (errors.FutexError, TimeoutError)),
    ],
)
def test_errors_subclass_our_base_and_the_matching_builtin(error, bases):
    for base in bases:
        assert issubclass(error, base)
    assert issubclass(error, errors.IpcError)


def test_the_package_is_typed():
    assert importlib.resources.files("redstone_ipc").joinpath("py.typed").is_file()
