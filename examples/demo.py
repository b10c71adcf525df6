"""A compositor and its apps: the main job of redstone-ipc, end to end.

Three app processes each render frames into their own shared-memory buffer
and hand the compositor a read-only handle to it, plus a private channel,
through the compositor's port. For every frame the app makes a channel
``call``; the compositor reads the pixels straight from the app's pages (no
copy: the very same physical frames), checks them, and replies. One app is
killed with SIGKILL halfway: the compositor notices (PeerClosed), frees
what it held, and carries on with the others.

Everything below crosses real process boundaries: the apps are fresh
interpreters (multiprocessing's spawn: nothing is inherited; the SEND right
reaches them pickled as a duplicated fd), every other handle travels in
messages (SCM_RIGHTS), and every wait sleeps in the kernel. The compositor
serves all apps from one thread with asyncio.

    python examples/demo.py            (or: make demo)
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import struct
import sys
import time
import zlib

from redstone_ipc import (
    Channel,
    ChannelEndpoint,
    Message,
    PeerClosed,
    PermissionDenied,
    Port,
    Rights,
    SharedMemory,
)

WIDTH, HEIGHT = 640, 360
FRAME_BYTES = WIDTH * HEIGHT * 4  # RGBA
APPS = 3
FRAMES = 40
DOOMED_APP = 2  # this one is SIGKILLed halfway through

HELLO, FRAME, ACK = 1, 2, 3
_FRAME = struct.Struct("<II")  # frame number, crc32 of the pixels


def frame_numbers(mapping) -> list[int] | None:
    """Physical frames behind a mapping, or None where the kernel hides them."""
    try:
        return mapping.frames()
    except PermissionDenied:
        return None


# -- an app ---------------------------------------------------------------------


def app(index: int, compositor: Port) -> None:
    """Render FRAMES frames and hand each to the compositor."""
    shm = SharedMemory.create(FRAME_BYTES)
    pixels = shm.map()  # writable *before* a read-only handle leaves
    mine, theirs = Channel.create_pair()

    hello = Message.with_data(HELLO, json.dumps([index, os.getpid(), frame_numbers(pixels)]).encode())
    hello.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
    hello.attach_handle(theirs)  # moves: this process no longer holds it
    compositor.send(hello, timeout=None)
    compositor.close()

    row = bytes((index * 80 + x) % 256 for x in range(WIDTH * 4))
    for n in range(FRAMES):
        if index == DOOMED_APP and n == FRAMES // 2:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, mid-stream
        shade = bytes([n % 256]) * 16
        pixels[: len(row)] = row
        pixels[len(row) : len(row) + 16] = shade
        crc = zlib.crc32(pixels)
        reply = mine.call(Message.with_data(FRAME, _FRAME.pack(n, crc)), timeout=30)
        assert reply.msg_type == ACK and bytes(reply.payload) == b"ok", reply
    mine.close()
    pixels.unmap()
    shm.close()


# -- the compositor -------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.frames: dict[int, int] = {}
        self.zero_copy: dict[int, bool | None] = {}
        self.ended: dict[int, str] = {}
        self.handoff_us: list[float] = []


async def serve_app(hello: Message, stats: Stats) -> None:
    """Serve one app's channel until it ends, cleanly or not."""
    index, pid, their_frames = json.loads(bytes(hello.payload))
    shm = hello.take(SharedMemory)  # typed: what the app attached, in order
    channel = hello.take(ChannelEndpoint)
    view = shm.map(writable=False)
    ours = frame_numbers(view)
    stats.zero_copy[index] = None if ours is None or their_frames is None else ours == their_frames
    stats.frames[index] = 0
    assert hello.sender.pid == pid, "the kernel vouches for who sent the hello"
    try:
        while True:
            started = time.perf_counter()
            request = await channel.recv_async()
            n, crc = _FRAME.unpack(request.payload)
            ok = zlib.crc32(view) == crc  # reads the app's pages in place
            await channel.reply_async(request, Message.with_data(ACK, b"ok" if ok else b"bad frame"))
            stats.frames[index] += 1
            stats.handoff_us.append((time.perf_counter() - started) * 1e6)
    except PeerClosed:
        stats.ended[index] = "finished" if stats.frames[index] == FRAMES else "died"
    finally:
        view.unmap()
        shm.close()
        channel.close()


async def compositor(port: Port) -> Stats:
    stats = Stats()
    sessions = []
    for _ in range(APPS):
        hello = await port.recv_async(timeout=30)
        sessions.append(asyncio.create_task(serve_app(hello, stats)))
    await asyncio.gather(*sessions)
    return stats


def main() -> int:
    port = Port(capacity=16)
    send_right = port.duplicate(Rights.SEND | Rights.TRANSFER)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited
    apps = [ctx.Process(target=app, args=(i, send_right)) for i in range(APPS)]
    t0 = time.perf_counter()
    for p in apps:
        p.start()
    send_right.close()  # each app got its own copy when it started

    stats = asyncio.run(compositor(port))
    elapsed = time.perf_counter() - t0
    for p in apps:
        p.join(timeout=30)
    port.close()

    print(f"redstone-ipc demo: {APPS} apps, {FRAMES} frames of {FRAME_BYTES >> 10} KiB each")
    for index in range(APPS):
        code = apps[index].exitcode
        how = "killed by SIGKILL" if code == -signal.SIGKILL else f"exit {code}"
        same = stats.zero_copy.get(index)
        frames_note = {True: "same physical frames", False: "DIFFERENT frames", None: "frames hidden"}[same]
        print(
            f"  app {index}: {stats.frames.get(index, 0):3d} frames checked, "
            f"{stats.ended.get(index, '?'):8s} ({how}); {frames_note}"
        )
    if stats.handoff_us:
        stats.handoff_us.sort()
        median = stats.handoff_us[len(stats.handoff_us) // 2]
        print(f"  median frame hand-off (call + check + reply): {median:.0f} us; "
              f"pixel bytes copied between processes: 0")
    print(f"  total {elapsed:.2f} s")

    expected_ok = all(
        stats.ended.get(i) == ("died" if i == DOOMED_APP else "finished") for i in range(APPS)
    ) and all(v is not False for v in stats.zero_copy.values())
    print("demo OK" if expected_ok else "demo FAILED")
    return 0 if expected_ok else 1


if __name__ == "__main__":
    sys.exit(main())
