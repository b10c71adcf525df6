"""The README's "Shared memory" and "Futexes and locks" snippets run as written.

Each section's ``python`` blocks run in order, as one program, in a fresh
interpreter (as a reader would paste them), and must finish without error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ["### Shared memory: zero copy", "### Futexes and locks in shared memory"]


def section_code(title: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(title + "\n") + len(title)
    following = re.compile(r"^#{2,3} ", re.M).search(text, start)  # the next heading
    body = text[start : following.start() if following else None]
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    assert blocks, f"no python snippet under {title!r}"
    return "\n".join(blocks)


@pytest.mark.parametrize("title", SECTIONS)
def test_the_snippets_of_the_section_run_as_written(title):
    code = section_code(title)
    if "numpy" in code:
        pytest.importorskip("numpy")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, f"{title}:\n{result.stderr}"
