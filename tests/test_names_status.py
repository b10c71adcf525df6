"""Status queries: a publication tells ``redstone-ipc ls`` what it publishes.

A client bound to ``\\0redstone-ipc-query/...`` gets a description instead
of a handle (``redstone_ipc.names.status``), from the publisher's own uid
only; ``introspect.objects()`` is what the publisher's process holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from redstone_ipc import (
    Channel,
    Message,
    NameNotFound,
    Pipe,
    Port,
    Rights,
    SharedMemory,
    connect,
    introspect,
    publish,
)
from redstone_ipc.names import status

pytestmark = pytest.mark.timeout(60)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as nobody")


@pytest.fixture
def name(request) -> str:
    return f"t{os.getpid()}/status-{request.node.name[:40].replace('[', '-').replace(']', '')}"


def test_a_port_answers_its_depth_capacity_and_senders_without_granting(name, no_fd_leak):
    with Port(capacity=8) as port, publish(name, port) as pub:
        sender = port.duplicate(Rights.SEND | Rights.TRANSFER)
        for _ in range(2):
            sender.send(Message(1, b"x"))
        answer = status(name)
        assert answer["name"] == name and answer["pid"] == os.getpid() and answer["uid"] == os.geteuid()
        assert answer["kind"] == "port" and answer["rights"] == "SEND|DUPLICATE|TRANSFER|WAIT"
        obj = answer["object"]
        assert (obj["depth"], obj["capacity"], obj["senders"]) == (2, 8, [os.getpid()])
        assert pub.granted == 0, "a query is not a client: it got no handle"
        port.recv(timeout=5).close()
        assert status(name)["object"]["depth"] == 1  # read now, not cached
        with connect(name, timeout=0, kind=Port) as client:  # plain clients still get the handle
            assert client.rights == Rights.SEND | Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT
        assert status(name)["granted"] == 1
        sender.close()


def test_the_answer_lists_what_the_process_holds(name, no_fd_leak):
    a, b = Channel.create_pair(capacity=4)
    reader, writer = Pipe.create()
    with SharedMemory.create(5000) as shm, reader, writer, a, b, publish(name, shm):
        writer.write(b"hello")
        view = shm.map()
        answer = status(name)
        assert answer["kind"] == "shm" and answer["object"]["size"] == 8192
        kinds = sorted(o["kind"] for o in answer["objects"])
        assert kinds == ["endpoint", "endpoint", "pipe-reader", "pipe-writer", "shm"]
        region = next(o for o in answer["objects"] if o["kind"] == "shm")
        assert (region["id"], region["mappings"], region["handles"]) == (shm.id, 1, 2)  # ours + the publication's
        pipe = next(o for o in answer["objects"] if o["kind"] == "pipe-reader")
        assert pipe["buffered"] == 5
        assert answer["objects"] == introspect.objects()
        view.unmap()


def test_an_unpublished_name_is_not_found(name, no_fd_leak):
    with pytest.raises(NameNotFound):
        status(name)


AS_NOBODY = """
    import os, sys
    from redstone_ipc import PermissionDenied
    from redstone_ipc.names import status
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        status(sys.argv[1], owner=0)
    except PermissionDenied as e:
        print("denied", e)
    else:
        print("answered")
"""


@as_root
def test_another_uid_gets_no_status_even_when_allowed_the_handle(name, no_fd_leak):
    from redstone_ipc import Allow

    with SharedMemory.create(4096) as shm, publish(name, shm, allow=Allow(uids=[65534])) as pub:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(AS_NOBODY), name],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("denied"), result.stdout
        assert "answers status queries from its own uid only" in result.stdout
        assert pub.granted == 0 and pub.refused == 0
