"""The ``redstone-ipc`` command: ``demo``, ``ls`` and ``bench``.

``main(argv)`` parses the arguments and runs one subcommand, returning its
exit status: 0 when all went well, 1 when the command ran and found a
problem, 2 for a mistake of the user's (a bad option, an unknown name:
one line on stderr, never a traceback), 130 after Ctrl-C. The console
script ``redstone-ipc`` and ``python -m redstone_ipc`` both call it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .usage import Parser, UsageError

__all__ = ["main", "PROG"]

PROG = "redstone-ipc"
BENCH_MODULE = "redstone_ipc.benchmarks.cli"


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's."""
    from . import demo, ls

    top = Parser(
        prog=PROG,
        description="The IPC model of the RedstoneOS microkernel between real Linux processes.",
        epilog=f"'{PROG} COMMAND --help' tells more about each command.",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subs = {"demo": demo.add_parser(commands), "ls": ls.add_parser(commands)}
    subs["demo"].set_defaults(run=demo.run)
    subs["ls"].set_defaults(run=ls.run)
    commands.add_parser(
        "bench", add_help=False, help="run the benchmarks (every argument goes to them)",
    )
    return top, subs


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``redstone-ipc`` with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = PROG
    try:
        if args and args[0] == "bench":
            prog = f"{PROG} bench"
            return _bench(args[1:])
        top, subs = parser()
        ns, extra = top.parse_known_args(args)
        if ns.command is None:
            raise UsageError(f"a command is needed: demo, ls or bench (see {PROG} --help)")
        prog = f"{PROG} {ns.command}"
        if extra:
            subs[ns.command].error(f"unrecognized arguments: {' '.join(extra)}")
        status: int = ns.run(ns)
        return status
    except UsageError as e:
        print(f"{e.prog or prog}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `redstone-ipc ls | head`
        sys.stderr.close()  # nothing more can be said
        return 1


def _bench(argv: list[str]) -> int:
    """``bench`` is ``redstone_ipc.benchmarks.cli.main``: every argument is its own."""
    try:
        module = importlib.import_module(BENCH_MODULE)
    except ModuleNotFoundError as e:
        if e.name is None or not BENCH_MODULE.startswith(e.name):
            raise  # something the benchmarks import is missing: a real error
        raise UsageError(f"this installation has no benchmarks yet ({BENCH_MODULE} is missing)") from None
    status: int = module.main(argv)
    return status
