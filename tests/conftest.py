"""Shared fixtures: fd accounting and running code in real child processes."""

from __future__ import annotations

import gc
import os
import select
import signal
from collections.abc import Callable, Iterator

import pytest


def open_fds() -> set[int]:
    """The fds open in this process right now (the listing's own fds excluded).

    ``os.listdir(fd)`` lists through a dup of ``fd``, which it closes before
    returning: the dup takes the lowest free number, which moves whenever
    other fds come and go, so it is left out too (it is closed by now)."""
    gc.collect()
    fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {n for n in map(int, os.listdir(fd)) if n != fd and _is_open(n)}
    finally:
        os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves more (or fewer) fds open than it found."""
    before = open_fds()
    yield
    after = open_fds()
    assert after == before, f"fds leaked: {sorted(after - before)}, lost: {sorted(before - after)}"


_unreaped: set[int] = set()  # children of fork_child not yet reaped by wait_child


@pytest.fixture(autouse=True)
def no_child_left_behind() -> Iterator[None]:
    """A test that fails half-way must not leave children blocked forever
    (they would hold pytest's output pipe open). Only children of
    :func:`fork_child` never waited for are killed, and only while they are
    still ours to reap: their pids cannot have been reused."""
    yield
    while _unreaped:
        pid = _unreaped.pop()
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                continue  # it had exited: now reaped
        except ChildProcessError:
            continue  # reaped by the test itself
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def fork_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child; exit 0 if it returns, 1 if it raises.

    The child never returns into pytest: it leaves with os._exit. Until
    :func:`wait_child` reaps it, ``no_child_left_behind`` kills it when the
    test ends.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _unreaped.add(pid)
    return pid


def wait_child(pid: int, timeout: float = 20.0) -> int:
    """The child's exit status (negative signal number if killed).

    Sleeps in the kernel on a pidfd; a child still running after ``timeout``
    is killed and the test fails.
    """
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _unreaped.discard(pid)
        raise AssertionError(f"child {pid} did not finish in {timeout}s")
    _, status = os.waitpid(pid, 0)
    _unreaped.discard(pid)
    return os.waitstatus_to_exitcode(status)


def run_in_child(body: Callable[[], None], timeout: float = 20.0) -> None:
    """Fork, run ``body`` in the child, and assert it succeeded."""
    assert wait_child(fork_child(body), timeout) == 0, "the child process failed"


@pytest.fixture(autouse=True, scope="session")
def receive_service_running() -> Iterator[None]:
    """The first receive side a process activates starts its service thread
    (redstone_ipc.port.service), which keeps an epoll and an eventfd for the
    life of the process: start it before any test counts fds."""
    from redstone_ipc import Message, Port

    with Port() as port:
        port.send(Message(0))
        port.recv(timeout=5)
    yield


@pytest.fixture
def spawn_ready() -> None:
    """multiprocessing's spawn starts a resource tracker once per process, and
    it keeps a pipe open for good: start it before fds are counted."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
