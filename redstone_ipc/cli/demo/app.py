"""An app of the demo: a separate program that renders frames for the compositor.

    python -m redstone_ipc.cli.demo.app NAME INDEX WIDTH HEIGHT FPS

``redstone-ipc demo`` starts a few of these with ``subprocess``; nothing is
inherited but the command line. The app finds the compositor by name
(``connect``), gives it read-only access to its buffers once, then for each
frame: takes a free buffer (a Semaphore in shared memory), renders into it,
and sends a small FRAME notification. It never sends pixels: the compositor
reads them where they are. See ``protocol.py`` for the whole exchange.

Exit status: 0 when the compositor saw every frame it sent, 1 on a mismatch
or when the compositor went away, 130 on Ctrl-C. Started by the demo, an app
never sees Ctrl-C: the compositor starts it with SIGINT blocked, and on
Ctrl-C stops every app in order (the ``stop`` Event), so each one still
hands back its buffers and reports. If the compositor dies instead, its
port closes and every app notices within half a second and exits.
"""

from __future__ import annotations

import array
import json
import sys
import time
from typing import Any

from ... import (
    Channel,
    Event,
    IpcError,
    Message,
    PeerClosed,
    PermissionDenied,
    Port,
    PortClosed,
    PortStatus,
    Rights,
    Semaphore,
    SharedMemory,
    connect,
)
from ...mm import page_round_up
from . import protocol as P

BUFFERS = 3
"""Buffers per app: one the compositor reads, one the app renders, one spare."""
PING_EVERY = 0.5  # seconds between RPC round trips
ATTACH_TIMEOUT = 10.0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name, index, width, height, fps = args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4])
    try:
        return App(name, index, width, height, fps).run()
    except KeyboardInterrupt:
        return 130
    except (PortClosed, PeerClosed):
        print(f"app {index}: the compositor went away", file=sys.stderr)
        return 1


class App:
    def __init__(self, name: str, index: int, width: int, height: int, fps: float) -> None:
        self.name = name
        self.index = index
        self.width = width
        self.height = height
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.frame_bytes = width * height * 4
        self.stride = page_round_up(self.frame_bytes)  # each buffer starts on a page
        row = P.row_pattern(index, width)
        self.picture = memoryview(row * (height + 1))  # frame n is a window into it
        self.sent = 0
        self.rtts: list[float] = []

    def run(self) -> int:
        # connect first: until the compositor publishes, there is nobody to render for
        with connect(self.name, kind=Port, timeout=ATTACH_TIMEOUT) as port, \
                SharedMemory.create(self.stride * BUFFERS) as pixels, \
                SharedMemory.create(P.CONTROL_SIZE) as control:
            canvas = pixels.map()  # writable, mapped before a read-only handle leaves
            page = control.map()
            free = Semaphore.create(page, P.FREE_OFFSET, BUFFERS)
            stop = Event.create(page, P.STOP_OFFSET)
            mine, theirs = Channel.create_pair()
            try:
                self.attach(port, pixels, control, theirs, canvas)
                self.prove(mine, canvas)
                self.render_until_stopped(port, mine, canvas, free, stop)
                return self.detach(mine, free)
            finally:
                mine.close()
                for primitive in (free, stop):
                    primitive.close()
                canvas.unmap()
                page.unmap()

    # -- the exchange ------------------------------------------------------------------

    def attach(self, port: Port, pixels: SharedMemory, control: SharedMemory,
               theirs: Any, canvas: Any) -> None:
        """Send the buffers' handles once, with a channel for calls."""
        about = {
            "app": self.index, "width": self.width, "height": self.height,
            "buffers": BUFFERS, "stride": self.stride, "shm_id": pixels.id,
        }
        msg = Message.with_data(P.ATTACH, json.dumps(about).encode())
        msg.attach_handle(pixels.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
        msg.attach_handle(control.duplicate(Rights.READ | Rights.WRITE | Rights.MAP | Rights.TRANSFER))
        msg.attach_handle(theirs)  # moves: the compositor's end from now on
        port.send(msg, timeout=ATTACH_TIMEOUT)

    def prove(self, mine: Any, canvas: Any) -> None:
        """Tell the compositor which physical frames hold our buffers (it
        compares them with its own mapping's). The list travels in a loan:
        written once into the channel's shared memory, read there."""
        try:
            frames = canvas.frames()
        except PermissionDenied:  # no CAP_SYS_ADMIN: the kernel hides frame numbers
            frames = []
        if frames:
            loan = mine.loan(8 * len(frames))
            loan.view.cast("Q")[:] = array.array("Q", frames)
            request = Message(P.PROOF, loan)
        else:
            request = Message(P.PROOF)
        mine.call(request, timeout=ATTACH_TIMEOUT).close()

    def render_until_stopped(self, port: Port, mine: Any, canvas: Any, free: Semaphore,
                             stop: Event) -> None:
        buffer = 0
        now = time.monotonic()
        next_frame = now
        next_ping = now + PING_EVERY
        note = P.FRAME_NOTE
        while not stop.is_set():
            if self.period:
                if stop.wait(timeout=next_frame - time.monotonic()):
                    break
                next_frame = max(next_frame + self.period, time.monotonic() - self.period)
            if not self.take(free, stop, port):
                break
            offset = buffer * self.stride
            shift = 4 * P.frame_shift(self.sent, self.width)
            canvas[offset : offset + self.frame_bytes] = self.picture[shift : shift + self.frame_bytes]
            port.send(
                Message(P.FRAME, note.pack(self.sent, buffer, time.monotonic_ns())), timeout=10
            )
            self.sent += 1
            buffer = (buffer + 1) % BUFFERS
            if time.monotonic() >= next_ping:
                self.ping(mine)
                next_ping = time.monotonic() + PING_EVERY

    def take(self, free: Semaphore, stop: Event, port: Port) -> bool:
        """A free buffer (True), or False once asked to stop. Raises PortClosed
        if the compositor died meanwhile (it would never release one)."""
        while not free.acquire(timeout=0.5):
            if stop.is_set():
                return False
            if port.status is PortStatus.CLOSED:
                raise PortClosed("the compositor's port closed")
        return True

    def ping(self, mine: Any) -> None:
        t = time.monotonic_ns()
        reply = mine.call(Message(P.PING, P.PING_NOTE.pack(t)), timeout=10)
        self.rtts.append((time.monotonic_ns() - t) / 1e3)
        reply.close()

    def detach(self, mine: Any, free: Semaphore) -> int:
        """Wait until every buffer is back (the compositor has read every frame),
        then compare totals."""
        deadline = time.monotonic() + 5.0
        for _ in range(BUFFERS):
            if not free.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        self.rtts.sort()
        mine_says = {"frames": self.sent, "rtt_us": self.rtts[len(self.rtts) // 2] if self.rtts else None}
        reply = mine.call(Message.with_data(P.DETACH, json.dumps(mine_says).encode()), timeout=10)
        theirs = json.loads(bytes(reply.payload))
        reply.close()
        if theirs["frames"] != self.sent or theirs["bad"]:
            print(
                f"app {self.index}: sent {self.sent} frames, the compositor composited "
                f"{theirs['frames']} ({theirs['bad']} wrong)", file=sys.stderr,
            )
            return 1
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except IpcError as e:  # one line, not a traceback: the compositor reports the exit status
        print(f"app: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
