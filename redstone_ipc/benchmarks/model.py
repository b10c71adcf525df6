"""What a benchmark is, how much of it to run, and what it found.

* :class:`Settings`: how many runs and messages (``--quick`` and ``--smoke``
  shrink them), which placements and benchmarks;
* :class:`Figure`: one table of the report (a benchmark, or one size of
  it): its unit, whether lower or higher is better, and its baseline;
* :class:`Job`: one measurement, run in a process of its own; it returns
  ``(figure id, variant, value)`` triples, often for one variant, sometimes
  for several (a job may feed two figures);
* :class:`Results`: every value by figure, placement, variant and run, and
  the summaries: the median of the runs, and the ratio to the baseline —
  the median, over runs, of the value divided by the baseline's value *of
  the same run* (the variants of one run are measured back to back, so
  machine noise mostly cancels out in the ratio).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from .harness import Placement

__all__ = ["Settings", "Figure", "Job", "Found", "Results", "Summary", "OURS", "BASELINE", "PEER", "INFO"]

OURS, BASELINE, PEER, INFO = "ours", "baseline", "peer", "info"
"""Kinds of variant: this library, what ratios are taken against, another
library measured for comparison, or a row that is neither (a count)."""

KiB, MiB = 1 << 10, 1 << 20

Found = list[tuple[str, str, "float | str"]]
"""What a job returns: (figure id, variant, value); a str value says why
that variant failed."""


@dataclass
class Settings:
    """How much to run. ``profile`` is ``full`` (the default), ``quick`` or ``smoke``."""

    profile: str = "full"
    runs: int = 5
    rt_rounds: int = 5000  # round trips per run
    tput_counts: dict[int, int] = field(default_factory=lambda: {
        32: 60_000, 4 * KiB: 20_000, 64 * KiB: 4_000, MiB: 400})
    fanin_messages: int = 80_000  # in all, across the senders
    fanin_senders: int = 4
    idle_seconds: float = 2.0
    idle_runs: int = 3
    sender_levels: tuple[int, ...] = (0, 10, 100, 1000)
    sender_runs: int = 3
    sender_rounds: int = 1000  # round trips per level
    sender_messages: int = 10_000  # one-way messages per level
    futex_rounds: int = 10_000
    handoff_mib: tuple[int, ...] = (64, 256)
    handoff_repeat: int = 5
    timeout: float = 60.0  # seconds, for one measurement (more for the long ones)

    @classmethod
    def for_profile(cls, profile: str) -> Settings:
        if profile == "full":
            return cls()
        if profile == "quick":
            return cls(
                profile="quick", runs=3, rt_rounds=2000,
                tput_counts={32: 20_000, 4 * KiB: 8_000, 64 * KiB: 1_500, MiB: 150},
                fanin_messages=24_000, idle_seconds=2.0, idle_runs=1,
                sender_levels=(0, 1000), sender_runs=1, sender_rounds=1000,
                sender_messages=8000, futex_rounds=3000, handoff_mib=(64,),
                handoff_repeat=3, timeout=45.0,
            )
        if profile == "smoke":  # for tests: every code path, figures of little meaning
            return cls(
                profile="smoke", runs=1, rt_rounds=100,
                tput_counts={32: 500, 4 * KiB: 300, 64 * KiB: 60, MiB: 12},
                fanin_messages=800, idle_seconds=0.3, idle_runs=1,
                sender_levels=(0, 20), sender_runs=1, sender_rounds=100,
                sender_messages=300, futex_rounds=200, handoff_mib=(4,),
                handoff_repeat=1, timeout=30.0,
            )
        raise ValueError(f"unknown profile {profile!r}")


@dataclass
class Figure:
    """One table of the report."""

    id: str
    title: str  # what was measured, for a user
    unit: str  # of the values, as printed: "µs", "msg/s", "ms", "fds"
    better: str  # "lower" or "higher"
    baseline: str | None  # the variant ratios are taken against
    explain: str  # how to read it (a few sentences)
    placements: tuple[str, ...]  # where it is measured
    kinds: dict[str, str] = field(default_factory=dict)  # variant -> OURS/BASELINE/PEER/INFO
    notes: list[str] = field(default_factory=list)  # printed under the table

    def variant(self, name: str, kind: str) -> str:
        self.kinds.setdefault(name, kind)
        return name

    @property
    def variants(self) -> list[str]:
        return list(self.kinds)


@dataclass
class Job:
    """One measurement. ``run`` executes in a process of its own."""

    label: str  # for the progress line
    placement: Placement
    run_index: int
    run: Callable[[], Found]
    produces: list[tuple[str, str]]  # (figure id, variant): marked failed if the job fails
    timeout: float


@dataclass
class Summary:
    median: float
    runs: list[float]
    ratio: float | None  # median of per-run ratios to the baseline
    ratio_runs: int  # runs the ratio is taken over


class Results:
    """Every value measured, and the failures, by figure / placement / variant."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
        self.failures: dict[str, dict[str, dict[str, list[str]]]] = {}

    def add(self, figure: str, placement: str, variant: str, run: int, value: float) -> None:
        self.values.setdefault(figure, {}).setdefault(placement, {}).setdefault(variant, {})[run] = value

    def fail(self, figure: str, placement: str, variant: str, reason: str) -> None:
        self.failures.setdefault(figure, {}).setdefault(placement, {}).setdefault(variant, []).append(reason)

    def failed(self, figure: str, placement: str, variant: str) -> list[str]:
        """Why runs of this variant failed (one reason per failed run)."""
        return self.failures.get(figure, {}).get(placement, {}).get(variant, [])

    def any_failed(self) -> bool:
        return any(v for f in self.failures.values() for p in f.values() for v in p.values())

    def summary(self, fig: Figure, placement: str, variant: str) -> Summary | None:
        runs = self.values.get(fig.id, {}).get(placement, {}).get(variant)
        if not runs:
            return None
        ratio = None
        paired = 0
        if fig.baseline is not None:
            base = self.values.get(fig.id, {}).get(placement, {}).get(fig.baseline, {})
            ratios = [v / base[r] for r, v in runs.items() if r in base and base[r] > 0]
            if ratios:
                ratio = statistics.median(ratios)
                paired = len(ratios)
        ordered = [runs[r] for r in sorted(runs)]
        return Summary(statistics.median(ordered), ordered, ratio, paired)
