"""Issue 11's performance goals, checked against a ``redstone-ipc bench --json`` file.

    python3 bench/goals.py results.json

For developers: the user-facing report (``redstone-ipc bench``) speaks of
figures and ratios, not of our goals. This reads its JSON and prints, for
each goal and placement, our figure, what the goal asks and whether it is
met. Ratios between two of our variants, or ours and a peer, are taken from
their ratios to the same baseline in the same runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PLACES = ("one-cpu", "two-cpus", "unpinned")
CHANNEL, PORTS = "redstone Channel", "redstone Port pair"


def _v(data: dict[str, Any], fig: str, place: str, variant: str) -> dict[str, Any] | None:
    found = data["benchmarks"].get(fig, {}).get("results", {}).get(place, {}).get(variant)
    return found if found and found.get("median") is not None else None


def _line(goal: str, place: str, value: str, ok: bool | None) -> None:
    mark = "n/a " if ok is None else ("MET " if ok else "MISS")
    print(f"  [{mark}] {place:<9} {goal:<58} {value}")


def check(data: dict[str, Any]) -> tuple[int, int]:
    met = missed = 0

    def record(goal: str, place: str, value: str, ok: bool | None) -> None:
        nonlocal met, missed
        _line(goal, place, value, ok)
        if ok is True:
            met += 1
        elif ok is False:
            missed += 1

    print("32 B round trip")
    for place in PLACES:
        ch = _v(data, "roundtrip", place, CHANNEL)
        limit = 0.8 if place == "one-cpu" else 0.1
        record(f"Channel <= {limit}x raw socketpair", place,
               f"{ch['ratio']:.2f}x ({ch['median']:.1f} µs)" if ch else "not measured",
               ch["ratio"] <= limit if ch else None)
        po = _v(data, "roundtrip", place, PORTS)
        if ch and po:
            r = po["ratio"] / ch["ratio"]
            record("Port pair <= 1.15x Channel", place, f"{r:.2f}x", r <= 1.15)
        results = data["benchmarks"].get("roundtrip", {}).get("results", {}).get(place, {})
        for name, v in results.items():
            if v.get("kind") != "peer" or v.get("median") is None or not ch:
                continue
            record(f"Channel faster than {name}", place,
                   f"{v['median'] / ch['median']:.2f}x as fast ({ch['median']:.1f} vs {v['median']:.1f} µs)",
                   ch["median"] < v["median"])

    print("One-way throughput (ratio to raw socketpair; higher is better)")
    for size, goal in (("32B", 3.0), ("4KiB", 2.5), ("64KiB", 2.0), ("1MiB", 1.0)):
        fig = f"throughput-{size}"
        for place in PLACES:
            for kind in ("Channel", "Port"):
                name = f"redstone {kind}" + (" + loan" if size == "1MiB" else "")
                v = _v(data, fig, place, name)
                record(f"{size}: {name} >= {goal}x raw", place,
                       f"{v['ratio']:.2f}x" if v else "not measured",
                       v["ratio"] >= goal if v else None)
                z = _v(data, fig, place, "pyzmq PUSH/PULL (ipc://)")
                if v and z:
                    record(f"{size}: {name} ahead of pyzmq", place,
                           f"{v['median'] / z['median']:.2f}x pyzmq", v["median"] > z["median"])

    print("Fan-in, 4 senders into one Port")
    for place in PLACES:
        v = _v(data, "fan-in", place, "redstone Port")
        record("Port >= 3x a shared raw socketpair", place,
               f"{v['ratio']:.2f}x" if v else "not measured", v["ratio"] >= 3 if v else None)

    print("CPU per message (the goal is for one CPU)")
    for place in PLACES:
        for name in (CHANNEL, PORTS):
            v = _v(data, "cpu-per-message", place, name)
            record(f"{name} <= raw socketpair", place,
                   f"{v['ratio']:.2f}x ({v['median']:.2f} µs)" if v else "not measured",
                   (v["ratio"] <= 1.0 if place == "one-cpu" else None) if v else None)

    print("Idle receiver, per 2 s blocked")
    seconds = data.get("settings", {}).get("idle_seconds", 2.0)
    for place in PLACES:
        for name in ("redstone Channel", "redstone Port"):
            v = _v(data, "idle", place, name)
            ms = v["median"] * 2.0 / seconds if v else None
            record(f"{name} <= 20 ms of CPU", place, f"{ms:.2f} ms" if ms is not None else "not measured",
                   ms <= 20 if ms is not None else None)

    print("Idle connected senders (ratio to none connected)")
    levels = data.get("settings", {}).get("sender_levels", [0, 1000])
    top = f"{max(levels)} idle senders"
    for place in PLACES:
        rt = _v(data, "senders-roundtrip", place, top)
        tp = _v(data, "senders-throughput", place, top)
        record(f"round trip with {top} <= 1.1x", place, f"{rt['ratio']:.2f}x" if rt else "not measured",
               rt["ratio"] <= 1.1 if rt else None)
        record(f"throughput with {top} >= 0.9x", place, f"{tp['ratio']:.2f}x" if tp else "not measured",
               tp["ratio"] >= 0.9 if tp else None)
        for side in ("sending process, per connection", "receiving process, per sender"):
            v = _v(data, "senders-fds", place, side)
            record(f"fds, {side}", place, f"{v['median']:.1f}" if v else "not measured", None)
    return met, missed


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    met, missed = check(data)
    print(f"\n{met} met, {missed} missed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
