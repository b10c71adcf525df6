"""Who may connect to a published name: the ``allow=`` of ``publish``.

The decision is made on the kernel's word (``credentials.py``), never on
something the client sent:

* ``allow=None`` (the default): processes running as the publisher's own
  effective uid.
* ``allow=Allow(uids=..., gids=...)``: those, and also processes whose uid
  is listed, or whose effective gid or any supplementary group is listed.
* ``allow=callable``: ``callable(pid, uid, gid)`` decides alone (it is not
  combined with the default): true admits, false refuses. It runs in the
  publication's serving thread; one that raises refuses (and is logged).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Union

from .credentials import PeerCredentials, peer_groups

__all__ = ["Allow", "AllowSpec", "Policy"]


class Allow:
    """Admit these uids and groups besides the publisher's own uid.

    ``Allow(uids=[1001])`` lets uid 1001 in; ``Allow(gids=[44])`` lets in
    every process whose effective gid or a supplementary group is 44. Both
    keep admitting the publisher's own uid. For anything else (a pid, "no
    one but uid 0"), pass a callable to ``allow=`` instead.
    """

    __slots__ = ("uids", "gids")

    uids: frozenset[int]
    gids: frozenset[int]

    def __init__(self, *, uids: Iterable[int] = (), gids: Iterable[int] = ()) -> None:
        self.uids = _ids("uids", uids)
        self.gids = _ids("gids", gids)

    def __repr__(self) -> str:
        return f"Allow(uids={sorted(self.uids)}, gids={sorted(self.gids)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Allow) and (self.uids, self.gids) == (other.uids, other.gids)

    def __hash__(self) -> int:
        return hash((self.uids, self.gids))


AllowSpec = Union[Allow, Callable[[int, int, int], bool], None]
"""What ``publish(..., allow=)`` takes."""


def _ids(what: str, ids: Iterable[int]) -> frozenset[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{what} is an iterable of ints, not {ids!r}")
    out = frozenset(ids)
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**32 - 1:
            raise ValueError(f"{what} holds ids (ints from 0 to 2**32 - 2), not {i!r}")
    return out


class Policy:
    """A publication's admission check, made from its ``allow=``."""

    __slots__ = ("owner", "_allow", "_check")

    def __init__(self, owner: int, allow: AllowSpec) -> None:
        self.owner = owner
        self._check: Callable[[int, int, int], bool] | None = None
        if allow is None:
            self._allow = Allow()
        elif isinstance(allow, Allow):
            self._allow = allow
        elif callable(allow):
            self._allow = Allow()
            self._check = allow
        else:
            raise TypeError(
                f"allow= takes None, Allow(uids=..., gids=...) or a callable(pid, uid, gid), "
                f"not {allow!r}"
            )

    def refusal(self, peer: PeerCredentials, sock: socket.socket) -> str | None:
        """None if ``peer`` (connected on ``sock``) may have the handle, else why not.

        The reason is sent to the refused peer: it says who it is, never what
        the rule is.
        """
        pid, uid, gid = peer
        who = f"pid {pid} (uid {uid}, gid {gid})"
        if self._check is not None:
            # Exceptions propagate: the server logs them and refuses.
            if self._check(pid, uid, gid):
                return None
            return f"{who} is refused by the publisher's allow= check"
        allow = self._allow
        if uid == self.owner or uid in allow.uids or gid in allow.gids:
            return None
        if allow.gids and not allow.gids.isdisjoint(peer_groups(sock)):
            return None
        return f"{who} is not allowed: the name is published for other users"
