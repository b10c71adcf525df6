"""Shared fixtures: fd accounting and running code in real child processes."""

from __future__ import annotations

import gc
import os
import select
import signal
from collections.abc import Callable, Iterator

import pytest


def open_fds() -> set[int]:
    """The fds open in this process right now (the listing's own fd excluded)."""
    gc.collect()
    fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {int(name) for name in os.listdir(fd)} - {fd}
    finally:
        os.close(fd)


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves more (or fewer) fds open than it found."""
    before = open_fds()
    yield
    after = open_fds()
    assert after == before, f"fds leaked: {sorted(after - before)}, lost: {sorted(before - after)}"


def fork_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child; exit 0 if it returns, 1 if it raises.

    The child never returns into pytest: it leaves with os._exit.
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
        raise AssertionError(f"child {pid} did not finish in {timeout}s")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_in_child(body: Callable[[], None], timeout: float = 20.0) -> None:
    """Fork, run ``body`` in the child, and assert it succeeded."""
    assert wait_child(fork_child(body), timeout) == 0, "the child process failed"
