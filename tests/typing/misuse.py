"""Mistakes that ``mypy --strict`` must report: each line marked ``# error:``.

``tests/test_typing.py`` checks that mypy reports exactly these lines, with
the error code after the marker. Were the package not found, or typed
``Any`` somewhere, mypy would report ``import-not-found`` or nothing at all
here, and the test would fail: this file proves that the types are real.
"""

from __future__ import annotations

from redstone_ipc import (
    ChannelEndpoint,
    Message,
    Pipe,
    Port,
    SharedMemory,
    connect,
)


def mistakes(msg: Message) -> None:
    Port(capacity="4")  # error: arg-type
    Port(size=4)  # error: call-arg
    msg.take(Port).map()  # error: attr-defined
    msg.handle(SharedMemory).send(msg)  # error: attr-defined
    msg.take(int)  # error: type-var
    data: bytes = msg.payload  # error: assignment
    port = Port()
    port.recv(timeout="1")  # error: arg-type
    port.send(msg, 5)  # error: call-arg
    connect("name", kind=Port).read(1)  # error: attr-defined
    reader, writer = Pipe.create()
    reader.read(1, timeout=None, extra=1)  # error: call-arg
    endpoint: ChannelEndpoint = port  # error: assignment
    del data, endpoint
