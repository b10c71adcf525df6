"""The ``redstone-ipc`` command: demo, ls, bench, help and user mistakes.

The demo and ``ls`` run end to end as a user runs them: separate programs
(``python -m redstone_ipc``, the console script), real app processes, real
signals. What they print is checked, down to numbers that must agree with
each other. Mistakes and ``--help`` go through ``main(argv)`` in-process.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator

import pytest

from redstone_ipc import cli

pytestmark = pytest.mark.timeout(90)

COMMAND = [sys.executable, "-m", "redstone_ipc"]
ROW = re.compile(  # a row of the demo's summary table
    r"^\s+(?P<app>\d+)\s+(?P<pid>\d+)\s+(?P<frames>\d+)\s+(?P<fps>[\d.]+)\s+"
    r"(?P<p50>\d+) µs\s+(?P<p99>\d+) µs\s+(?P<rpc>\d+ µs|-)\s+(?P<exit>\S+)$",
    re.M,
)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(COMMAND + list(args), capture_output=True, text=True, timeout=timeout)


# -- the demo -------------------------------------------------------------------------


def test_demo_quick_runs_end_to_end_and_reports_consistent_figures():
    result = run("demo", "--quick", "--seconds", "1.5")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert result.stderr == ""  # no warning, no traceback, no app complaining
    assert re.search(r"compositor pid \d+ publishes 'demo/compositor-\d+'; 2 apps, 320x240", out)
    assert re.search(r"app 0 +\d+ fps \| app 1 +\d+ fps \| hand-off p50 \d+ µs \| port \d+/\d+ queued", out)

    rows = {int(m["app"]): m for m in ROW.finditer(out)}
    assert sorted(rows) == [0, 1], out
    for m in rows.values():
        assert int(m["frames"]) >= 10 and float(m["fps"]) > 5, out
        assert int(m["p50"]) <= int(m["p99"])
        assert m["exit"] == "0"
        assert m["rpc"] != "-", "each app made RPC calls and reported their round trip"
    total = re.search(r"^\s+all\s+(\d+)\s+([\d.]+)", out, re.M)
    assert total and int(total[1]) == sum(int(m["frames"]) for m in rows.values())

    # Bytes moved: every frame read in place, plus the loans carrying the proofs.
    moved = int(re.search(r"bytes moved: .*\(([\d,]+) bytes", out)[1].replace(",", ""))
    pages = [int(p) for p in re.findall(r"app \d: the same region \(memfd inode\); (?:all )?(\d+) pages", out)]
    assert len(pages) == 2, out
    frames_seen = sum(int(m["frames"]) for m in rows.values())
    same_frames = "on the same physical frames" in out
    assert moved == frames_seen * 320 * 240 * 4 + (8 * sum(pages) if same_frames else 0)
    copied = int(re.search(r"bytes copied: .*\(([\d,]+) bytes", out)[1].replace(",", ""))
    assert 0 < copied < 100 * frames_seen, "only headers and notes are copied, never pixels"
    if os.geteuid() == 0:  # frame numbers need CAP_SYS_ADMIN
        assert out.count("all 225 pages on the same physical frames in both processes") == 2, out
    assert out.rstrip().endswith("demo OK")


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


class Demo:
    """A demo started in its own session (so that it has a process group of its own)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            COMMAND + ["demo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        self.seen = ""

    def wait_for(self, pattern: str, timeout: float = 30) -> None:
        """Read its output until ``pattern`` shows up."""
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {pattern!r} within {timeout} s:\n{self.seen}"
            chunk = os.read(fd, 65536).decode()
            assert chunk, f"the demo ended before {pattern!r}:\n{self.seen}"
            self.seen += chunk

    def apps(self, count: int) -> dict[int, int]:
        """pidfds of its app processes (pidfds survive pid reuse)."""
        pids = _children(self.proc.pid)
        assert len(pids) == count, pids
        return {pid: os.pidfd_open(pid) for pid in pids}

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        os.set_blocking(self.proc.stdout.fileno(), True)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.seen + out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def demo() -> Iterator[type[Demo]]:
    started: list[Demo] = []

    def start(*args: str) -> Demo:
        d = Demo(*args)
        started.append(d)
        return d

    yield start  # type: ignore[misc]
    for d in started:
        d.close()


def _ended(pidfd: int, timeout: float) -> bool:
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


@pytest.mark.parametrize("target", ["process group", "compositor"])
def test_ctrl_c_stops_every_process_cleanly(demo, target):
    d = demo("--quick", "--seconds", "60")
    d.wait_for(r"app 1 +\d+ fps")  # both apps attached and rendering
    apps = d.apps(2)
    try:
        if target == "process group":  # what a terminal's Ctrl-C does
            os.killpg(d.proc.pid, signal.SIGINT)
        else:
            d.proc.send_signal(signal.SIGINT)
        code, out, err = d.finish()
        assert code == 130, out + err
        assert err == "", "no traceback, no complaint from an app"
        assert "interrupted: stopping the apps" in out
        rows = {int(m["app"]): m for m in ROW.finditer(out)}
        assert sorted(rows) == [0, 1], out
        # Each app was stopped in order: it handed its buffers back and detached.
        assert all(m["exit"] == "0" for m in rows.values()), out
        assert out.rstrip().endswith("demo interrupted")
        for pid, pidfd in apps.items():
            assert _ended(pidfd, 0), f"app {pid} outlived the demo"
    finally:
        for pidfd in apps.values():
            os.close(pidfd)


def test_apps_exit_when_the_compositor_is_killed(demo):
    d = demo("--quick", "--seconds", "60")
    d.wait_for(r"app 1 +\d+ fps")
    apps = d.apps(2)
    try:
        d.proc.kill()  # no chance to stop anything: the apps notice the port closing
        d.proc.wait()
        for pid, pidfd in apps.items():
            assert _ended(pidfd, 10), f"app {pid} still runs 10 s after its compositor died"
    finally:
        for pid, pidfd in apps.items():
            if not _ended(pidfd, 0):
                os.kill(pid, signal.SIGKILL)
            os.close(pidfd)
    err = d.proc.stderr.read()
    assert "Traceback" not in err, err
    assert err.count("the compositor went away") == 2, err


# -- ls -------------------------------------------------------------------------------

PUBLISHER = """
    import os, sys
    from redstone_ipc import Pipe, Port, SharedMemory, publish

    port = Port(capacity=8)
    shm = SharedMemory.create(3 * 4096)
    view = shm.map()
    reader, writer = Pipe.create()
    writer.write(b"abc")
    with publish(sys.argv[1], port), publish(sys.argv[1] + "-shm", shm):
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes our stdin
    view.unmap()
"""

SENDER = """
    import sys
    from redstone_ipc import Message, Port, connect

    port = connect(sys.argv[1], kind=Port, timeout=10)
    for i in range(3):
        port.send(Message(1, b"queued"), timeout=10)
    print("sent", flush=True)
    sys.stdin.read()
"""


class Program:
    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid

    def line(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready, "the program said nothing within 30 s"
        return self.proc.stdout.readline().strip()

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not f.closed:
                f.close()


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    started: list[Program] = []
    yield started
    for p in started:
        p.close()


def test_ls_shows_a_publisher_its_depth_and_what_it_holds(programs):
    name = f"test/ls-{os.getpid()}"
    publisher = Program(PUBLISHER, name)
    programs.append(publisher)
    assert publisher.line() == "ready"
    sender = Program(SENDER, name)
    programs.append(sender)
    assert sender.line() == "sent"

    result = run("ls", "--json", f"test/ls-{os.getpid()}*")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    snap = json.loads(result.stdout)
    names = {n["name"]: n for n in snap["names"]}
    assert set(names) == {name, name + "-shm"}
    port = names[name]
    assert (port["pid"], port["uid"], port["kind"]) == (publisher.pid, os.geteuid(), "port")
    assert port["rights"] == "SEND|DUPLICATE|TRANSFER|WAIT"  # what clients get: no RECEIVE
    assert port["object"]["depth"] == 3 and port["object"]["capacity"] == 8
    assert port["object"]["senders"] == [sender.pid]
    assert port["granted"] == 1
    assert names[name + "-shm"]["kind"] == "shm" and names[name + "-shm"]["object"]["size"] == 3 * 4096

    regions = [r for r in snap["shm"] if r["size"] == 3 * 4096]
    assert len(regions) == 1 and regions[0]["held_by"] == [publisher.pid]
    assert regions[0]["mapped_by"] == [publisher.pid]
    queues = [q for q in snap["queues"] if q.get("name") == name]
    assert len(queues) == 1 and queues[0]["depth"] == 3
    pipes = [p for p in snap["pipes"] if p["pid"] == publisher.pid]
    assert sorted(p["kind"] for p in pipes) == ["pipe-reader", "pipe-writer"]
    assert [p["buffered"] for p in pipes if p["kind"] == "pipe-reader"] == [3]
    # Only the publisher: the pattern keeps the names' publishers.
    assert [p["pid"] for p in snap["processes"]] == [publisher.pid]

    table = run("ls", name).stdout  # the human form: the same facts in a row
    row = next(line for line in table.splitlines() if line.startswith(name + " "))
    assert row.split()[:7] == [name, str(publisher.pid), str(os.geteuid()), "port", "3", "8", "1"]
    assert f"({sender.pid})" in row

    assert sender.finish() == 0 and publisher.finish() == 0
    gone = run("ls", name)
    assert gone.returncode == 2 and gone.stdout == ""
    assert gone.stderr == f"redstone-ipc ls: no published name matches {name!r}\n"


# -- the command line ------------------------------------------------------------------


def test_the_console_script_and_python_m_run_the_command():
    script = os.path.join(os.path.dirname(sys.executable), "redstone-ipc")
    if not os.path.exists(script):
        pytest.skip("the package is not installed with its console script here")
    for argv in ([script, "--help"], COMMAND + ["--help"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stderr == ""
        assert result.stdout.startswith("usage: redstone-ipc ")
        for command in ("demo", "ls", "bench"):
            assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), result.stdout


@pytest.mark.parametrize("command", ["demo", "ls"])
def test_every_command_has_help(command, capsys, no_fd_leak):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: redstone-ipc {command} ")
    assert "--json" in out if command == "ls" else "--seconds" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "redstone-ipc: a command is needed"),
        (["frobnicate"], "redstone-ipc: argument COMMAND: invalid choice: 'frobnicate'"),
        (["demo", "--apps", "0"], "redstone-ipc demo: --apps takes 1 to 32, not 0"),
        (["demo", "--apps", "two"], "redstone-ipc demo: argument --apps: invalid int value: 'two'"),
        (["demo", "--size", "big"], "redstone-ipc demo: --size takes WIDTHxHEIGHT"),
        (["demo", "--seconds", "-1"], "redstone-ipc demo: --seconds takes a duration above 0"),
        (["demo", "--name", "../x"], "redstone-ipc demo: --name: bad name"),
        (["demo", "--frobnicate"], "redstone-ipc demo: unrecognized arguments: --frobnicate"),
        (["ls", "--frobnicate"], "redstone-ipc ls: unrecognized arguments: --frobnicate"),
        (["ls", "no/such-name-anywhere"], "redstone-ipc ls: no published name matches"),
    ],
)
def test_a_mistake_is_one_line_on_stderr_and_status_2(argv, message, capsys, no_fd_leak):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_a_name_in_use_is_a_mistake_too(capsys, no_fd_leak):
    from redstone_ipc import SharedMemory, publish

    name = f"test/in-use-{os.getpid()}"
    with SharedMemory.create(4096) as shm, publish(name, shm):
        assert cli.main(["demo", "--quick", "--name", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"redstone-ipc demo: --name: name {name!r} is already published")
    assert captured.err.count("\n") == 1


def test_bench_without_the_benchmarks_says_so(monkeypatch, capsys):
    monkeypatch.setattr(cli, "BENCH_MODULE", "redstone_ipc.no_benchmarks_here.cli")
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "redstone-ipc bench: this installation has no benchmarks yet "
        "(redstone_ipc.no_benchmarks_here.cli is missing)\n"
    )


def test_bench_passes_every_argument_to_the_benchmarks(monkeypatch):
    seen = []
    fake = types.ModuleType("fake_bench_cli")
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench_cli", fake)
    monkeypatch.setattr(cli, "BENCH_MODULE", "fake_bench_cli")
    assert cli.main(["bench", "--help", "--quick", "port"]) == 7
    assert seen == [["--help", "--quick", "port"]]
