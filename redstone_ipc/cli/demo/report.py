"""The demo's closing summary: rates, latencies, bytes, and the zero-copy proof."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .compositor import Compositor, Surface

__all__ = ["Report"]


class Report:
    """Figures computed once the demo is over (``write`` prints them)."""

    def __init__(self, c: Compositor) -> None:
        self.c = c
        self.surfaces = sorted(c.surfaces.values(), key=lambda s: s.index)
        begin = c.rendering_from or c.started
        self.elapsed = max(0.0, (c.stopped_at or begin) - begin)  # rendering time, all apps attached
        attached = {s.pid for s in self.surfaces}
        self.problems = list(c.errors)
        for proc in c.procs:
            code = c.exit_codes.get(proc.pid)
            if proc.pid not in attached:
                self.problems.append(f"pid {proc.pid} never attached ({_status(code)})")
        for s in self.surfaces:
            code = c.exit_codes.get(s.pid)
            if code != 0 and c.stop_reason != "interrupted":
                self.problems.append(f"app {s.index} (pid {s.pid}) ended: {_status(code)}")
            if s.bad:
                self.problems.append(f"app {s.index}: {s.bad} frames did not hold what was sent")
            if s.proof.get("same_frames") is False or s.proof.get("same_region") is False:
                self.problems.append(f"app {s.index}: the compositor does not see the app's pages")
        self.ok = not self.problems and len(self.surfaces) == len(c.procs)

    def write(self, out: TextIO) -> None:
        c = self.c
        w = out.write
        how = {"time": "", "interrupted": ", interrupted", "error": ", stopped on an error"}
        w(f"\nsummary: {len(self.surfaces)} apps, {self.elapsed:.1f} s{how.get(c.stop_reason, '')}\n")
        rows = [["app", "pid", "frames", "frames/s", "hand-off p50", "p99", "rpc p50", "exit"]]
        every: list[int] = []
        for s in self.surfaces:
            lat = sorted(s.latencies_ns)
            every += lat
            rtt = (s.detached or {}).get("rtt_us")
            rows.append([
                str(s.index), str(s.pid), str(s.frames), f"{_rate(s):.1f}",
                _us(_pct(lat, 50)), _us(_pct(lat, 99)),
                _us(rtt * 1e3 if rtt is not None else None), _status(c.exit_codes.get(s.pid)),
            ])
        every.sort()
        total_rate = sum(_rate(s) for s in self.surfaces)
        rows.append(["all", "", str(len(every)), f"{total_rate:.1f}", _us(_pct(every, 50)),
                     _us(_pct(every, 99)), "", ""])
        _table(rows, w)
        w("  hand-off: from the app's FRAME notification (sent after rendering) to the\n"
          "  compositor holding it; rpc: a channel call's round trip, measured by the app\n")

        frame_bytes = {s.pid: s.width * s.height * 4 for s in self.surfaces}
        moved = sum(s.frames * frame_bytes[s.pid] for s in self.surfaces) + c.moved_loans
        w(f"  bytes moved:  {_size(moved)} ({moved:,} bytes: frames read in place in the apps' "
          f"buffers, and loans)\n")
        w(f"  bytes copied: {_size(c.copied)} ({c.copied:,} bytes: message headers, notifications "
          f"and calls; no pixel was copied)\n")

        w("  zero copy:\n")
        for s in self.surfaces:
            w(f"    app {s.index}: {_proof(s.proof)}\n")
        for problem in self.problems:
            w(f"  problem: {problem}\n")
        if c.stop_reason == "interrupted":
            w("demo interrupted\n")
        else:
            w("demo OK\n" if self.ok else "demo FAILED\n")


def _proof(p: dict[str, Any]) -> str:
    if not p:
        return "no proof received"
    region = "the same region (memfd inode)" if p.get("same_region") else "a DIFFERENT region"
    if p.get("same_frames") is True:
        return (f"{region}; all {p['pages']} pages on the same physical frames in both "
                "processes (/proc/self/pagemap)")
    if p.get("same_frames") is False:
        return f"{region}; only {p.get('shared', 0)} of {p['pages']} pages on the same frames"
    return (f"{region}; {p.get('pages', 0)} pages, physical frames hidden here "
            "(reading them needs CAP_SYS_ADMIN)")


def _rate(s: Surface) -> float:
    if s.frames < 2 or s.last_ns <= s.first_ns:
        return 0.0
    return (s.frames - 1) / ((s.last_ns - s.first_ns) / 1e9)


def _pct(sorted_values: list[int], pct: int) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, len(sorted_values) * pct // 100)]


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e3:.0f} µs"


def _status(code: int | None) -> str:
    if code is None:
        return "running"
    if code == 0:
        return "0"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return str(code)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def _table(rows: list[list[str]], w: Any) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        w("  " + "  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() + "\n")
