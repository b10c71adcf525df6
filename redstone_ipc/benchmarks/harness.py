"""Where processes run, how they are started, and how time and CPU are measured.

Placements
    Where the two sides of a benchmark run changes its figures more than
    anything else, so every benchmark is measured in each placement:

    * ``one-cpu``: both processes pinned to the same CPU: every hand-over is
      a context switch, and the CPU cost of each side is what shows;
    * ``two-cpus``: pinned to two different CPUs: a hand-over wakes the
      other CPU (on virtual machines, waking an idle vCPU costs tens of µs);
    * ``unpinned``: wherever the scheduler puts them.

Isolation
    Every measurement runs in a fresh forked process (:func:`run_isolated`),
    which pins itself, makes the objects it needs, forks its peer processes
    (:class:`Peer`) and reports its figures through a pipe. The process that
    runs the suite never opens an IPC object itself, so one variant's threads
    or leftovers cannot slow the next, and a measurement that hangs is killed
    (its whole process group) after a time limit instead of stopping the run.

Time and CPU
    Wall time with ``time.perf_counter``; CPU with ``time.process_time``
    (every thread of the process, user and system, nanosecond clock).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = [
    "Placement",
    "PLACEMENT_NAMES",
    "placements",
    "pin",
    "Peer",
    "PeerFailed",
    "MeasurementFailed",
    "run_isolated",
    "cpu_now",
    "DEBUG",
]

DEBUG = bool(os.environ.get("REDSTONE_BENCH_DEBUG"))
"""``REDSTONE_BENCH_DEBUG=1``: show the tracebacks of failed measurements."""

PLACEMENT_NAMES = ("one-cpu", "two-cpus", "unpinned")
PLACEMENT_TITLES = {"one-cpu": "one CPU", "two-cpus": "two CPUs", "unpinned": "unpinned"}

cpu_now = time.process_time
"""CPU time of this process (all its threads, user + system), in seconds."""

# Forking while a thread runs is what these benchmarks do on purpose (the
# library's receive service is a thread, and it is fork-safe); Python 3.12+
# warns about it.
warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)


@dataclass(frozen=True)
class Placement:
    """Where the measuring process (``home``) and its peers (``away``) run:
    a set of CPUs each, or None for no pinning."""

    name: str
    home: frozenset[int] | None
    away: frozenset[int] | None

    @property
    def title(self) -> str:
        return PLACEMENT_TITLES[self.name]


def placements(allowed: set[int] | None = None) -> tuple[dict[str, Placement], dict[str, str]]:
    """The placements this machine can run, and why any other is left out."""
    cpus = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    found: dict[str, Placement] = {}
    missing: dict[str, str] = {}
    first = frozenset({cpus[0]})
    found["one-cpu"] = Placement("one-cpu", first, first)
    if len(cpus) > 1:
        found["two-cpus"] = Placement("two-cpus", first, frozenset({cpus[1]}))
    else:
        missing["two-cpus"] = "this process may run on one CPU only"
    found["unpinned"] = Placement("unpinned", None, None)
    return found, missing


_ALL_CPUS = frozenset(os.sched_getaffinity(0))


def pin(cpus: frozenset[int] | None) -> None:
    """Run this process on ``cpus`` (None: on every CPU it was allowed at import)."""
    os.sched_setaffinity(0, cpus if cpus is not None else _ALL_CPUS)


class PeerFailed(RuntimeError):
    """A peer process raised, or died, or did not finish in time."""


class _PeerTimedOut(PeerFailed):
    pass


class MeasurementFailed(RuntimeError):
    """A measurement could not be made (its text says why, in one line)."""


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0] if text else type(exc).__name__


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_until_eof(fd: int, deadline: float | None) -> bytes | None:
    """Everything written to ``fd`` until EOF; None if ``deadline`` passes first."""
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not poller.poll(int(left * 1000) + 1):
                continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child_main(body: Callable[[], Any], result_fd: int, cpus: frozenset[int] | None | str) -> None:
    """The start of a forked process: pin, run ``body``, report, leave."""
    code = 0
    try:
        if cpus != "keep":
            pin(cpus)  # type: ignore[arg-type]
        out: tuple[str, Any] = ("ok", body())
    except BaseException as exc:  # reported to the parent, one line
        if DEBUG:
            traceback.print_exc()
        out = ("error", _one_line(exc))
        code = 1
    try:
        data = pickle.dumps(out)
    except Exception as exc:  # pragma: no cover - a result that does not pickle
        data = pickle.dumps(("error", f"unpicklable result: {exc}"))
    try:
        _write_all(result_fd, data)
        os.close(result_fd)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Peer:
    """``body()`` run in a forked process pinned to ``cpus``; :meth:`join`
    returns what it returned (or raises PeerFailed with its error)."""

    def __init__(self, body: Callable[[], Any], cpus: frozenset[int] | None | str = "keep") -> None:
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            _child_main(body, w, cpus)
        os.close(w)
        self.pid = pid
        self._fd = r
        self._done = False

    def join(self, timeout: float | None = 120.0) -> Any:
        if self._done:
            raise PeerFailed("joined twice")
        self._done = True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            data = _read_until_eof(self._fd, deadline)
        finally:
            os.close(self._fd)
        if data is None:
            self.kill()
            raise _PeerTimedOut(f"a peer process did not finish within {timeout:.0f} s")
        _, status = os.waitpid(self.pid, 0)
        if not data:
            raise PeerFailed(f"a peer process died ({_status_text(status)})")
        kind, value = pickle.loads(data)
        if kind != "ok":
            raise PeerFailed(f"a peer process failed: {value}")
        return value

    @contextlib.contextmanager
    def blamed(self) -> Iterator[None]:
        """If the block raises while the peer has failed (the likely cause:
        the other side is gone because it raised), raise the peer's error."""
        try:
            yield
        except Exception as exc:
            try:
                self.join(2.0)
            except _PeerTimedOut:
                pass
            except PeerFailed as failed:
                raise failed from exc
            raise

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:  # the body failed: do not leave the peer behind
            self._done = True
            os.close(self._fd)
            self.kill()


def _status_text(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def run_isolated(body: Callable[[], Any], timeout: float) -> Any:
    """Run ``body()`` in a fresh process (a process group of its own, with
    whatever it forks) and return its result. MeasurementFailed, in one
    line, if it raised, died or ran longer than ``timeout`` seconds (then
    the whole group is killed)."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        _child_main(body, w, "keep")
    os.close(w)
    try:
        os.setpgid(pid, pid)  # in case the child has not done it yet
    except OSError:
        pass
    try:
        data = _read_until_eof(r, time.monotonic() + timeout)
    except BaseException:  # Ctrl-C: nothing of ours may go on running
        _kill_group(pid)
        raise
    finally:
        os.close(r)
    if data is None:
        _kill_group(pid)
        raise MeasurementFailed(f"did not finish within {timeout:.0f} s")
    # Wait for its exit without reaping it: while its pid is not reaped, no
    # other process can take it, so the group's id still names our processes.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    _kill_group(pid)  # anything it left behind; reaps it
    status = _last_status.pop(pid, 0)
    if not data:
        raise MeasurementFailed(f"the measuring process died ({_status_text(status)})")
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise MeasurementFailed(value)
    return value


_last_status: dict[int, int] = {}


def become_subreaper(on: bool = True) -> bool:
    """Make this process adopt its orphaned descendants (``PR_SET_CHILD_SUBREAPER``),
    so that :func:`reap_orphans` can reap the processes of a measurement that
    was killed mid-way (else they stay zombies if init does not reap)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, int(on), 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # pragma: no cover
        return False


def reap_orphans() -> None:
    """Reap adopted descendants that have exited (between measurements, when
    no child of ours is running)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_group(pgid: int) -> None:
    """Kill what is left of the group led by our child ``pgid`` (not reaped
    yet, so the id is still ours), then reap the child."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        _last_status[pgid] = os.waitpid(pgid, 0)[1]
    except ChildProcessError:
        pass


# -- the two shapes of measurement --------------------------------------------

Loop = Callable[[int], Any]
"""``loop(k)`` does ``k`` iterations (round trips, echoes, messages)."""


def ping_pong(make_server: Callable[[], tuple[Loop, Callable[[], None] | None]],
              make_client: Callable[[], tuple[Loop, Callable[[], None] | None]],
              warm: int, n: int, placement: Placement,
              timeout: float = 120.0) -> tuple[float, float]:
    """Round trips between this process and a forked echo server.

    ``make_server()`` runs in the peer (after the fork) and returns its echo
    loop and a cleanup (or None); ``make_client()`` runs here after the fork.
    Both sides do ``warm`` iterations first, then ``n`` measured ones.
    Returns (seconds per round trip, CPU seconds per message of both
    processes together: two messages per round trip).
    """

    def server() -> float:
        loop, close = make_server()
        try:
            loop(warm)
            c0 = cpu_now()
            loop(n)
            return cpu_now() - c0
        finally:
            if close is not None:
                close()

    with Peer(server, placement.away) as peer:
        loop, close = make_client()
        try:
            with peer.blamed():
                loop(warm)
                c0 = cpu_now()
                t0 = time.perf_counter()
                loop(n)
                wall = time.perf_counter() - t0
                cpu = cpu_now() - c0
            cpu_peer = peer.join(timeout)
        finally:
            if close is not None:
                close()
    return wall / n, (cpu + cpu_peer) / (2 * n)


def stream(make_sender: Callable[[], tuple[Loop, Callable[[], None] | None]],
           make_receiver: Callable[[], tuple[Loop, Callable[[], None] | None]],
           warm: int, n: int, placement: Placement, timeout: float = 120.0) -> float:
    """One-way messages from a forked sender to this process: messages per
    second received, over the ``n`` messages after ``warm`` ones."""

    def sender() -> None:
        loop, close = make_sender()
        try:
            loop(warm + n)
        finally:
            if close is not None:
                close()

    with Peer(sender, placement.away) as peer:
        loop, close = make_receiver()
        try:
            with peer.blamed():
                loop(warm)
                t0 = time.perf_counter()
                loop(n)
                wall = time.perf_counter() - t0
            peer.join(timeout)
        finally:
            if close is not None:
                close()
    return n / wall
