"""Progress on stderr: a bar on a terminal, plain lines otherwise.

On a terminal the bar is redrawn in place (``\\r``): done/total, the
measurement under way and an estimate of the time left. Anywhere else (a
pipe, a log file, CI) it prints a plain line when a new benchmark starts
and at each further 10 % of the run.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, out: TextIO) -> None:
        self.total = max(1, total)
        self.done = 0
        self.out = out
        try:
            self.tty = out.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.start = time.monotonic()
        self.section = ""
        self.next_line_at = 0.1
        self.drawn = False

    def step(self, section: str, label: str) -> None:
        """A measurement starts: ``section`` names its benchmark, ``label`` it."""
        if self.tty:
            self._draw(label)
        else:
            share = self.done / self.total
            if section != self.section or share >= self.next_line_at:
                while self.next_line_at <= share:
                    self.next_line_at += 0.1
                print(f"[{self.done:>4}/{self.total} {share:4.0%}{self._eta()}] {label}",
                      file=self.out, flush=True)
        self.section = section

    def advance(self) -> None:
        self.done += 1

    def note(self, text: str) -> None:
        """A line that must stay (a failure, say), above the bar."""
        if self.tty and self.drawn:
            self.out.write("\r\x1b[2K")
        print(text, file=self.out, flush=True)
        self.drawn = False

    def clear(self) -> None:
        """Take the bar off the terminal (before printing to stdout)."""
        if self.tty and self.drawn:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self.drawn = False

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\r\x1b[2K")
            self.out.flush()
        elapsed = time.monotonic() - self.start
        print(f"{self.done} measurements in {_duration(elapsed)}.", file=self.out, flush=True)

    def _eta(self) -> str:
        if self.done == 0:
            return ""
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        return f", {_duration(left)} left"

    def _draw(self, label: str) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        share = self.done / self.total
        bar_w = 24
        filled = int(share * bar_w)
        bar = "#" * filled + "-" * (bar_w - filled)
        head = f"[{bar}] {self.done}/{self.total}{self._eta()}  "
        line = (head + label)[: max(10, width - 1)]
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()
        self.drawn = True


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"
