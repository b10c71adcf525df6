"""Every ```python snippet of README.md and docs/ runs as written.

Each section (a ``##``/``###``/``####`` heading and what follows it, up to
the next heading) is one program: its python blocks in order, run in a fresh
interpreter, from a file in an empty directory outside the repository (as a
reader who pastes the section into ``snippet.py`` would run it: the
installed package, nothing from the repository's working directory). It
must exit 0 and write no traceback to stderr (an exception ignored in a
``__del__`` or a thread counts). So a section cannot lean on an earlier one:
it imports and creates what it uses.

A block whose first line is ``# <name>.py`` is a program of its own, to be
started beside another (a server and its client): the section runner leaves
it out, and :data:`RUN_ELSEWHERE` must name the test that runs it, so that
no snippet goes untested. Blocks in other languages (``sh``) are not run.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
)

RUN_ELSEWHERE = {
    ("README.md", "server.py"): "tests/test_names.py::test_the_readme_names_snippets_run_as_written",
    ("README.md", "client.py"): "tests/test_names.py::test_the_readme_names_snippets_run_as_written",
}
"""Named programs (see the module docstring) and the test that runs them."""

GUIDES = [
    "messages", "ports", "channels", "shared-memory", "sync", "pipes", "names", "processes",
    "asyncio", "time",
]
"""docs/guides/<name>.md: a short guide per primitive, each with runnable examples."""

_HEADING = re.compile(r"^#{2,4} (.+)$", re.M)
_BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_NAMED = re.compile(r"#\s*([\w.-]+\.py)\s*$")


class Section(NamedTuple):
    doc: str  # path relative to the repository
    title: str
    code: str  # the section's program: its python blocks, in order
    named: list[str]  # programs of their own (``# name.py`` blocks)


def sections(doc: str) -> list[Section]:
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    found = []
    starts = [(m.start(), m.group(1).strip()) for m in _HEADING.finditer(text)]
    # Headings inside code blocks (a "# comment" line is not a heading: it
    # has one '#', and _HEADING wants two to four) need no special care.
    for i, (start, title) in enumerate([(0, "(top)")] + starts):
        end = starts[i][0] if i < len(starts) else len(text)
        blocks, named = [], []
        for lang, body in _BLOCK.findall(text[start:end]):
            if lang != "python":
                continue
            first = body.split("\n", 1)[0]
            m = _NAMED.fullmatch(first.strip())
            if m:
                named.append(m[1])
            else:
                blocks.append(body)
        if blocks or named:
            found.append(Section(doc, title, "\n".join(blocks), named))
    return found


ALL = [s for doc in DOCS for s in sections(doc)]
RUNNABLE = [s for s in ALL if s.code.strip()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("section", RUNNABLE, ids=[f"{s.doc}: {s.title}" for s in RUNNABLE])
def test_the_section_runs_as_written(section: Section, tmp_path) -> None:
    if re.search(r"^\s*import numpy", section.code, re.M):
        pytest.importorskip("numpy")
    program = tmp_path / "snippet.py"
    program.write_text(section.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(program)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )
    assert result.returncode == 0, f"{section.doc}, {section.title}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{section.doc}, {section.title}:\n{result.stderr}"


def test_every_named_program_is_run_by_some_test() -> None:
    named = {(s.doc, name) for s in ALL for name in s.named}
    assert named == set(RUN_ELSEWHERE), "a '# name.py' block nobody runs, or a stale entry"


def test_every_guide_exists_and_has_examples() -> None:
    for guide in GUIDES:
        doc = f"docs/guides/{guide}.md"
        assert doc in DOCS, f"{doc} is missing"
        assert any(s.doc == doc for s in RUNNABLE), f"{doc} has no runnable example"


def test_the_extraction_finds_what_a_reader_sees() -> None:
    # A guard on the extractor itself: the README's tour is in it, blocks of
    # other languages are not, and named programs are set apart.
    readme = {s.title: s for s in sections("README.md")}
    assert "Port(capacity=16)" in readme["Ports: one server, many clients"].code
    assert "make demo" not in "".join(s.code for s in readme.values())
    names = readme["Names: unrelated processes meet"]
    assert names.named == ["server.py", "client.py"] and "publish(" in names.code
