"""Run every benchmark (``make bench``): each prints ratios measured in one run.

    python3 bench/run.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

BENCHES = [
    ("The wire format's CPU cost vs bare syscalls", "bench_wire.py", [], ["--number", "5000"]),
    ("Port and Channel round trips vs a raw socketpair", "bench_port.py", [],
     ["--rounds", "2000", "--runs", "3", "--placement", "same"]),
    ("Futex ping-pong vs raw ctypes futex", "bench_futex.py", [], ["--rounds", "5000", "--runs", "3"]),
    ("Large-buffer hand-off vs multiprocessing.Queue", "bench_shm.py", [], ["--repeat", "3"]),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = 0
    for title, script, args, quick_args in BENCHES:
        print(f"\n== {title} ({script})", flush=True)
        cmd = [sys.executable, os.path.join(HERE, script), *(quick_args if quick else args)]
        failed += subprocess.call(cmd) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
