"""``python -m redstone_ipc``: the ``redstone-ipc`` command (see ``redstone_ipc.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
