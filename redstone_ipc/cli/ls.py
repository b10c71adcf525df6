"""``redstone-ipc ls``: the published names and the redstone objects alive now.

Where each column comes from:

* **names**: every listener at ``@redstone-ipc/<uid>/<name>`` in
  ``/proc/net/unix`` (anyone may list them); the owner pid from the process
  holding that socket; kind, rights, queue depth, capacity and senders from
  the publisher itself, asked with ``redstone_ipc.names.status`` (it answers
  processes of its own uid only: another user's names show what /proc shows).
* **processes, queues, pipes**: a publisher's answer also lists every object
  its process holds (``redstone_ipc.introspect``): ports and channel
  endpoints with their depth and senders, pipe ends, shared memory. Of a
  process that publishes nothing, ``/proc/<pid>/fd`` and ``maps`` show its
  shared memory, its receive sides (one ``redstone-owner`` lock each; the
  queue's depth is known only inside the process) and its connections.
* **shared memory**: every ``redstone-shm`` memfd, with the processes that
  hold an fd on it and those that map it.

Only processes this user may inspect are read (its own; all for root); the
others are counted. Nothing is changed anywhere: a status query takes no
handle, and nothing is received from any queue.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from typing import Any, TextIO

from ..errors import IpcError
from ..names import status
from . import procfs
from .usage import UsageError

__all__ = ["add_parser", "run", "snapshot"]

QUERY_TIMEOUT = 0.5
"""Seconds to wait for a publisher's answer: its serving thread answers in
microseconds unless the process is stopped or swamped."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "ls",
        help="list published names, queues, shared memory and pipes",
        description=(
            "List the published names (name, owner pid, uid, kind; queue depth, capacity "
            "and senders of a port) and the redstone objects alive in the processes you "
            "may inspect: ports and channel endpoints, shared-memory regions (size, which "
            "processes hold or map them), pipes. Publishers of your uid are asked for "
            "their status; everything else is read from /proc."
        ),
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME",
        help="only these names (shell patterns such as 'demo/*'), and what their publishers hold",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return p


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    snap = snapshot(args.names)
    if args.json:
        json.dump(snap, out, indent=2)
        out.write("\n")
    else:
        render(snap, out)
    return 0


# -- gathering ----------------------------------------------------------------------


def snapshot(patterns: list[str] | None = None) -> dict[str, Any]:
    """Everything ``ls`` shows, as one JSON-ready dict (see ``--json``).

    ``patterns``: keep only the names matching one of these shell patterns,
    and the objects of their publishers (UsageError if a pattern matches no
    published name).
    """
    me = os.geteuid()
    procs, hidden = procfs.processes()
    socket_owner = {ino: p.pid for p in procs for ino in p.sockets}
    names = []
    for lis in procfs.listeners():
        entry: dict[str, Any] = {
            "name": lis.name, "uid": lis.uid, "pid": socket_owner.get(lis.inode), "kind": None,
        }
        if lis.uid == me:
            try:
                answer = status(lis.name, owner=lis.uid, timeout=QUERY_TIMEOUT)
            except (IpcError, OSError) as e:
                entry["error"] = str(e)
            else:
                entry.update(answer)
        else:
            entry["error"] = "another user's name: its publisher answers only its own uid"
        names.append(entry)
    names.sort(key=lambda n: (n["uid"], n["name"]))

    if patterns:
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n["name"], pattern) for n in names):
                raise UsageError(f"no published name matches {pattern!r}")
        names = [n for n in names if any(fnmatch.fnmatchcase(n["name"], p) for p in patterns)]

    reports = {n["pid"]: n["objects"] for n in names if n.get("objects") is not None}
    publishers = {n["pid"] for n in names if n["pid"] is not None}
    relevant = [
        p for p in procs
        if p.memfds or p.pid in publishers
    ]
    if patterns:
        relevant = [p for p in relevant if p.pid in publishers]

    return {
        "names": [{k: v for k, v in n.items() if k != "objects"} for n in names],
        "processes": [_process_entry(p, reports.get(p.pid)) for p in relevant],
        "queues": _queues(relevant, reports, names),
        "shm": _shm(procs, keep={p.pid for p in relevant}),
        "pipes": [
            dict(obj, pid=pid) for pid, objs in reports.items() for obj in objs
            if obj["kind"].startswith("pipe-")
        ],
        "uninspected_processes": hidden,
    }


def _process_entry(p: procfs.Process, report: list[dict[str, Any]] | None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for m in p.memfds.values():
        counts[m.kind] = counts.get(m.kind, 0) + 1
    entry: dict[str, Any] = {
        "pid": p.pid, "uid": p.uid, "user": p.user, "command": p.command,
        "reported": report is not None, "memfds": counts,
    }
    if report is not None:
        entry["objects"] = report
    return entry


def _queues(procs: list[procfs.Process], reports: dict[int, list[dict[str, Any]]],
            names: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ports and endpoints: as reported, or receive sides seen in /proc."""
    named = {
        (n["pid"], n["object"]["id"]): n["name"]
        for n in names if n.get("object") and n["object"].get("kind") == "port"
    }
    out = []
    for p in procs:
        report = reports.get(p.pid)
        if report is not None:
            for obj in report:
                if obj["kind"] in ("port", "endpoint"):
                    out.append(dict(obj, pid=p.pid, name=named.get((p.pid, obj["id"]))))
            continue
        for m in p.memfds.values():
            if m.kind == "owner":  # a RECEIVE holder's lock: one port or endpoint
                out.append({"pid": p.pid, "kind": "receive side", "id": None, "owner_lock": m.inode})
    return out


def _shm(procs: list[procfs.Process], keep: set[int]) -> list[dict[str, Any]]:
    """Every SharedMemory region that a process of ``keep`` holds or maps, with
    every process that holds an fd to it and every one that maps it."""
    regions: dict[int, dict[str, Any]] = {}
    for p in procs:
        for m in p.memfds.values():
            if m.kind != "shm":
                continue
            r = regions.setdefault(m.inode, {"id": m.inode, "size": 0, "held_by": [], "mapped_by": []})
            r["size"] = max(r["size"], m.size)
            if m.held:
                r["held_by"].append(p.pid)
            if m.mapped:
                r["mapped_by"].append(p.pid)
    kept = [r for r in regions.values() if keep.intersection(r["held_by"] + r["mapped_by"])]
    return sorted(kept, key=lambda r: r["id"])


# -- printing -------------------------------------------------------------------------


def render(snap: dict[str, Any], out: TextIO) -> None:
    """The tables a person reads."""
    w = out.write
    names = snap["names"]
    if names:
        rows = [["NAME", "PID", "UID", "KIND", "DEPTH", "CAPACITY", "SENDERS", "DETAIL"]]
        for n in names:
            obj = n.get("object") or {}
            rows.append([
                n["name"], _s(n["pid"]), str(n["uid"]), n.get("kind") or "?",
                _s(obj.get("depth")), _s(obj.get("capacity")), _senders(obj.get("senders")),
                n.get("error") or _name_detail(n, obj),
            ])
        _table(rows, w)
    else:
        w("no published names\n")

    queues = [q for q in snap["queues"] if q["kind"] != "receive side"]
    if queues:
        w("\nQUEUES (ports and channel endpoints, as their processes report them)\n")
        rows = [["PID", "KIND", "ID", "DEPTH", "CAPACITY", "SENDERS", "NOTE"]]
        for q in queues:
            note = q.get("name") or ("" if q.get("receiving") else "served in another process")
            rows.append([
                str(q["pid"]), q["kind"], str(q["id"]), _s(q.get("depth")), str(q["capacity"]),
                _senders(q.get("senders")), note,
            ])
        _table(rows, w)

    shm = snap["shm"]
    if shm:
        w("\nSHARED MEMORY\n")
        rows = [["ID", "SIZE", "HELD BY", "MAPPED BY"]]
        for r in shm:
            rows.append([str(r["id"]), _size(r["size"]), _pids(r["held_by"]), _pids(r["mapped_by"])])
        _table(rows, w)

    pipes = snap["pipes"]
    if pipes:
        w("\nPIPES\n")
        rows = [["PID", "END", "ID", "CAPACITY", "BUFFERED"]]
        for pipe in pipes:
            rows.append([
                str(pipe["pid"]), pipe["kind"][len("pipe-"):], str(pipe["id"]),
                _size(pipe["capacity"]), _s(pipe.get("buffered")),
            ])
        _table(rows, w)

    procs = snap["processes"]
    if procs:
        w("\nPROCESSES\n")
        rows = [["PID", "USER", "SOURCE", "HOLDS", "COMMAND"]]
        for p in procs:
            source = "its report" if p["reported"] else "/proc"
            rows.append([str(p["pid"]), p["user"], source, _holds(p), _short(p["command"], 60)])
        _table(rows, w)
        if any(not p["reported"] for p in procs):
            w("(/proc shows a process's receive sides, not their depth: that is known only\n"
              " inside the process, and told by processes that publish a name)\n")
    hidden = snap["uninspected_processes"]
    if hidden:
        w(f"\n({hidden} {'process' if hidden == 1 else 'processes'} could not be inspected: "
          "no permission)\n")


def _name_detail(n: dict[str, Any], obj: dict[str, Any]) -> str:
    parts = []
    if obj.get("kind") == "shm":
        parts.append(_size(obj["size"]))
    elif obj.get("kind") == "port" and not obj.get("receiving"):
        parts.append("not served in the publisher")
    if "granted" in n:
        parts.append(f"{n['granted']} granted")
    if n.get("refused"):
        parts.append(f"{n['refused']} refused")
    return ", ".join(parts)


def _holds(p: dict[str, Any]) -> str:
    if p["reported"]:
        counts: dict[str, int] = {}
        for obj in p["objects"]:
            counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    else:
        words = {"shm": "shm", "owner": "receive side", "ring": "ring", "segment": "segment",
                 "payload": "payload"}
        counts = {words.get(k, k): v for k, v in p["memfds"].items()}
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "-"


def _table(rows: list[list[str]], w: Any) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        w("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() + "\n")


def _s(value: object) -> str:
    return "-" if value is None else str(value)


def _senders(pids: list[int] | None) -> str:
    if pids is None:
        return "-"
    return f"{len(pids)}" + (f" ({_pids(pids)})" if pids else "")


def _pids(pids: list[int]) -> str:
    return " ".join(map(str, sorted(set(pids)))) or "-"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
