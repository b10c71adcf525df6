"""The install ``make demo`` does: quiet, and a plain path entry.

A fresh virtualenv gets the editable install exactly as the Makefile makes
it. Nothing our packaging says may be a warning (a deprecated editable mode,
a license table, ...), and the result must be one static ``.pth`` line
naming the repository: setuptools' other editable form, an import hook, is
invisible to type checkers (tests/test_typing.py).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a warning from the build backend looks like (setuptools prints its
# deprecations in a banner with the warning's class name).
WARNING = re.compile(r"Warning\b|deprecat|transitional", re.IGNORECASE)


def _make_install_command() -> list[str]:
    """The Makefile's INSTALL line, as arguments after the interpreter."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        for line in f:
            if line.startswith("INSTALL := $(PY) "):
                return line.split(":=", 1)[1].split()[1:]
    raise AssertionError("the Makefile has no INSTALL line")


@pytest.mark.timeout(300)
def test_the_editable_install_is_quiet_and_a_plain_path_entry(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # As the Makefile does: a current pip shows what the build backend says.
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"],
                   check=True, capture_output=True, timeout=240)
    proc = subprocess.run(
        [python, *_make_install_command(), ROOT, "--no-deps"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # (this machine's pip configuration may warn about its own index
    # locations: those lines are pip's, not our packaging's)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines()
            if WARNING.search(line) and "is ignored: it is neither a file nor a directory" not in line]
    assert not ours, "\n".join(ours)

    pth = glob.glob(str(venv / "lib" / "python*" / "site-packages" / "__editable__*redstone*.pth"))
    assert len(pth) == 1, pth
    with open(pth[0]) as f:
        assert f.read().split() == [ROOT], "not a plain path line (an import hook?)"
    found = subprocess.run(
        [python, "-c", "import redstone_ipc; print(redstone_ipc.__file__)"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert found.stdout.strip() == os.path.join(ROOT, "redstone_ipc", "__init__.py"), found.stderr
