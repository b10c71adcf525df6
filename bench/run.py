"""``make bench``: the benchmark suite, the same as ``redstone-ipc bench``.

    python3 bench/run.py [--quick] [--json FILE] [--plot FILE.png] [--placement P] [--only B]

Everything is in ``redstone_ipc/benchmarks/`` (so an installed package can
run it); ``--help`` lists the options. The other scripts in this folder are
narrower measurements for developers (the wire format's CPU cost, atomics,
pipes, names, ...), each runnable on its own.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc.benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
