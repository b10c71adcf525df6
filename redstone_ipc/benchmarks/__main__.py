"""``python -m redstone_ipc.benchmarks``: the same as ``redstone-ipc bench``."""

import sys

from .cli import main

sys.exit(main())
