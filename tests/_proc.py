"""Helpers for tests that run real processes (fork) and watch them sleep.

* :func:`fork` runs a function in a forked child that never returns into
  pytest: exit status 0 if the function returned, 1 if it raised (traceback
  on stderr), whatever it passed to ``os._exit`` otherwise.
* :func:`join` waits for a child through a pidfd (no polling, bounded).
* :func:`on_cpu` pins a process to one CPU, so stress tests run their
  sides truly in parallel.
* :func:`wait_futex_sleep` waits until a thread is asleep in ``futex(2)`` on
  a given address, read from ``/proc/<pid>/task/<tid>/syscall``: the only
  way to *know* a process is asleep in the kernel, which tests of wake-up
  counts and signals need. It polls /proc (briefly) because the kernel gives
  no notification for "went to sleep".
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from typing import Any, Callable

from redstone_ipc.linux.libc import SYS

FUTEX_NR = SYS["futex"]


def on_cpu(index: int) -> set[int]:
    """Run the calling process on the ``index``-th allowed CPU (modulo their
    number); returns the previous affinity, to restore with
    ``os.sched_setaffinity(0, previous)``. Stress tests put the two sides on
    different CPUs so that they really run at the same time."""
    previous = os.sched_getaffinity(0)
    cpus = sorted(previous)
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    return previous


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def fork(fn: Callable[..., Any], *args: Any) -> int:
    """Run ``fn(*args)`` in a child process; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fn(*args)
        code = 0
    except SystemExit as e:  # pragma: no cover - child side
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # pragma: no cover - child side
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    raise AssertionError("unreachable")  # pragma: no cover


def join(pid: int, timeout: float = 30.0) -> int:
    """Wait for child ``pid`` to end; its exit code (-signal if killed).

    On timeout the child is killed and AssertionError raised.
    """
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish within {timeout} s")
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def join_all(pids: list[int], timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    return [join(p, max(0.1, deadline - time.monotonic())) for p in pids]


def exited(pid: int) -> bool:
    """Whether the child has ended (without reaping it)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def blocked_syscall(pid: int, tid: int | None = None) -> list[str]:
    """What ``/proc/<pid>/task/<tid>/syscall`` says of a thread (the main one
    by default): ``[nr, arg0, arg1, ...]`` (hex args) while it is blocked in a
    system call; ``["running"]`` or ``["-1", ...]`` otherwise; [] if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/syscall") as f:
            return f.read().split()
    except OSError:
        return []


def futex_sleeping(pid: int, address: int, tid: int | None = None) -> bool:
    """Whether thread ``tid`` of ``pid`` (its main thread by default) is
    blocked in FUTEX_WAIT on ``address``."""
    fields = blocked_syscall(pid, tid)
    if len(fields) < 3 or fields[0] != str(FUTEX_NR):
        return False
    return int(fields[1], 16) == address and int(fields[2], 16) & 0x7F == 0  # FUTEX_WAIT


def wait_futex_sleep(pid: int, address: int, tid: int | None = None, timeout: float = 10.0) -> None:
    """Return once the thread sleeps in futex_wait on ``address``; else AssertionError."""
    deadline = time.monotonic() + timeout
    while not futex_sleeping(pid, address, tid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pid}/{tid or pid} never went to sleep on {address:#x}")
        time.sleep(0.001)



class LineReader:
    """Lines a child process writes to a pipe (``Popen(stdout=PIPE).stdout``),
    each waited for at most a timeout, so that a child that hangs fails the
    test instead of blocking it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.fd = stream.fileno()
        self.buffer = b""

    def line(self, timeout: float = 20.0) -> str:
        """The next line, without its newline; AssertionError if none came in
        ``timeout`` seconds, or if the child closed the pipe first."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no line from the child in {timeout}s (so far: {self.buffer!r})")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise AssertionError(f"the child closed its output (it exited); so far: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()
