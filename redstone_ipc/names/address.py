"""What a name is: its syntax, and the abstract socket address it stands for.

A name such as ``"compositor"`` or ``"org.example/editor-2"`` published by
a process of user ``uid`` is the Linux *abstract* AF_UNIX address::

    \\0redstone-ipc/<uid>/<name>

(``@redstone-ipc/1000/compositor`` in ``ss -xl`` and ``/proc/net/unix``).
Abstract addresses live in the kernel, not in the file system: there is no
file to create, no permission bits, nothing to unlink. The address goes away
the instant the last fd of the socket bound to it closes, including when its
process is SIGKILLed, so a name can be published again at once.

The uid in the address gives every user a namespace of their own: ``connect``
looks in the caller's own namespace unless told another owner. Abstract
addresses have no permissions, so anyone *could* bind an address in anyone's
namespace; ``connect`` therefore checks that the process listening on it
really runs as the namespace's uid (``protocol.check_publisher``).
"""

from __future__ import annotations

import os
import pwd
import re

__all__ = ["PREFIX", "MAX_NAME", "check_name", "address", "owner_uid"]

PREFIX = "redstone-ipc"
"""First component of every address: what ``ss -xl | grep redstone-ipc`` finds."""

MAX_NAME = 80
"""Longest name, in characters. sun_path holds 108 bytes: 1 for the leading
NUL, ``len("redstone-ipc/4294967295/")`` = 24 for the prefix and the
largest uid, and 80 leaves a margin."""

# Segments of letters, digits, '_', '.', '-', separated by single '/'; a
# segment never starts with '.' or '-' (no "..", no option look-alikes).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


def check_name(name: str) -> str:
    """Return ``name`` if it is valid; ValueError (TypeError if not a str) otherwise.

    Valid: 1 to 80 ASCII characters; letters, digits, ``_ . - /``; ``/``
    separates non-empty segments, and no segment starts with ``.`` or ``-``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a name is a str, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"a name has 1 to {MAX_NAME} characters, not {len(name)}: {name!r}")
    if not name.isascii() or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"bad name {name!r}: use letters, digits, '_', '.', '-', with '/' between "
            "non-empty segments; a segment cannot start with '.' or '-'"
        )
    return name


def address(name: str, uid: int) -> bytes:
    """The abstract AF_UNIX address of ``name`` in user ``uid``'s namespace."""
    return f"\0{PREFIX}/{uid}/{check_name(name)}".encode("ascii")


def owner_uid(owner: int | str | None) -> int:
    """The uid whose namespace to use: ``None`` is this process's effective uid;
    a str is a user name (ValueError if there is no such user)."""
    if owner is None:
        return os.geteuid()
    if isinstance(owner, bool) or not isinstance(owner, (int, str)):
        raise TypeError(f"owner is a uid or a user name, not {owner!r}")
    if isinstance(owner, str):
        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ValueError(f"no user named {owner!r}") from None
    if not 0 <= owner < 2**32 - 1:  # (uid_t)-1 is "no uid"
        raise ValueError(f"not a uid: {owner}")
    return owner
