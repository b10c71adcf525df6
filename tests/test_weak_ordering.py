"""The ring protocol on its weakly ordered path (aarch64's), on any machine.

On x86-64 the rings publish with plain aligned stores and loads (total
store order). ``REDSTONE_IPC_ATOMICS=libatomic`` forces the path a weakly
ordered CPU takes: release stores, acquire loads and fences through
libatomic (``linux.ordering``). Here the Port and Channel specifications
run again in a fresh interpreter with that path forced, so every branch
``if not TSO:`` of the transport runs in CI, across real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from redstone_ipc.linux import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = ["tests/test_port.py", "tests/test_channel.py", "tests/test_port_room.py", "tests/test_ring_records.py"]
ENV = dict(os.environ, **{atomic.ENV_VAR: "libatomic"})


def test_the_variable_selects_the_weakly_ordered_path():
    probe = subprocess.run(
        [sys.executable, "-c", "from redstone_ipc.linux import ordering; print(ordering.TSO)"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert probe.stdout.strip() == "False", probe.stderr


@pytest.mark.timeout(600)
def test_ports_and_channels_hold_on_the_weakly_ordered_path():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SPECS],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=580,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
