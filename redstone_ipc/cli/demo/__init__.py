"""``redstone-ipc demo``: a compositor and its apps, as separate processes.

The compositor (this process) publishes its Port under a name, then starts
``--apps`` app programs with ``subprocess`` (``python -m
redstone_ipc.cli.demo.app``: fresh interpreters that inherit nothing but a
command line). Each app ``connect``\\ s by name, sends the handles of its
frame buffers once, then renders frames and sends a small notification for
each; the compositor reads the pixels where the app wrote them and hands the
buffer back through a Semaphore in shared memory. RPC calls (``call`` and
``reply`` on a channel each app made) carry the zero-copy proof, round
trips and the final totals. See ``protocol.py`` for the exchange,
``compositor.py`` and ``app.py`` for the two sides.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, TextIO

from ...names.address import check_name
from ..usage import UsageError
from .compositor import Compositor, Settings

__all__ = ["add_parser", "run"]

DEFAULTS = {"apps": 3, "size": "1280x720", "seconds": 10.0, "fps": 60.0}
QUICK = {"apps": 2, "size": "320x240", "seconds": 2.0, "fps": 60.0}
MAX_APPS = 32


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="a compositor and its apps exchanging frames (what `make demo` runs)",
        description=(
            "A compositor publishes its port by name; app processes, started as separate "
            "programs, connect by name, render frames into shared memory, send the buffers' "
            "handles once, then a notification per frame, and make RPC calls on channels; "
            "buffers come back through a Semaphore in shared memory. Prints progress every "
            "second, then frames/s per app, hand-off latency, bytes moved and copied, and the "
            "zero-copy proof. Ctrl-C stops every process cleanly (exit status 130)."
        ),
    )
    p.add_argument("--apps", type=int, metavar="N",
                   help=f"app processes to start (default {DEFAULTS['apps']}, at most {MAX_APPS})")
    p.add_argument("--size", metavar="WxH",
                   help=f"frame size in pixels, RGBA (default {DEFAULTS['size']})")
    p.add_argument("--seconds", type=float, metavar="S",
                   help=f"how long the apps render (default {DEFAULTS['seconds']:g})")
    p.add_argument("--fps", type=float, metavar="F",
                   help=f"frames per second each app aims at; 0: as fast as buffers come back "
                        f"(default {DEFAULTS['fps']:g})")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run for tests: {QUICK['apps']} apps, {QUICK['size']}, "
                        f"{QUICK['seconds']:g} s (options given explicitly still win)")
    p.add_argument("--name", help="the name the compositor publishes (default demo/compositor-<pid>)")
    return p


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return Compositor(settings(args), out).run()


def settings(args: argparse.Namespace) -> Settings:
    """The run's settings, checked (UsageError for a mistake)."""
    base = QUICK if args.quick else DEFAULTS
    apps = base["apps"] if args.apps is None else args.apps
    size = base["size"] if args.size is None else args.size
    seconds = base["seconds"] if args.seconds is None else args.seconds
    fps = base["fps"] if args.fps is None else args.fps
    if not 1 <= apps <= MAX_APPS:  # type: ignore[operator]
        raise UsageError(f"--apps takes 1 to {MAX_APPS}, not {apps}")
    m = re.fullmatch(r"(\d+)x(\d+)", str(size))
    if m is None:
        raise UsageError(f"--size takes WIDTHxHEIGHT in pixels, such as 1280x720, not {size!r}")
    width, height = int(m.group(1)), int(m.group(2))
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise UsageError(f"--size: width and height go from 16 to 8192 pixels, not {size}")
    if not 0 < seconds <= 24 * 3600:  # type: ignore[operator]
        raise UsageError(f"--seconds takes a duration above 0, not {seconds:g}")  # type: ignore[str-format]
    if not 0 <= fps <= 10000:  # type: ignore[operator]
        raise UsageError(f"--fps takes 0 (unpaced) to 10000, not {fps:g}")  # type: ignore[str-format]
    name = args.name or f"demo/compositor-{os.getpid()}"
    try:
        check_name(name)
    except ValueError as e:
        raise UsageError(f"--name: {e}") from None
    return Settings(apps=int(apps), width=width, height=height, seconds=float(seconds),  # type: ignore[arg-type]
                    fps=float(fps), name=name)  # type: ignore[arg-type]
