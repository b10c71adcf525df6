"""The README's section on the ``redstone-ipc`` command runs as written.

Every line of its ``sh`` block is a command a reader may paste: each one runs
here (as ``python -m redstone_ipc``, the same command) and must succeed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## The `redstone-ipc` command\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_section_shows_the_commands():
    assert [c.split()[:2] for c in commands()] == [
        ["redstone-ipc", "demo"], ["redstone-ipc", "demo"], ["redstone-ipc", "ls"], ["redstone-ipc", "ls"],
    ]


@pytest.mark.parametrize("command", commands())
def test_each_command_runs_as_written(command):
    argv = shlex.split(command)
    assert argv[0] == "redstone-ipc"
    result = subprocess.run(
        [sys.executable, "-m", "redstone_ipc", *argv[1:]], capture_output=True, text=True, timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
