"""User mistakes: one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["UsageError", "Parser"]


class UsageError(Exception):
    """A mistake of the user's (a bad option, an unknown name): ``main`` prints
    ``<prog>: <message>`` on one line of stderr and returns 2. ``prog`` is the
    command that was given (``redstone-ipc demo``); ``main`` fills it in when
    it is not known where the error is raised."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake raises UsageError instead of printing the usage
    and exiting: ``main`` says it in one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)
