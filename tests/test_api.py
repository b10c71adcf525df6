"""The public surface: names, the exception hierarchy, typing marker."""

from __future__ import annotations

import importlib.resources
import inspect
import queue

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
    FutexError WouldBlock TimedOut ReceiveTimedOut SendTimedOut ConnectTimedOut
    NameNotFound NameInUse
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
        (errors.ReceiveTimedOut, (errors.TimedOut, errors.Empty, TimeoutError, queue.Empty)),
        (errors.SendTimedOut, (errors.TimedOut, errors.QueueFull, TimeoutError, queue.Full)),
        (errors.ConnectTimedOut, (errors.TimedOut, errors.NameNotFound, TimeoutError, FileNotFoundError)),
    ],
)
def test_errors_subclass_our_base_and_the_matching_builtin(error, bases):
    for base in bases:
        assert issubclass(error, base)
    assert issubclass(error, errors.IpcError)


def test_the_package_is_typed():
    assert importlib.resources.files("redstone_ipc").joinpath("py.typed").is_file()


def test_port_is_made_by_a_typed_constructor_with_its_documented_keyword(no_fd_leak):
    from redstone_ipc import Port, Rights

    assert type(Port) is type, "no metaclass: type checkers see __new__'s signature"
    params = inspect.signature(Port).parameters
    assert list(params) == ["capacity"] and params["capacity"].default == 16
    with Port(capacity=4) as port, Port(3) as positional, Port() as default:
        assert (port.capacity, positional.capacity, default.capacity) == (4, 3, 16)
        assert type(port) is Port and port.rights & Rights.RECEIVE
        send = port.duplicate(Rights.SEND)  # handles made by the table skip __init__
        assert type(send) is Port and send.rights == Rights.SEND
        send.close()
    for bad in (0, 1 << 21, True, 2.0):
        with pytest.raises(ValueError):
            Port(capacity=bad)
    with pytest.raises(TypeError):
        Port(size=4)  # type: ignore[call-arg]
