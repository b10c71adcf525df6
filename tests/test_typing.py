"""Types that check, for a user of the installed package.

``tests/typing/tour.py`` makes every public call of the README tour;
``tests/typing/misuse.py`` makes mistakes, each marked ``# error: <code>``.
mypy runs on copies of both in an empty directory outside the repository,
with no configuration, as it would in a user's project: the package must be
found through the installed distribution (``make``'s editable install is
a plain .pth line, see tests/test_install.py: an import hook would be
invisible to type checkers) and typed by its ``py.typed``. The tour must pass
``--strict``; the misuse file must fail on exactly its marked lines, which
shows the types are real (a package that mypy cannot find, or an ``Any``,
would let the mistakes through). The tour also runs, as a program.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import NamedTuple

import pytest

pytest.importorskip("mypy", reason="mypy comes with the test extras: pip install -e '.[test]'")

pytestmark = pytest.mark.timeout(180)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPING = os.path.join(ROOT, "tests", "typing")
CACHE = os.path.join(ROOT, ".mypy_cache", "outside")  # warm between runs; never read by the repo's own mypy


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty directory outside the repository, with copies of the programs."""
    where = tmp_path_factory.mktemp("user-project")
    for name in ("tour.py", "misuse.py"):
        shutil.copy(os.path.join(TYPING, name), where / name)
    return str(where)


class Mypy(NamedTuple):
    output: str
    errors: dict[str, list[tuple[int, str]]]  # file -> [(line, error code)]


@pytest.fixture(scope="module")
def mypy_strict(outside: str) -> Mypy:
    """mypy --strict on both programs, run in ``outside``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
         "--cache-dir", CACHE, "tour.py", "misuse.py"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode in (0, 1), result.stderr + result.stdout
    errors: dict[str, list[tuple[int, str]]] = {"tour.py": [], "misuse.py": []}
    for line in result.stdout.splitlines():
        m = re.match(r"(\S+?\.py):(\d+): error: .*\[([a-z-]+)\]$", line)
        assert m or ": note: " in line, f"unexpected mypy output: {line}"
        if m:
            errors.setdefault(m[1], []).append((int(m[2]), m[3]))
    return Mypy(result.stdout, errors)


def test_the_package_is_found_from_outside_the_repository(mypy_strict):
    assert "import-not-found" not in mypy_strict.output, mypy_strict.output
    assert "import-untyped" not in mypy_strict.output, mypy_strict.output


def test_the_tour_passes_mypy_strict(mypy_strict):
    assert mypy_strict.errors["tour.py"] == [], mypy_strict.output


def test_mypy_reports_exactly_the_marked_mistakes(mypy_strict):
    expected = []
    with open(os.path.join(TYPING, "misuse.py"), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            marker = re.search(r"# error: ([a-z-]+)$", line)
            if marker:
                expected.append((number, marker[1]))
    assert len(expected) >= 10
    assert sorted(mypy_strict.errors["misuse.py"]) == expected, mypy_strict.output


def test_the_tour_runs(outside):
    result = subprocess.run(
        [sys.executable, "tour.py"], cwd=outside, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "typed tour OK"
