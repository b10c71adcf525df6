"""``redstone-ipc bench``: run the benchmarks and print what they found.

:func:`main` takes the command's arguments and returns its exit status: 0
when every measurement was made, 1 when some failed (the tables say which
and why), 2 for a usage error (one line on stderr), 130 if interrupted
(the figures measured so far are still printed and written).

While it runs, the calling process adopts the orphans of measurements that
were killed (``PR_SET_CHILD_SUBREAPER``) and reaps them between
measurements, so a hung measurement leaves no zombie behind.

    python -m redstone_ipc.benchmarks.cli [--quick] [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from types import ModuleType
from typing import Any, Sequence, TextIO

from . import cpu, fanin, futex, handoff, peers, roundtrip, senders, throughput
from .harness import (
    PLACEMENT_NAMES, MeasurementFailed, become_subreaper, placements, reap_orphans, run_isolated,
)
from .model import Figure, Job, Results, Settings
from ..cli.usage import Parser, UsageError
from .progress import Progress
from .report import machine_info, now_iso, print_tables, to_json, write_json, write_plot

__all__ = ["main", "BENCHMARKS"]

PROG = "redstone-ipc bench"

BENCHMARKS: dict[str, tuple[ModuleType, str]] = {
    "roundtrip": (roundtrip, "32-byte round trips and the CPU per message, with the peers"),
    "throughput": (throughput, "one-way messages per second, 32 B to 1 MiB"),
    "fan-in": (fanin, "4 sender processes into one receiver"),
    "idle": (cpu, "CPU used by a receiver blocked with nothing arriving"),
    "senders": (senders, "cost per message with up to 1000 idle senders connected"),
    "futex": (futex, "futex hand-off vs raw futex(2)"),
    "handoff": (handoff, "handing a large buffer over: a handle vs a copy"),
}

DESCRIPTION = """\
Measure redstone-ipc between real processes, next to a raw socketpair (the
least the kernel can do) and the other IPC libraries installed here, all in
the same run.

Each measurement runs in fresh processes, in each placement: both processes
on one CPU, on two CPUs, and unpinned. Variants take turns within each run,
so a busy machine slows them alike; each figure is the median of the runs,
and each ratio is the median of the per-run ratios to the baseline.

Other libraries are optional: pip install 'redstone-ipc[bench]' installs
pyzmq, posix_ipc, faster-fifo and iceoryx2; those missing are skipped, with
a line saying why. --plot needs matplotlib: pip install 'redstone-ipc[plot]'.
"""

EPILOG = "benchmarks (for --only):\n" + "\n".join(
    f"  {k:<11} {v[1]}" for k, v in BENCHMARKS.items())


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="fewer and shorter runs (about two minutes)")
    size.add_argument("--smoke", action="store_true",
                      help="tiny runs that only show the suite works (for tests; "
                           "the figures mean little)")
    p.add_argument("--json", metavar="FILE", help="also write every figure and ratio to FILE as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the ratios as a bar chart (needs matplotlib)")
    p.add_argument("--placement", metavar="NAME", action="append",
                   help=f"measure only there: {', '.join(PLACEMENT_NAMES)} "
                        "(repeat, or separate with commas; default: all)")
    p.add_argument("--only", metavar="NAME", action="append",
                   help="run only these benchmarks (repeat, or separate with commas; default: all)")
    p.add_argument("--runs", metavar="N", type=int,
                   help="runs of each measurement (default: 5, --quick 3)")
    return p


def _names(values: list[str] | None, allowed: Sequence[str], what: str) -> list[str]:
    if not values:
        return list(allowed)
    chosen = []
    for value in values:
        for name in filter(None, (v.strip() for v in value.split(","))):
            if name not in allowed:
                raise UsageError(f"unknown {what} {name!r} (choose from {', '.join(allowed)})")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise UsageError(f"no {what} given")
    return chosen


def _check_output(path: str, option: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: cannot write in {folder}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; the exit status (see the module docstring)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = _parser().parse_args(args_list)
        except SystemExit as done:  # --help printed its text
            return done.code if isinstance(done.code, int) else 0
        if args.runs is not None and args.runs < 1:
            raise UsageError(f"--runs must be at least 1, not {args.runs}")
        if args.json:
            _check_output(args.json, "--json")
        if args.plot:
            if not args.plot.lower().endswith(".png"):
                raise UsageError(f"--plot {args.plot}: the file name must end in .png")
            _check_output(args.plot, "--plot")
            if importlib.util.find_spec("matplotlib") is None:
                raise UsageError("--plot needs matplotlib, which is not installed "
                                 "(pip install 'redstone-ipc[plot]')")
        wanted_places = _names(args.placement, PLACEMENT_NAMES, "placement")
        wanted = _names(args.only, list(BENCHMARKS), "benchmark")
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    profile = "quick" if args.quick else "smoke" if args.smoke else "full"
    settings = Settings.for_profile(profile)
    if args.runs is not None:
        settings.runs = args.runs
    return _run(settings, wanted, wanted_places, args, args_list, sys.stdout, sys.stderr)


def _run(settings: Settings, wanted: list[str], wanted_places: list[str], args: Any,
         argv: list[str], out: TextIO, err: TextIO) -> int:
    started = time.monotonic()
    found, missing = placements()
    chosen = [found[p] for p in wanted_places if p in found]
    skipped_places = {p: missing[p] for p in wanted_places if p in missing}
    machine = machine_info()
    print(f"redstone-ipc {machine['redstone_ipc']} benchmarks: {machine['kernel']} "
          f"{machine['machine']}, {machine['cpus_allowed']} CPUs, {machine['python']}", file=out)
    runs = f"{settings.runs} run{'s' if settings.runs != 1 else ''}"
    print(f"Profile: {settings.profile} ({runs} of each measurement"
          f"{'; the figures mean little' if settings.profile == 'smoke' else ''}).", file=out)
    print("Placements: " + "; ".join(_place_text(p) for p in chosen) + ".", file=out)
    for name, why in skipped_places.items():
        print(f"Skipped placement {name}: {why}.", file=out)
    print("How to read the tables: a row per variant, a column pair per placement: the "
          "median of the runs and\nits ratio to the row marked (baseline), taken in the "
          "same runs. Each table says whether lower\nor higher is better.", file=out)
    if not chosen:
        print(f"{PROG}: error: none of the placements asked for can run here", file=err)
        return 2

    available: dict[str, str | None] = {}
    if {"roundtrip", "throughput"} & set(wanted):
        print("Checking which other libraries are installed...", file=err, flush=True)
        available = peers.check()
        _print_peers(available, out)
    out.flush()

    plans: list[tuple[str, list[Figure], list[Job]]] = []
    for name in wanted:
        module = BENCHMARKS[name][0]
        figures: list[Figure]
        jobs: list[Job]
        figures, jobs = module.plan(settings, chosen, available)
        plans.append((name, figures, jobs))
    subreaper = become_subreaper()
    total = sum(len(jobs) for _, _, jobs in plans)
    results = Results()
    progress = Progress(total, err)
    interrupted = False
    all_figures: list[Figure] = []
    current: list[Figure] = []
    try:
        for name, figures, jobs in plans:
            all_figures += figures
            current = figures
            for job in jobs:
                progress.step(name, job.label)
                _execute(job, results, progress)
                if subreaper:
                    reap_orphans()
                progress.advance()
            progress.clear()
            print_tables(figures, results, out)
            out.flush()
    except KeyboardInterrupt:
        interrupted = True
        progress.note("Interrupted: the figures measured so far follow.")
        print_tables(current, results, out)
    progress.finish()
    if subreaper:
        reap_orphans()
        become_subreaper(False)

    elapsed = time.monotonic() - started
    status = 130 if interrupted else (1 if results.any_failed() else 0)
    if results.any_failed() and not interrupted:
        print("\nSome measurements failed: the tables above say which and why.", file=out)
    meta = {
        "created": now_iso(),
        "command": [PROG, *argv],
        "profile": settings.profile,
        "settings": _settings_json(settings),
        "machine": machine,
        "placements": {p.name: _place_text(p) for p in chosen},
        "placements_skipped": skipped_places,
        "peers": _peers_json(available),
        "elapsed_seconds": round(elapsed, 1),
        "interrupted": interrupted,
        "exit_status": status,
    }
    if args.json:
        try:
            write_json(args.json, to_json(all_figures, results, meta))
            print(f"Wrote {args.json}.", file=out)
        except OSError as exc:
            print(f"{PROG}: could not write {args.json}: {exc.strerror or exc}", file=err)
            status = status or 1
    if args.plot:
        try:
            title = (f"redstone-ipc {machine['redstone_ipc']}: ratios to the baseline, "
                     f"{machine['cpus_allowed']} CPUs, {machine['kernel']}, {now_iso()[:10]}")
            panels = write_plot(args.plot, all_figures, results, title)
            if panels:
                print(f"Wrote {args.plot} ({panels} charts).", file=out)
            else:
                print(f"No ratio was measured: {args.plot} not written.", file=out)
        except Exception as exc:  # matplotlib's own failures: say so, keep the rest
            print(f"{PROG}: could not draw {args.plot}: {exc}", file=err)
            status = status or 1
    out.flush()
    return status


def _execute(job: Job, results: Results, progress: Progress) -> None:
    place = job.placement.name
    try:
        found = run_isolated(job.run, job.timeout)
    except MeasurementFailed as exc:
        for fig, variant in job.produces:
            results.fail(fig, place, variant, str(exc))
        progress.note(f"  failed: {job.label}: {exc}")
        return
    for fig, variant, value in found:
        if isinstance(value, str):
            results.fail(fig, place, variant, value)
            progress.note(f"  failed: {job.label}, {variant}: {value}")
        else:
            results.add(fig, place, variant, job.run_index, value)


def _place_text(p: Any) -> str:
    if p.name == "one-cpu":
        return f"one CPU (both processes on CPU {min(p.home)})"
    if p.name == "two-cpus":
        return f"two CPUs (CPU {min(p.home)} and CPU {min(p.away)})"
    return "unpinned (where the scheduler puts them)"


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for package in peers.PEERS:
        if package == "multiprocessing":
            found[package] = "standard library"
            continue
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def _print_peers(available: dict[str, str | None], out: TextIO) -> None:
    versions = _versions()
    ok = [f"{p} ({versions.get(p) or '?'})" for p, why in available.items() if why is None]
    print("Other libraries measured: " + (", ".join(ok) if ok else "none") + ".", file=out)
    for p, why in available.items():
        if why is not None:
            print(f"Skipped {p}: {why}.", file=out)


def _peers_json(available: dict[str, str | None]) -> dict[str, Any]:
    versions = _versions()
    return {p: {"version": versions.get(p), "skipped": why} for p, why in available.items()}


def _settings_json(settings: Settings) -> dict[str, Any]:
    data = dict(vars(settings))
    data["tput_counts"] = {str(k): v for k, v in settings.tput_counts.items()}
    data["sender_levels"] = list(settings.sender_levels)
    data["handoff_mib"] = list(settings.handoff_mib)
    return data


if __name__ == "__main__":
    sys.exit(main())
