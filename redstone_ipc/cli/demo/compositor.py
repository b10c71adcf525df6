"""The demo's compositor: publishes its port, starts the apps, composites their frames.

Threads, each blocking in the kernel on one thing:

* the **receiver** takes every message from the port: ``ATTACH`` (maps the
  app's buffers read-only, starts its RPC thread) and ``FRAME`` (checks the
  pixels in place, releases the buffer through the app's Semaphore, records
  the hand-off latency);
* one **RPC server** per app answers the calls on its channel
  (``PROOF``, ``PING``, ``DETACH``) until the app closes it;
* one **watcher** per app process waits for it to exit;
* the **main thread** prints progress once a second and decides when to
  stop: at the end of ``--seconds``, or on Ctrl-C / SIGTERM. Stopping sets
  every app's ``stop`` Event; the apps hand back their buffers, detach and
  exit; after a grace period stragglers get SIGTERM, then SIGKILL. A second
  Ctrl-C kills them at once.

Signals only set a flag and wake the main thread (``signal.set_wakeup_fd``):
no exception is ever raised in the middle of a message's handling.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from ... import (
    ChannelEndpoint,
    Event,
    InvalidHandle,
    IpcError,
    Mapping,
    NameInUse,
    Message,
    PeerClosed,
    PermissionDenied,
    Port,
    PortClosed,
    Semaphore,
    SharedMemory,
    publish,
)
from ..usage import UsageError
from . import protocol as P
from .report import Report

GRACE = 5.0
"""Seconds the apps get to finish once asked to stop, before SIGTERM (and
as long again before SIGKILL)."""
ATTACH_WAIT = 20.0
"""Seconds the apps get to start and attach (a loaded machine is slow to
start interpreters)."""


@dataclass
class Settings:
    apps: int
    width: int
    height: int
    seconds: float
    fps: float
    name: str


@dataclass
class Surface:
    """What the compositor knows of one attached app."""

    index: int
    pid: int
    width: int
    height: int
    buffers: int
    stride: int
    shm_id: int
    pixels: SharedMemory
    control: SharedMemory
    channel: ChannelEndpoint
    view: Mapping  # the app's buffers, read-only
    page: Mapping  # its control page
    free: Semaphore
    stop: Event
    expected: bytes  # two rows of its pattern: any shift is a window into it
    frames: int = 0
    bad: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    proof: dict[str, Any] = field(default_factory=dict)
    detached: dict[str, Any] | None = None
    rpc: threading.Thread | None = None

    def check(self, frame: int, buffer: int) -> bool:
        """Read three rows of the frame where the app rendered it (no copy)."""
        row = self.width * 4
        base = buffer * self.stride
        shift = 4 * P.frame_shift(frame, self.width)
        want = memoryview(self.expected)[shift : shift + row]
        with memoryview(self.view) as pixels:  # a view of the app's pages: no copy
            return all(
                pixels[base + r * row : base + (r + 1) * row] == want
                for r in (0, self.height // 2, self.height - 1)
            )


class Compositor:
    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.s = settings
        self.out = out
        self.port = Port(capacity=max(16, settings.apps * 4))
        self.surfaces: dict[int, Surface] = {}  # by app pid
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.exit_codes: dict[int, int] = {}  # by pid
        self.stopping = False
        self.stop_reason = ""
        self.signals = 0
        self.copied = 0  # bytes that went through message slots (headers, notes)
        self.moved_loans = 0  # bytes read in place from loans
        self.notify_r, self.notify_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.started = 0.0
        self.rendering_from: float | None = None  # when the last app attached
        self.stopped_at: float | None = None
        self.errors: list[str] = []
        self.recent_ns: list[int] = []  # hand-off latencies since the last progress line

    # -- the main thread ---------------------------------------------------------------

    def run(self) -> int:
        s = self.s
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        receiver = threading.Thread(target=self._receive, name="demo receiver", daemon=True)
        try:
            try:
                publication = publish(s.name, self.port)
            except NameInUse as e:
                raise UsageError(f"--name: {e}") from None
            with publication:
                self._say(
                    f"redstone-ipc demo: compositor pid {os.getpid()} publishes {s.name!r}; "
                    f"{s.apps} apps, {s.width}x{s.height} RGBA "
                    f"({_size(s.width * s.height * 4)} a frame), "
                    f"{'as fast as buffers come back' if not s.fps else f'{s.fps:g} fps'}, "
                    f"{s.seconds:g} s"
                )
                receiver.start()
                self.started = time.monotonic()
                self._start_apps()
                self._supervise(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            self._kill_all()
            self.port.close()  # wakes the receiver (PortClosed)
            if receiver.ident is not None:
                receiver.join(5)
            self._close_surfaces()
            os.close(self.notify_r)
            os.close(self.notify_w)
        report = Report(self)
        report.write(self.out)
        if self.stop_reason == "interrupted":
            return 130
        return 0 if report.ok else 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1  # the main loop acts on it: set_wakeup_fd woke it

    def _start_apps(self) -> None:
        cmd = [sys.executable, "-m", "redstone_ipc.cli.demo.app"]
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # Ctrl-C belongs to the compositor, which stops the apps in order: they
        # start with SIGINT blocked (a signal mask survives exec).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for i in range(self.s.apps):
                args = [self.s.name, i, self.s.width, self.s.height, self.s.fps]
                proc = subprocess.Popen(cmd + [str(a) for a in args], env=env, stdin=subprocess.DEVNULL)
                self.procs.append(proc)
                threading.Thread(target=self._watch, args=(proc,), name=f"demo watcher {proc.pid}",
                                 daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _supervise(self, wake_r: int) -> None:
        """Progress once a second; stop at the deadline or on a signal; return
        once every app has exited."""
        s = self.s
        deadline: float | None = None  # s.seconds from the moment every app has attached
        next_tick = self.started + 1.0
        last: dict[int, int] = {}
        handled_signals = 0
        kill_at: float | None = None
        term_at: float | None = None
        while len(self.exit_codes) < len(self.procs):
            now = time.monotonic()
            if deadline is None and len(self.surfaces) == len(self.procs):
                deadline = now + s.seconds
                self.rendering_from = now
            if self.signals > handled_signals:
                handled_signals = self.signals
                if self.stopping and handled_signals > 1:
                    self._say("second interrupt: killing the apps")
                    self._kill_all()
                self._stop("interrupted")
            if not self.stopping and deadline is not None and now >= deadline:
                self._stop("time")
            if not self.stopping and deadline is None and now - self.started > ATTACH_WAIT:
                self.errors.append(f"not every app attached within {ATTACH_WAIT:g} s")
                self._stop("error")
            if self.stopping and term_at is None:
                term_at = now + GRACE
                kill_at = term_at + GRACE
            if term_at is not None and now >= term_at:
                self._signal_apps(signal.SIGTERM)
                term_at = float("inf")
            if kill_at is not None and now >= kill_at:
                self._signal_apps(signal.SIGKILL)
                kill_at = float("inf")
            if now >= next_tick:
                last = self._progress(last, now)
                next_tick += 1.0
            wakeups = [next_tick] + [t for t in (term_at, kill_at) if t is not None]
            if not self.stopping and deadline is not None:
                wakeups.append(deadline)
            wait = min(wakeups) - time.monotonic()
            ready, _, _ = select.select([wake_r, self.notify_r], [], [], max(0.0, wait))
            for fd in ready:
                _drain(fd)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()

    def _stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        self.stopped_at = time.monotonic()
        if reason == "interrupted":
            self._say("interrupted: stopping the apps")
        with self.lock:
            for surface in self.surfaces.values():
                surface.stop.set()

    def _signal_apps(self, sig: int) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _kill_all(self) -> None:
        self._signal_apps(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        self.exit_codes[proc.pid] = code
        _poke(self.notify_w)

    def _progress(self, last: dict[int, int], now: float) -> dict[int, int]:
        """One line: each app's frames/s over the last second, the hand-off
        latency of those frames, the port's queue (``Port.stats()``)."""
        with self.lock:
            surfaces = sorted(self.surfaces.values(), key=lambda x: x.index)
        counts = {surface.pid: surface.frames for surface in surfaces}
        parts = [f"{now - self.started:5.1f} s"]
        for surface in surfaces:
            parts.append(f"app {surface.index} {counts[surface.pid] - last.get(surface.pid, 0):3d} fps")
        fresh, self.recent_ns = self.recent_ns, []
        if fresh:
            fresh.sort()
            parts.append(f"hand-off p50 {fresh[len(fresh) // 2] / 1e3:.0f} µs")
        try:
            stats = self.port.stats()
            parts.append(f"port {stats['depth']}/{stats['capacity']} queued, {stats['senders']} senders")
        except IpcError:
            pass
        if not surfaces:
            parts.append("waiting for the apps to attach")
        self._say(" | ".join(parts))
        return counts

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    # -- the receiver thread ----------------------------------------------------------------

    def _receive(self) -> None:
        port = self.port
        while True:
            try:
                msg = port.recv()
            except (PortClosed, InvalidHandle):
                return  # closed by the main thread: the demo is over
            except IpcError as e:  # an app broke the protocol: it is dropped, the rest go on
                self.errors.append(f"port: {type(e).__name__}: {e}")
                continue
            now = time.monotonic_ns()
            self.copied += 16 + len(msg.payload)
            try:
                if msg.msg_type == P.FRAME:
                    self._frame(msg, now)
                elif msg.msg_type == P.ATTACH:
                    self._attach(msg)
                else:
                    self.errors.append(f"unexpected message type {msg.msg_type} from pid {_pid(msg)}")
            except Exception as e:  # one app's bad message must not stop the others
                self.errors.append(f"pid {_pid(msg)}: {type(e).__name__}: {e}")
            finally:
                msg.close()

    def _frame(self, msg: Message, now: int) -> None:
        frame, buffer, sent = P.FRAME_NOTE.unpack(msg.payload)
        surface = self.surfaces[_pid(msg)]  # the kernel says who sent it
        if not surface.check(frame, buffer):
            surface.bad += 1
        surface.free.release()  # the app may render into this buffer again
        surface.latencies_ns.append(now - sent)
        self.recent_ns.append(now - sent)
        surface.frames += 1
        surface.last_ns = now
        if not surface.first_ns:
            surface.first_ns = now

    def _attach(self, msg: Message) -> None:
        about = json.loads(bytes(msg.payload))
        pixels, control, channel = msg.handles
        assert isinstance(pixels, SharedMemory) and isinstance(control, SharedMemory)
        assert isinstance(channel, ChannelEndpoint)
        view = pixels.map()  # read-only: the handle has no WRITE
        page = control.map()
        width, height = about["width"], about["height"]
        surface = Surface(
            index=about["app"], pid=_pid(msg), width=width, height=height,
            buffers=about["buffers"], stride=about["stride"], shm_id=about["shm_id"],
            pixels=pixels, control=control, channel=channel, view=view, page=page,
            free=Semaphore(page, P.FREE_OFFSET), stop=Event(page, P.STOP_OFFSET),
            expected=P.row_pattern(about["app"], width) * 2,
        )
        msg.handles.clear()  # they are the surface's now
        surface.rpc = threading.Thread(target=self._serve_rpc, args=(surface,),
                                       name=f"demo rpc {surface.pid}", daemon=True)
        with self.lock:
            self.surfaces[surface.pid] = surface
            if self.stopping:
                surface.stop.set()
        surface.rpc.start()
        _poke(self.notify_w)  # the main thread starts the clock once all have attached

    # -- an RPC thread ------------------------------------------------------------------------

    def _serve_rpc(self, surface: Surface) -> None:
        channel = surface.channel
        while True:
            try:
                request = channel.recv()
            except (PeerClosed, InvalidHandle):
                return  # the app is gone (or the demo is over)
            except IpcError as e:
                self.errors.append(f"app {surface.index} channel: {e}")
                return
            try:
                answer = self._answer(surface, request)
                self.copied += 16 + len(answer.payload)
                channel.reply(request, answer, timeout=5)
            except (PeerClosed, InvalidHandle):
                return
            except Exception as e:
                self.errors.append(f"app {surface.index} rpc: {type(e).__name__}: {e}")
            finally:
                request.close()

    def _answer(self, surface: Surface, request: Message) -> Message:
        kind = request.msg_type
        if kind == P.PROOF:
            theirs = request.payload.cast("Q").tolist() if len(request.payload) else []
            self.moved_loans += len(request.payload)
            surface.proof = self._prove(surface, theirs)
            return Message.with_data(P.PROOF | P.REPLY, json.dumps(surface.proof).encode())
        self.copied += 16 + len(request.payload)
        if kind == P.PING:
            return Message(P.PING | P.REPLY, bytes(request.payload))
        if kind == P.DETACH:
            surface.detached = json.loads(bytes(request.payload))
            totals = {"frames": surface.frames, "bad": surface.bad}
            return Message.with_data(P.DETACH | P.REPLY, json.dumps(totals).encode())
        raise ValueError(f"unknown call {kind}")

    def _prove(self, surface: Surface, theirs: list[int]) -> dict[str, Any]:
        """Do our read-only mapping and the app's writable one sit on the same
        physical frames? (Also: the same region, by id.)"""
        proof: dict[str, Any] = {"same_region": surface.pixels.id == surface.shm_id}
        try:
            ours = surface.view.frames()
        except PermissionDenied:
            ours = []
        if not ours or not theirs:
            proof.update(same_frames=None, pages=len(ours) or len(theirs))
        else:
            proof.update(same_frames=ours == theirs, pages=len(ours),
                         shared=len(set(ours) & set(theirs)))
        return proof

    # -- the end -----------------------------------------------------------------------------------

    def _close_surfaces(self) -> None:
        with self.lock:
            surfaces = list(self.surfaces.values())
        for surface in surfaces:
            surface.channel.close()  # wakes its RPC thread if still there
            if surface.rpc is not None:
                surface.rpc.join(5)
            for primitive in (surface.free, surface.stop):
                primitive.close()
            for mapping in (surface.view, surface.page):
                mapping.unmap()
            surface.pixels.close()
            surface.control.close()


def _pid(msg: Message) -> int:
    """The sending process, as the kernel told it (every port message has one)."""
    return msg.sender.pid if msg.sender is not None else -1


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"!")
    except BlockingIOError:
        pass  # already readable


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover

