"""What the demo's compositor and apps agree on: messages, memory, pixels.

An app talks to the compositor in three ways:

* on the compositor's **port** (found by name, shared by every app):
  ``ATTACH`` once, carrying three handles — its pixel buffers (read-only:
  the compositor can look, never touch), its control page (read-write) and
  one end of a new channel — then one ``FRAME`` notification per frame (a
  few bytes: which buffer, which frame, when it was sent);
* on its **channel**, RPC calls (``call``/``reply``): ``PROOF`` (the app's
  physical frame numbers, in a loan: zero copy), ``PING`` (a round trip),
  ``DETACH`` (its totals, answered with the compositor's);
* in its **control page**, futex-based primitives both sides map: the
  ``free`` Semaphore counts the buffers the compositor has handed back (the
  app takes one before rendering, the compositor releases one when it is
  done reading), and the ``stop`` Event asks the app to finish.
"""

from __future__ import annotations

import struct

__all__ = [
    "ATTACH", "FRAME", "PROOF", "PING", "DETACH", "REPLY",
    "FRAME_NOTE", "PING_NOTE", "FREE_OFFSET", "STOP_OFFSET", "CONTROL_SIZE",
    "row_pattern", "frame_shift",
]

# Port messages (app -> compositor)
ATTACH = 1
FRAME = 2
# Channel calls (app -> compositor); the reply's msg_type is the call's | REPLY
PROOF = 3
PING = 4
DETACH = 5
REPLY = 0x100

FRAME_NOTE = struct.Struct("<IIQ")
"""A FRAME's payload: frame number, buffer index, time sent (CLOCK_MONOTONIC ns:
the same clock in every process, so the compositor can measure the hand-off)."""
PING_NOTE = struct.Struct("<Q")

# The control page (one page, read-write in both processes)
FREE_OFFSET = 0  # Semaphore: buffers the app may render into
STOP_OFFSET = 64  # Event: set by the compositor when the app should finish
CONTROL_SIZE = 4096


def row_pattern(app: int, width: int) -> bytes:
    """One row of app ``app``'s picture: a gradient in its own colours (RGBA)."""
    row = bytearray(width * 4)
    for x in range(width):
        level = x * 256 // width
        row[4 * x : 4 * x + 4] = bytes(((level + 70 * app) % 256, (85 * app) % 256, 255 - level, 255))
    return bytes(row)


def frame_shift(frame: int, width: int) -> int:
    """How many pixels frame ``frame`` scrolls the pattern left: it moves."""
    return (4 * frame) % width
