"""``redstone-ipc bench`` (redstone_ipc.benchmarks): the suite runs end to end,
prints a table per benchmark, writes JSON holding the ratios, and answers
usage errors with one line. Timings are never asserted: only that the
figures exist and are shaped right."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from redstone_ipc.benchmarks import cli, peers
from redstone_ipc.benchmarks.model import Figure, Results, Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every figure the suite produces, by id.
EXPECTED = {
    "roundtrip", "cpu-per-message", "throughput-32B", "throughput-4KiB", "throughput-64KiB",
    "throughput-1MiB", "fan-in", "idle", "senders-roundtrip", "senders-throughput",
    "senders-fds", "futex",
}


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_a_run_prints_tables_and_writes_json(tmp_path, profile):
    # The command as a user runs it (python -m redstone_ipc bench), every
    # benchmark in every placement: with tiny counts (--smoke, and a plot),
    # and as `bench --quick --json` (about a minute here).
    out_json = tmp_path / "out.json"
    out_png = tmp_path / "out.png"
    plot = ["--plot", str(out_png)] if _has_matplotlib() and profile == "smoke" else []
    proc = subprocess.run(
        [sys.executable, "-m", "redstone_ipc", "bench", f"--{profile}", "--json", str(out_json), *plot],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=580,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    # 1: some measurement failed; the tables say so (the suite itself worked).
    assert proc.returncode in (0, 1), proc.stderr
    if proc.returncode == 1:
        assert "Some measurements failed" in proc.stdout
    assert "measurements in" in proc.stderr  # plain progress lines: stderr is not a terminal

    data = json.loads(out_json.read_text())
    assert data["format"] == "redstone-ipc-bench/1"
    assert data["profile"] == profile
    machine = data["machine"]
    assert machine["cpus"] >= 1 and machine["kernel"].startswith("Linux") and machine["python"]
    benchmarks = data["benchmarks"]
    assert EXPECTED <= set(benchmarks), sorted(EXPECTED - set(benchmarks))
    handoffs = [k for k in benchmarks if k.startswith("handoff-")]
    assert handoffs

    for fig_id, fig in benchmarks.items():
        assert fig["title"] in proc.stdout, f"{fig_id}: no table printed"
        assert fig["unit"] and fig["better"] in ("lower", "higher")
        assert fig["results"], fig_id
        for placement, variants in fig["results"].items():
            assert placement in data["placements"]
            for name, v in variants.items():
                assert v["unit"] == fig["unit"] and v["baseline"] == fig["baseline"]
                assert isinstance(v["failed_runs"], list)
                if v["median"] is None:  # every run failed: the reason is there
                    assert v["failed_runs"], (fig_id, placement, name)
                    continue
                assert math.isfinite(v["median"]) and v["median"] >= 0
                assert len(v["runs"]) >= 1
                if fig["baseline"] is None:
                    assert v["ratio"] is None
                elif name == fig["baseline"]:
                    assert v["ratio"] == pytest.approx(1.0)
        if fig["baseline"] is not None:
            ratios = [v["ratio"] for vs in fig["results"].values() for n, v in vs.items()
                      if n != fig["baseline"] and v["ratio"] is not None]
            assert ratios, f"{fig_id}: no ratio measured"
            assert all(r > 0 and math.isfinite(r) for r in ratios)

    if plot:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"Wrote {out_png} (" in proc.stdout

    # What the benchmarks promise: every placement; the round trips and the CPU
    # per message against raw sockets; throughput with a loan from 64 KiB;
    # fan-in of 4 senders against a shared socketpair; the idle receiver.
    places = {"one-cpu", "unpinned"} | ({"two-cpus"} if len(os.sched_getaffinity(0)) > 1 else set())
    assert set(data["placements"]) == places
    for fig_id in ("roundtrip", "cpu-per-message", "throughput-32B", "throughput-1MiB", "fan-in"):
        assert set(benchmarks[fig_id]["results"]) == places, fig_id
        for variants in benchmarks[fig_id]["results"].values():
            assert variants[benchmarks[fig_id]["baseline"]]["kind"] == "baseline"
    for size in ("64KiB", "1MiB"):
        for variants in benchmarks[f"throughput-{size}"]["results"].values():
            assert {"redstone Channel + loan", "redstone Port + loan"} <= set(variants)
    for variants in benchmarks["fan-in"]["results"].values():
        assert {"raw socketpair shared by the senders", "redstone Port"} <= set(variants)
    for variants in benchmarks["idle"]["results"].values():
        assert {"redstone Channel", "redstone Port"} <= set(variants)
    # Our variants and the raw baseline are in the round trips, in every placement.
    for variants in benchmarks["roundtrip"]["results"].values():
        assert {"raw socketpair", "redstone Channel", "redstone Port pair"} <= set(variants)
    # Each peer was measured or skipped with a line saying why.
    for package, info in data["peers"].items():
        if info["skipped"]:
            assert f"Skipped {package}: " in proc.stdout
        else:
            assert package in proc.stdout


@pytest.mark.parametrize("argv, says", [
    (["--bogus"], "unrecognized arguments"),
    (["--placement", "moon"], "unknown placement 'moon'"),
    (["--only", "roundtrip,nothing"], "unknown benchmark 'nothing'"),
    (["--quick", "--smoke"], "not allowed with"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--json", "/nonexistent-folder/out.json"], "does not exist"),
    (["--plot", "chart.svg"], "must end in .png"),
])
def test_usage_error_is_one_line_and_status_2(argv, says, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], captured.err
    assert lines[0].startswith("redstone-ipc bench: ")
    assert captured.out == ""


@pytest.mark.timeout(120)
def test_one_placement_and_one_benchmark(tmp_path):
    out_json = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "redstone_ipc", "bench", "--smoke", "--placement", "one-cpu",
         "--only", "fan-in,idle", "--json", str(out_json)],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(out_json.read_text())
    assert list(data["placements"]) == ["one-cpu"]
    assert set(data["benchmarks"]) == {"fan-in", "idle"}
    assert list(data["benchmarks"]["fan-in"]["results"]) == ["one-cpu"]
    assert "Other libraries" not in proc.stdout  # no peer takes part in these two


def test_a_mistake_through_the_redstone_ipc_command(capsys):
    from redstone_ipc import cli as top

    assert top.main(["bench", "--only", "nothing"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("redstone-ipc bench: unknown benchmark 'nothing' (choose from "
                            + ", ".join(cli.BENCHMARKS) + ")\n")


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--json", "--plot", "--placement", "--only"):
        assert option in out
    for name in cli.BENCHMARKS:
        assert name in out


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, capsys, tmp_path):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["--plot", str(tmp_path / "x.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_a_missing_peer_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(peers, "PEERS", {"no-such-peer": "no_such_module_for_redstone_bench"})
    found = peers.check(timeout=30)
    assert found["no-such-peer"].startswith("not installed")


def test_ratio_is_the_median_of_same_run_ratios():
    fig = Figure("f", "t", "µs", "lower", "base", "", ("one-cpu",))
    fig.variant("base", "baseline")
    fig.variant("ours", "ours")
    r = Results()
    for run, (base, ours) in enumerate([(10.0, 5.0), (20.0, 8.0), (40.0, 40.0)]):
        r.add("f", "one-cpu", "base", run, base)
        r.add("f", "one-cpu", "ours", run, ours)
    r.fail("f", "one-cpu", "ours", "did not finish")
    s = r.summary(fig, "one-cpu", "ours")
    assert s is not None
    assert s.median == 8.0 and s.runs == [5.0, 8.0, 40.0]
    assert s.ratio == pytest.approx(0.5)  # median of 0.5, 0.4, 1.0
    assert r.failed("f", "one-cpu", "ours") == ["did not finish"]
    assert r.any_failed()


def test_plot_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    from redstone_ipc.benchmarks.report import write_plot

    fig = Figure("f", "A title", "µs", "lower", "base", "", ("one-cpu", "unpinned"))
    fig.variant("base", "baseline")
    fig.variant("ours", "ours")
    r = Results()
    for place in fig.placements:
        r.add("f", place, "base", 0, 10.0)
        r.add("f", place, "ours", 0, 4.0)
    path = tmp_path / "chart.png"
    assert write_plot(str(path), [fig], r, "title") == 1
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profiles_shrink():
    full, quick, smoke = (Settings.for_profile(p) for p in ("full", "quick", "smoke"))
    assert full.runs > quick.runs >= smoke.runs
    assert max(full.sender_levels) == 1000 and max(quick.sender_levels) == 1000
    assert all(smoke.tput_counts[k] < quick.tput_counts[k] < full.tput_counts[k] for k in full.tput_counts)
