"""The report: tables for a person, JSON for a program, a bar chart of the ratios.

Every figure is the median of its runs; every ratio is the median, over the
runs, of the figure divided by the baseline's figure *in the same run*.
"""

from __future__ import annotations

import json
import math
import os
import platform
import textwrap
import time
from typing import Any, TextIO

from .harness import PLACEMENT_TITLES
from .model import BASELINE, INFO, OURS, PEER, Figure, Results

__all__ = ["machine_info", "print_tables", "to_json", "write_plot", "format_value"]

JSON_FORMAT = "redstone-ipc-bench/1"
WIDTH = 100


def machine_info() -> dict[str, Any]:
    from .. import __version__

    uname = os.uname()
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpus": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "kernel": f"{uname.sysname} {uname.release}",
        "machine": uname.machine,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redstone_ipc": __version__,
        "load_average": load,
    }


def format_value(value: float, unit: str) -> str:
    if unit == "msg/s":
        for scale, suffix in ((1e6, " M"), (1e3, " k")):
            if value >= scale:
                return f"{_sig(value / scale)}{suffix}"
        return _sig(value)
    if unit == "fds":
        return f"{value:.1f}"
    return _sig(value)


def _sig(x: float) -> str:
    """Three significant digits, no exponent."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{digits}f}"


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio >= 100:
        return f"{ratio:.0f}x"
    if ratio >= 0.01:
        return f"{ratio:.2f}x"
    return f"{ratio:.2g}x"  # 0.0033x, not 0.00x


def _unit_text(fig: Figure) -> str:
    return fig.unit.replace("msg/s", "messages/s")


def print_tables(figures: list[Figure], results: Results, out: TextIO) -> None:
    for fig in figures:
        if not any(results.values.get(fig.id, {}).get(p) or results.failures.get(fig.id, {}).get(p)
                   for p in fig.placements):
            continue
        _print_table(fig, results, out)


def _print_table(fig: Figure, results: Results, out: TextIO) -> None:
    better = "lower is better" if fig.better == "lower" else "higher is better"
    print(f"\n== {fig.title} ({_unit_text(fig)}, {better})", file=out)
    for line in textwrap.wrap(fig.explain, WIDTH - 3):
        print(f"   {line}", file=out)
    names = fig.variants
    name_w = max(len(_label(fig, n)) for n in names) + 2
    has_ratio = fig.baseline is not None
    col_v, col_r = 10, 9 if has_ratio else 0
    places = list(fig.placements)
    header = " " * (name_w + 2)
    sub = " " * (name_w + 2)
    for p in places:
        header += f"{PLACEMENT_TITLES[p]:>{col_v}}" + (" " * col_r)
        sub += f"{fig.unit:>{col_v}}" + (f"{'ratio':>{col_r}}" if has_ratio else "")
    print(file=out)
    print(header.rstrip(), file=out)
    print(sub.rstrip(), file=out)
    notes: list[str] = []
    most_runs = 0
    for name in names:
        row = f"  {_label(fig, name):<{name_w}}"
        for p in places:
            s = results.summary(fig, p, name)
            failed = results.failed(fig.id, p, name)
            if s is None:
                cell, ratio = ("failed" if failed else "-"), ""
            else:
                cell = format_value(s.median, fig.unit) + ("*" if failed else "")
                ratio = _ratio_text(s.ratio) if name != fig.baseline else ("1" if s.ratio else "")
            row += f"{cell:>{col_v}}" + (f"{ratio:>{col_r}}" if has_ratio else "")
            runs = len(failed) + (len(s.runs) if s else 0)
            most_runs = max(most_runs, runs)
            if failed:
                reasons = sorted(set(failed))
                notes.append(f"{name}, {PLACEMENT_TITLES[p]}: {len(failed)} of {runs} runs "
                             f"failed: {'; '.join(reasons)}")
        print(row.rstrip(), file=out)
    foot = []
    if has_ratio:
        foot.append("ratio: the figure divided by the baseline's in the same run")
    foot.append(f"median of {most_runs} runs" if most_runs > 1 else "one run")
    print("   " + "; ".join(foot) + ".", file=out)
    for note in fig.notes + notes:
        for i, line in enumerate(textwrap.wrap(note, WIDTH - 5)):
            print(("   * " if i == 0 else "     ") + line, file=out)


def _label(fig: Figure, name: str) -> str:
    kind = fig.kinds.get(name)
    if kind == BASELINE and fig.baseline == name:
        return f"{name} (baseline)"
    return name


def to_json(figures: list[Figure], results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    benchmarks: dict[str, Any] = {}
    for fig in figures:
        per_place: dict[str, Any] = {}
        for p in fig.placements:
            variants: dict[str, Any] = {}
            for name in fig.variants:
                s = results.summary(fig, p, name)
                failed = results.failed(fig.id, p, name)
                if s is None and not failed:
                    continue
                variants[name] = {
                    "kind": fig.kinds[name],
                    "median": s.median if s else None,
                    "runs": s.runs if s else [],
                    "unit": fig.unit,
                    "baseline": fig.baseline,
                    "ratio": s.ratio if s else None,
                    "failed_runs": failed,
                }
            if variants:
                per_place[p] = variants
        if per_place:
            benchmarks[fig.id] = {
                "title": fig.title,
                "unit": fig.unit,
                "better": fig.better,
                "baseline": fig.baseline,
                "explain": fig.explain,
                "notes": fig.notes,
                "results": per_place,
            }
    return {"format": JSON_FORMAT, **meta, "benchmarks": benchmarks}


def write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def write_plot(path: str, figures: list[Figure], results: Results, title: str) -> int:
    """A bar chart of the ratios: one panel per benchmark with a baseline, a bar
    per variant and placement. Returns the number of panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    panels = []
    for fig in figures:
        if fig.baseline is None:
            continue
        rows = []
        for name in fig.variants:
            if name == fig.baseline or fig.kinds.get(name) == INFO:
                continue
            ratios = {}
            for p in fig.placements:
                s = results.summary(fig, p, name)
                if s is not None and s.ratio is not None:
                    ratios[p] = s.ratio
            if ratios:
                rows.append((name, ratios))
        if rows:
            panels.append((fig, rows))
    if not panels:
        return 0
    cols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + cols - 1) // cols
    chart, axes = plt.subplots(nrows, cols, figsize=(8 * cols, 3.6 * nrows), squeeze=False)
    colors = {"one-cpu": "#4477aa", "two-cpus": "#ee6677", "unpinned": "#228833"}
    for ax, (fig, rows) in zip(axes.flat, panels):
        places = [p for p in fig.placements if any(p in r for _, r in rows)]
        width = 0.8 / max(1, len(places))
        for i, p in enumerate(places):
            xs = [j + (i - (len(places) - 1) / 2) * width for j in range(len(rows))]
            ys = [r.get(p, float("nan")) for _, r in rows]
            # Bars grow from 1 (the baseline): up when above it, down when below.
            ax.bar(xs, [y - 1 for y in ys], width, bottom=1, label=PLACEMENT_TITLES[p],
                   color=colors.get(p))
            for x, y in zip(xs, ys):
                if math.isfinite(y):
                    ax.text(x, y * (1.06 if y >= 1 else 0.94), f"{y:.2g}", ha="center",
                            va="bottom" if y >= 1 else "top", fontsize=5)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ratio (log scale)", fontsize=7)
        low = min(y for _, r in rows for y in r.values())
        high = max(y for _, r in rows for y in r.values())
        ax.set_ylim(min(low, 1.0) / 1.6, max(high, 1.0) * 1.6)  # room for the labels
        ax.set_xlim(-0.6, max(len(rows), 3) - 0.4)  # a lone variant gets a bar, not the panel
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([_short(n) for n, _ in rows], rotation=20, ha="right", fontsize=7)
        direction = "lower" if fig.better == "lower" else "higher"
        ax.set_title(f"{fig.title}\nratio to {fig.baseline} ({direction} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    chart.suptitle(title, fontsize=10)
    chart.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * nrows)))
    chart.savefig(path, dpi=110)
    plt.close(chart)
    return len(panels)


def _short(name: str) -> str:
    return name.replace("redstone ", "").replace("multiprocessing ", "mp ")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


KINDS = (OURS, BASELINE, PEER, INFO)
"""The kinds of variant, as the JSON names them."""
