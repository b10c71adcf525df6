"""Names: unrelated processes find each other with publish/connect.

Every process here is real: programs are started with ``subprocess.Popen``
(fresh interpreters, not forks of pytest), the other-uid clients really drop
to ``nobody``, and the publisher that dies is really SIGKILLed. Every test
counts fds and threads before and after (``no_leak``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import redstone_ipc
from redstone_ipc import (
    Allow,
    Channel,
    ConnectTimedOut,
    IpcError,
    Message,
    NameInUse,
    NameNotFound,
    ObjectType,
    PermissionDenied,
    Pipe,
    PipeWriter,
    Port,
    Publication,
    Rights,
    SharedMemory,
    TimedOut,
    connect,
    connect_async,
    publish,
)
from redstone_ipc.message import wire
from redstone_ipc.names import client as connect_module

pytestmark = pytest.mark.timeout(60)

NOBODY = 65534  # uid and gid of nobody/nogroup
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start processes as nobody")
_serial = itertools.count()


# -- fixtures and helpers ----------------------------------------------------------


@pytest.fixture
def no_leak(no_fd_leak) -> Iterator[None]:
    """No fd (``no_fd_leak``, checked last) and no thread left behind."""
    threads = threading.active_count()
    yield
    serving = [
        t.name for t in threading.enumerate()
        if t.name.startswith("redstone-ipc") and t.name != "redstone-ipc-doors"  # (the process's receive service)
    ]
    assert serving == [], "a publication's thread outlived the test"
    assert threading.active_count() == threads, threading.enumerate()


@pytest.fixture
def name(request) -> str:
    """A name no other test (or concurrent test run) uses."""
    test = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:50]
    return f"t{os.getpid()}/{test}-{next(_serial)}"


class Child:
    """A separate program: ``python -c code args...``, talking line by line."""

    PRELUDE = "import os, sys\nfrom redstone_ipc import *\n"

    def __init__(self, code: str, *args: object, prelude: bool = True) -> None:
        code = textwrap.dedent(code)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", (self.PRELUDE if prelude else "") + code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def line(self, timeout: float = 30) -> str:
        """The next line it prints (AssertionError if none comes in time)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"child {self.pid} printed no line within {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"child {self.pid} ended: {self.finish(5)}, {self.stderr()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def tell(self, text: str = "") -> None:
        self.proc.stdin.write(text.encode() + b"\n")

    def finish(self, timeout: float = 30) -> int:
        """Its exit code; killed (and AssertionError) if it runs past ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"child {self.pid} still ran after {timeout} s") from None

    def stderr(self) -> str:
        ready, _, _ = select.select([self.proc.stderr], [], [], 0)
        return os.read(self.proc.stderr.fileno(), 65536).decode() if ready else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()


@pytest.fixture
def child(no_leak) -> Iterator[Callable[..., Child]]:
    """Start programs with ``child(code, *args)``; all are killed and their pipes
    closed before ``no_leak`` counts fds."""
    started: list[Child] = []

    def start(code: str, *args: object, prelude: bool = True) -> Child:
        c = Child(code, *args, prelude=prelude)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def address_of(name: str, uid: int | None = None) -> bytes:
    """The abstract address docs/names.md gives for ``name``."""
    return f"\0redstone-ipc/{os.geteuid() if uid is None else uid}/{name}".encode()


def shm_with(data: bytes) -> SharedMemory:
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[: len(data)] = data
    return shm


def read_shm(shm: SharedMemory, n: int) -> bytes:
    with shm.map(writable=False) as m:
        return bytes(m[:n])


# -- two programs started on their own meet by name ---------------------------------

SERVER = """
    name = sys.argv[1]
    port = Port()
    with publish(name, port):
        print("ready", flush=True)
        request = port.recv(timeout=30)
        reply_to, shm = request.handles           # a channel endpoint, a SharedMemory
        n = int(bytes(request.payload))
        with shm.map(writable=False) as m:
            text = bytes(m[:n])
        answer = SharedMemory.create(4096)
        with answer.map() as m:
            m[:n] = text.upper()
        reply = Message.with_data(2, b"")
        reply.attach_handle(answer.replace(Rights.READ | Rights.MAP | Rights.TRANSFER))
        reply_to.send(reply, timeout=30)
        print("served", request.sender.pid, request.sender.uid, flush=True)
"""

CLIENT = """
    name = sys.argv[1]
    server = connect(name, kind=Port, timeout=30)
    print(repr(server.rights), flush=True)
    mine, theirs = Channel.create_pair()
    data = b"hello from the client"
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[: len(data)] = data
    request = Message.with_data(1, str(len(data)).encode())
    request.attach_handle(theirs)                  # the reply comes back on it
    request.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
    server.send(request, timeout=30)
    reply = mine.recv(timeout=30)
    (frame,) = reply.handles                       # a handle moved the other way
    with frame.map(writable=False) as m:
        print(bytes(m[: len(data)]).decode(), reply.sender.pid, flush=True)
"""


def test_two_programs_started_on_their_own_meet_by_name_and_talk(child, name):
    server = child(SERVER, name)
    assert server.line() == "ready"
    client = child(CLIENT, name)
    assert client.line() == repr(Rights.SEND | Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT)
    assert client.line() == f"HELLO FROM THE CLIENT {server.pid}"
    assert server.line() == f"served {client.pid} {os.geteuid()}"
    assert client.finish() == 0, client.stderr()
    assert server.finish() == 0, server.stderr()


def test_a_client_may_start_before_its_server(child, name):
    client = child(CLIENT, name)  # waits for the name to appear
    server = child(SERVER, name)
    assert server.line() == "ready"
    client.line()
    assert client.line() == f"HELLO FROM THE CLIENT {server.pid}"
    assert client.finish() == 0 and server.finish() == 0


# -- the lifetime of a name ---------------------------------------------------------

HOLD = """
    name = sys.argv[1]
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[:5] = b"first"
    pub = publish(name, shm)
    print("ready", flush=True)
    sys.stdin.readline()                           # until told, or killed
"""


def test_a_sigkilled_publishers_name_can_be_published_again_at_once(child, name):
    holder = child(HOLD, name)
    assert holder.line() == "ready"
    with connect(name, timeout=0, kind=SharedMemory) as got:
        assert read_shm(got, 5) == b"first"
    with pytest.raises(NameInUse), SharedMemory.create(4096) as other:
        publish(name, other)  # the name is live in the other process

    holder.proc.send_signal(signal.SIGKILL)
    assert holder.finish() == -signal.SIGKILL
    with pytest.raises(NameNotFound):
        connect(name, timeout=0)
    with shm_with(b"again") as shm, publish(name, shm):  # no cleanup step in between
        with connect(name, timeout=0, kind=SharedMemory) as got:
            assert read_shm(got, 5) == b"again"


FORKS_THEN_CLOSES = """
    import os, sys, time
    os.register_at_fork(after_in_child=lambda: time.sleep(0.3))  # a child slow to start:
    from redstone_ipc import *                                  # it runs before ours
    name = sys.argv[1]
    shm = SharedMemory.create(4096)
    pub = publish(name, shm)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child lives on, holding what it inherited
        os.close(w)
        os.read(r, 1)
        os._exit(0 if pub.closed else 3)
    os.close(r)
    pub.close()
    try:
        with publish(name, shm):
            print("published again", flush=True)
    except NameInUse:
        print("still in use", flush=True)
    os.close(w)
    print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_a_forked_child_does_not_keep_the_name_alive(child, name):
    program = child(FORKS_THEN_CLOSES, name, prelude=False)
    assert program.line() == "published again"
    assert program.line() == "child 0", "the child's copy of the publication is closed"
    assert program.finish() == 0, program.stderr()


def test_closing_frees_the_name_at_once_and_leaves_nothing(no_leak, name):
    with SharedMemory.create(4096) as shm:
        for _ in range(3):
            pub = publish(name, shm)
            assert any(t.name == f"redstone-ipc publish {name}" for t in threading.enumerate())
            connect(name, timeout=0).close()
            pub.close()
            assert pub.closed and repr(pub).endswith("closed>")
            with pytest.raises(NameNotFound):
                connect(name, timeout=0)
            pub.close()  # twice: nothing


def test_a_second_publish_of_a_live_name_is_name_in_use(no_leak, name):
    with shm_with(b"one") as shm, publish(name, shm):
        with pytest.raises(NameInUse, match=re.escape(name)) as raised:
            publish(name, shm)
        assert isinstance(raised.value, FileExistsError)
        assert isinstance(raised.value, IpcError)
        with connect(name, timeout=0, kind=SharedMemory) as got:  # the first still serves
            assert read_shm(got, 3) == b"one"


def test_name_not_found_after_waiting_the_timeout(no_leak, name):
    for timeout in (0.5, 0):
        start = time.monotonic()
        with pytest.raises(NameNotFound, match=re.escape(repr(name))) as raised:
            connect(name, timeout=timeout)
        waited = time.monotonic() - start
        assert timeout <= waited < timeout + 0.3, waited
        assert isinstance(raised.value, FileNotFoundError)
        assert isinstance(raised.value, IpcError)


def test_waiting_for_a_name_backs_off(no_leak, name, monkeypatch):
    """One attempt per 50 ms at most once the backoff has grown: no hot spin."""
    attempts = []
    real_open = connect_module._open
    monkeypatch.setattr(connect_module, "_open", lambda a: attempts.append(a) or real_open(a))
    with pytest.raises(NameNotFound):
        connect(name, timeout=1.0)
    assert 8 <= len(attempts) <= 30, len(attempts)  # about 26 on an idle machine


def test_connect_succeeds_when_the_name_appears_during_the_wait(no_leak, name, monkeypatch):
    looked = threading.Event()
    real_open = connect_module._open

    def counting_open(addr: bytes):
        sock = real_open(addr)
        if sock is None:
            looked.set()  # the client has looked, and found nothing
        return sock

    monkeypatch.setattr(connect_module, "_open", counting_open)
    got: list = []
    client = threading.Thread(target=lambda: got.append(connect(name, timeout=20)))
    client.start()
    assert looked.wait(20)
    with shm_with(b"late") as shm, publish(name, shm):
        published = time.monotonic()
        client.join(20)
        assert not client.is_alive()
        assert time.monotonic() - published < 0.5, "found within one backoff step"
    (handle,) = got
    assert read_shm(handle, 4) == b"late"
    handle.close()


# -- what a connecting process gets ----------------------------------------------------


def test_a_port_is_published_without_receive(no_leak, name):
    port = Port()
    with publish(name, port) as pub:
        assert pub.rights == Rights.SEND | Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT
        assert pub.type is ObjectType.PORT
        client = connect(name, timeout=0, kind=Port)
        assert client.rights == pub.rights
        with pytest.raises(PermissionDenied):
            client.recv(timeout=0)
        client.send(Message.with_data(1, b"to the receiver"))
        assert bytes(port.recv(timeout=5).payload) == b"to the receiver"
        client.close()
    port.close()


def test_clients_get_the_published_rights_never_more(no_leak, name):
    with SharedMemory.create(4096) as shm:
        read_only = shm.duplicate(Rights.READ | Rights.MAP | Rights.DUPLICATE | Rights.TRANSFER)
        with publish(name, read_only):
            read_only.close()  # the publication holds its own duplicate
            with connect(name, timeout=0, kind=SharedMemory) as got:
                assert got.rights == Rights.READ | Rights.MAP | Rights.DUPLICATE | Rights.TRANSFER
                with pytest.raises(PermissionDenied):
                    got.map(writable=True)


def test_a_pipe_writer_can_be_published(no_leak, name):
    reader, writer = Pipe.create()
    with publish(name, writer):
        writer.close()
        with connect(name, timeout=0, kind=PipeWriter) as w:
            w.write(b"through the pipe", timeout=5)
        assert reader.read(100, timeout=5) == b"through the pipe"
    assert reader.read(100, timeout=5) == b"", "the publication's writer closed with it"
    reader.close()


def test_what_cannot_be_published(no_leak, name):
    a, b = Channel.create_pair()
    with pytest.raises(PermissionDenied, match="channel endpoint.*Publish a Port"):
        publish(name, a)
    a.close()
    b.close()
    with SharedMemory.create(4096) as shm:
        no_dup = shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER)
        with pytest.raises(PermissionDenied, match="DUPLICATE"):
            publish(name, no_dup)
        no_transfer = shm.duplicate(Rights.READ | Rights.MAP | Rights.DUPLICATE)
        with pytest.raises(PermissionDenied, match="TRANSFER"):
            publish(name, no_transfer)
        no_dup.close()
        no_transfer.close()
    port = Port()
    receive_only = port.duplicate(Rights.RECEIVE | Rights.DUPLICATE | Rights.TRANSFER)
    with pytest.raises(PermissionDenied, match="not SEND"):
        publish(name, receive_only)
    receive_only.close()
    port.close()
    with pytest.raises(TypeError):
        publish(name, b"not a handle")  # type: ignore[arg-type]
    with pytest.raises(NameNotFound):
        connect(name, timeout=0)  # nothing was left published


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 81, "/a", "a/", "a//b", ".hidden", "a/../b", "-x", "a b", "caf\u00e9", "a\0b", "a:b"],
)
def test_bad_names_are_value_errors(no_leak, bad):
    with SharedMemory.create(4096) as shm:
        with pytest.raises(ValueError):
            publish(bad, shm)
    with pytest.raises(ValueError):
        connect(bad, timeout=0)


def test_good_names(no_leak, name):
    longest = (name + "/" + "x" * 80)[:80]
    with SharedMemory.create(4096) as shm:
        for good in (f"{name}/org.example.Compositor", f"{name}/alice/editor-2", f"{name}/_x", longest):
            with publish(good, shm):
                connect(good, timeout=0).close()
    with pytest.raises(TypeError):
        connect(b"bytes", timeout=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no user"):
        connect(name, timeout=0, owner="no-such-user-here")
    with pytest.raises(ConnectTimedOut):  # a negative timeout: look once (the rule for time)
        connect(name, timeout=-1)
    with pytest.raises(ValueError):
        connect(name, timeout=float("nan"))
    with SharedMemory.create(4096) as shm, publish(name, shm):
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name
        connect(name, timeout=0, owner=user).close()  # a user name works as an owner


def test_kind_checks_what_arrives(no_leak, name):
    with SharedMemory.create(4096) as shm, publish(name, shm):
        with pytest.raises(TypeError, match="SharedMemory, not a Port"):
            connect(name, timeout=0, kind=Port)  # the handle that came is closed
        with pytest.raises(TypeError):
            connect(name, timeout=0, kind=int)  # type: ignore[type-var]


# -- the wire protocol, as docs/names.md tells it -------------------------------------


def raw_connect(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    sock.connect(address_of(name))
    return sock


def test_the_answer_is_one_message_then_end_of_stream(no_leak, name):
    with shm_with(b"wire") as shm, publish(name, shm, allow=lambda pid, uid, gid: pid > 0):
        with raw_connect(name) as sock:
            msg = wire.recv_message(sock)
            assert (msg.msg_type, len(msg.handles), bytes(msg.payload)) == (1, 1, b"")
            assert read_shm(msg.handles[0], 4) == b"wire"
            msg.close()
            assert wire.recv_message(sock) is None, "the publisher closed the connection"
    with SharedMemory.create(4096) as shm, publish(name, shm, allow=lambda *peer: False):
        with raw_connect(name) as sock:
            msg = wire.recv_message(sock)
            assert (msg.msg_type, len(msg.handles)) == (2, 0)
            assert f"pid {os.getpid()}" in bytes(msg.payload).decode()


def test_clients_that_never_read_or_vanish_do_not_stop_the_publisher(no_leak, name):
    with shm_with(b"alive") as shm, publish(name, shm) as pub:
        silent = [raw_connect(name) for _ in range(20)]  # answered, never read
        for _ in range(20):
            raw_connect(name).close()  # gone before the answer
        with connect(name, timeout=5, kind=SharedMemory) as got:
            assert read_shm(got, 5) == b"alive"
        assert pub.granted == 41
        for sock in silent:
            sock.close()  # the handles queued to them go with them


def test_a_publisher_that_never_answers_times_out(no_leak, name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as mute:
        mute.bind(address_of(name))
        mute.listen()  # never accepts
        start = time.monotonic()
        with pytest.raises(TimedOut, match=f"pid {os.getpid()}"):
            connect(name, timeout=0)
        waited = time.monotonic() - start
        assert connect_module.ANSWER_GRACE <= waited < connect_module.ANSWER_GRACE + 0.5


# -- many clients at once -----------------------------------------------------------------


def test_100_concurrent_connects_from_threads(no_leak, name):
    port = Port(capacity=100)
    barrier = threading.Barrier(100)
    failures: list[BaseException] = []

    def client(i: int) -> None:
        try:
            barrier.wait(30)
            with connect(name, timeout=30, kind=Port) as sender:
                sender.send(Message.with_data(1, str(i).encode()), timeout=30)
        except BaseException as e:
            failures.append(e)

    with publish(name, port) as pub:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == []
        assert sorted(int(bytes(port.recv(timeout=10).payload)) for _ in range(100)) == list(range(100))
        assert pub.granted == 100
    port.close()


MANY_CLIENTS = """
    import threading
    name, n = sys.argv[1], int(sys.argv[2])
    barrier = threading.Barrier(n)
    def client(i):
        barrier.wait(30)
        with connect(name, timeout=30, kind=Port) as sender:
            sender.send(Message.with_data(1, str(i).encode()), timeout=30)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
"""


def test_100_concurrent_connects_from_4_processes(child, name):
    port = Port(capacity=100)
    with publish(name, port) as pub:
        clients = [child(MANY_CLIENTS, name, 25) for _ in range(4)]
        senders = sorted(port.recv(timeout=30).sender.pid for _ in range(100))
        for c in clients:
            assert c.finish() == 0, c.stderr()
        assert senders == sorted([c.pid for c in clients] * 25)
        assert pub.granted == 100
    port.close()


# -- credentials: other users ---------------------------------------------------------------

AS_NOBODY = """
    name, groups = sys.argv[1], [int(g) for g in sys.argv[2].split(",") if g]
    os.setgroups(groups)
    os.setgid(65534)
    os.setuid(65534)
    try:
        got = connect(name, owner=0, timeout=20)
        print("granted", got.type.name, flush=True)
    except PermissionDenied as e:
        print("denied", e, flush=True)
"""


@as_root
def test_another_uid_is_refused_and_same_uid_clients_keep_working(child, name, caplog):
    caplog.set_level(logging.WARNING, logger="redstone_ipc.names")
    with shm_with(b"mine") as shm, publish(name, shm) as pub:
        nobody = child(AS_NOBODY, name, "")
        answer = nobody.line()
        assert answer.startswith("denied connect(")
        assert f"pid {nobody.pid} (uid {NOBODY}, gid {NOBODY}) is not allowed" in answer
        assert pub.refused == 1
        with connect(name, timeout=0, kind=SharedMemory) as got:
            assert read_shm(got, 4) == b"mine"
        assert nobody.finish() == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "redstone_ipc.names"]
    assert any(f"pid {nobody.pid} (uid {NOBODY}" in m and "refused" in m for m in logged), logged


@as_root
@pytest.mark.parametrize(
    "allow, groups",
    [
        (Allow(uids=[NOBODY]), ""),
        (Allow(gids=[NOBODY]), ""),  # its effective gid
        (Allow(gids=[4242]), "4242"),  # a supplementary group (SO_PEERGROUPS)
    ],
    ids=["uid", "gid", "supplementary-gid"],
)
def test_allow_lists_let_another_uid_in(child, name, allow, groups):
    with SharedMemory.create(4096) as shm, publish(name, shm, allow=allow) as pub:
        assert child(AS_NOBODY, name, groups).line() == "granted SHM"
        connect(name, timeout=0).close()  # the publisher's own uid stays allowed
        assert (pub.granted, pub.refused) == (2, 0)


@as_root
def test_allow_lists_refuse_who_is_not_listed(child, name):
    allow = Allow(uids=[NOBODY + 1], gids=[4243])
    with SharedMemory.create(4096) as shm, publish(name, shm, allow=allow) as pub:
        assert child(AS_NOBODY, name, "4242").line().startswith("denied")
        assert pub.refused == 1


@as_root
def test_an_allow_callable_decides_alone_on_kernel_credentials(child, name):
    seen: list[tuple[int, int, int]] = []

    def allow(pid: int, uid: int, gid: int) -> bool:
        seen.append((pid, uid, gid))
        return uid == NOBODY

    with SharedMemory.create(4096) as shm, publish(name, shm, allow=allow):
        nobody = child(AS_NOBODY, name, "")
        assert nobody.line() == "granted SHM"
        with pytest.raises(PermissionDenied, match="allow= check"):
            connect(name, timeout=0)  # not combined with the default: own uid refused
    assert seen == [(nobody.pid, NOBODY, NOBODY), (os.getpid(), os.geteuid(), os.getegid())]


SQUAT = """
    import socket
    name = sys.argv[1]
    os.setgid(65534)
    os.setuid(65534)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(f"\\0redstone-ipc/0/{name}".encode())    # root's namespace
    sock.listen()
    print("bound", flush=True)
    sys.stdin.readline()
"""


@as_root
def test_another_user_cannot_answer_in_the_publishers_place(child, name):
    squatter = child(SQUAT, name)
    assert squatter.line() == "bound"
    with pytest.raises(PermissionDenied, match=f"held by pid {squatter.pid} of uid {NOBODY}"):
        connect(name, timeout=5)
    with SharedMemory.create(4096) as shm:
        with pytest.raises(NameInUse):
            publish(name, shm)  # it can squat the name, not impersonate its owner
        squatter.tell()
        assert squatter.finish() == 0
        with publish(name, shm):
            connect(name, timeout=0).close()


def test_an_allow_callable_that_raises_refuses_and_is_logged(no_leak, name, caplog):
    calls = itertools.count()

    def allow(pid: int, uid: int, gid: int) -> bool:
        if next(calls) == 0:
            raise RuntimeError("the database is down")
        return True

    with SharedMemory.create(4096) as shm, publish(name, shm, allow=allow):
        with pytest.raises(PermissionDenied, match="check failed"):
            connect(name, timeout=0)
        connect(name, timeout=0).close()  # and it keeps serving
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.name == "redstone_ipc.names" and "the database is down" in str(record.exc_info[1])


def test_closing_from_inside_the_allow_callable(no_leak, name):
    publications: list[Publication] = []

    def allow(pid: int, uid: int, gid: int) -> bool:
        publications[0].close()  # returns at once: it is the serving thread
        return True

    with SharedMemory.create(4096) as shm:
        publications.append(publish(name, shm, allow=allow))
        connect(name, timeout=5).close()  # this last client is still answered
        publications[0].close()  # waits for the thread: the name is free now
        with pytest.raises(NameNotFound):
            connect(name, timeout=0)


def test_allow_takes_only_what_it_documents(no_leak, name):
    with SharedMemory.create(4096) as shm, pytest.raises(TypeError, match="Allow"):
        publish(name, shm, allow=[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Allow(uids=[-1])
    with pytest.raises(TypeError):
        Allow(gids="44")  # type: ignore[arg-type]
    assert Allow(uids=[1, 1], gids=(2,)) == Allow(uids={1}, gids=[2])


# -- asyncio ---------------------------------------------------------------------------------


def test_publish_inside_a_running_loop_and_connect_async(no_leak, name):
    async def main() -> bytes:
        with shm_with(b"async") as shm, publish(name, shm):
            got = await connect_async(name, timeout=5, kind=SharedMemory)
            with got:
                return read_shm(got, 5)

    assert asyncio.run(main()) == b"async"


def test_connect_async_never_blocks_the_loop(no_leak, name):
    """The publisher's check waits for the loop itself: a connect_async that
    blocked the loop would deadlock until the check gave up and refused."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        entered = loop.create_future()
        gate = threading.Event()

        def allow(pid: int, uid: int, gid: int) -> bool:
            loop.call_soon_threadsafe(entered.set_result, None)
            return gate.wait(10)

        with SharedMemory.create(4096) as shm, publish(name, shm, allow=allow):
            task = asyncio.create_task(connect_async(name, timeout=20))
            await asyncio.wait_for(entered, 10)  # the loop runs while the publisher decides
            gate.set()
            (await task).close()

    asyncio.run(main())


def test_connect_async_waits_for_a_name_then_times_out_or_finds_it(no_leak, name):
    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(NameNotFound):
            await connect_async(name, timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 0.8

        task = asyncio.create_task(connect_async(name, timeout=20, kind=SharedMemory))
        await asyncio.sleep(0)  # its first attempt finds nothing; it backs off
        assert not task.done()
        with shm_with(b"later") as shm, publish(name, shm):
            got = await asyncio.wait_for(task, 10)
        assert read_shm(got, 5) == b"later"
        got.close()

    asyncio.run(main())


def test_cancelling_connect_async_leaves_nothing(no_leak, name):
    async def main() -> None:
        waiting = asyncio.create_task(connect_async(name))  # nobody publishes it
        await asyncio.sleep(0)  # it looked once and now backs off
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

        loop = asyncio.get_running_loop()
        entered = loop.create_future()
        gate = threading.Event()

        def allow(pid: int, uid: int, gid: int) -> bool:
            loop.call_soon_threadsafe(entered.set_result, None)
            return gate.wait(10)

        with SharedMemory.create(4096) as shm, publish(name, shm, allow=allow):
            answering = asyncio.create_task(connect_async(name))
            await asyncio.wait_for(entered, 10)  # cancelled while awaiting the answer
            answering.cancel()
            with pytest.raises(asyncio.CancelledError):
                await answering
            gate.set()  # the publisher then answers a closed socket

    asyncio.run(main())


# -- the public surface ---------------------------------------------------------------------


def test_names_are_exported_and_errors_subclass_the_builtins():
    for n in ("publish", "connect", "connect_async", "Publication", "Allow", "NameNotFound", "NameInUse"):
        assert n in redstone_ipc.__all__ and hasattr(redstone_ipc, n)
    assert issubclass(NameNotFound, IpcError) and issubclass(NameNotFound, FileNotFoundError)
    assert issubclass(NameInUse, IpcError) and issubclass(NameInUse, FileExistsError)


def test_pickling_a_handle_points_to_publish_and_connect():
    import pickle

    with SharedMemory.create(4096) as shm:
        with pytest.raises(TypeError, match=r"redstone_ipc\.publish\(name, handle\).*connect"):
            pickle.dumps(shm)


def test_the_readme_names_snippets_run_as_written(child):
    """server.py and client.py, two programs started in either order (the
    section's other snippets run in tests/test_docs.py)."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme.split("### Names: unrelated processes meet")[1].split("\n## ")[0]
    programs = {
        code.split("\n", 1)[0]: code for code in re.findall(r"```python\n(.*?)```", section, re.S)
    }
    client = child(programs["# client.py"], prelude=False)  # started first: it waits for the name
    server = child(programs["# server.py"], prelude=False)
    assert client.line() == "b'HELLO'"
    assert client.finish() == 0, client.stderr()
    server.proc.send_signal(signal.SIGINT)  # Ctrl-C
    server.finish()
    with pytest.raises(NameNotFound):
        connect("demo/echo", timeout=0)
