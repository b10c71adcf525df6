"""Port rights (seed: ``ipc/port/rights.rs``): who may do what with a port.

A port has one receiver and any number of senders (1:N). The rights, and
what stops a handle from doing more than its rights allow:

============  ==========================================  ====================
right         lets the holder                             enforced by
============  ==========================================  ====================
SEND          ``send``/``send_async``                     the API; and a
                                                          handle without
                                                          RECEIVE never holds
                                                          an fd that can read
RECEIVE       ``recv``/``try_recv``/``recv_async``,       the kernel: only a
              ``close`` (closes the port for everyone),   RECEIVE handle
              ``repair``                                  carries the
                                                          receiving socket end
DUPLICATE     ``duplicate`` (mint SEND rights)            the API
TRANSFER      attaching the handle to a message           the API
WAIT          reserved for readiness waits                --
============  ==========================================  ====================

What travels with a handle (``transfer_fds``), by rights:

* any handle: the **sending socket end** (every SEND right is a dup of the
  same socket, shut for reading with ``shutdown(SHUT_RD)``: recv on it
  returns end-of-file at once, in every process, whoever holds it), the
  **credit eventfd** (room left in the queue), the **repair-request
  eventfd**, and the **window lock** (a memfd that senders ``flock`` while
  they hold a credit; see ``credits.py``).
* a RECEIVE handle, in addition: the **receiving socket end**. It is the
  only fd that reads the queue, so the RECEIVE right is the kernel's to
  enforce: a process that was sent a SEND-only handle has no fd that can
  read a message, whatever it does with raw syscalls.

A handle without SEND still carries the sending end (the port's identity is
that socket), so SEND alone is enforced by the API, not by the kernel.
"""

from __future__ import annotations

from ..core.object import Rights

__all__ = ["DEFAULT_RIGHTS", "ALLOWED_RIGHTS", "SEND_RIGHTS", "carries_receive"]

DEFAULT_RIGHTS = Rights.SEND | Rights.RECEIVE | Rights.BASIC
"""What ``Port(...)`` returns: the receiver's handle, which can also send."""

ALLOWED_RIGHTS = DEFAULT_RIGHTS
"""The most a port handle may ever hold (a received one asking for more is refused)."""

SEND_RIGHTS = Rights.SEND | Rights.BASIC
"""The usual client right: send, pass on, duplicate: ``port.duplicate(SEND_RIGHTS)``."""


def carries_receive(rights: Rights) -> bool:
    """Whether a handle with ``rights`` travels with the receiving socket end."""
    return bool(rights & Rights.RECEIVE)
