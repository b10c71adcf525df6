"""The process's limit on open fds (RLIMIT_NOFILE), raised when a receiver
needs more.

Every connection to a Port or channel endpoint costs its receiving process
3 fds (socket, ring mapping, doorbell). Linux distributions start processes
with a soft limit of 1024 and a much higher hard limit (often 524288); the
soft one alone would cap a server at about 330 clients. So, as Go's runtime
does for every program, a receiver raises its soft limit to the hard limit
once its fds come within ``HEADROOM`` of it. The hard limit is never
exceeded: past it, the receiver's ``recv`` raises OutOfFds (EMFILE) and new
senders wait, until fds are free again.

(Only ``select.select`` cares about fds above 1023; nothing here uses it.)
"""

from __future__ import annotations

import resource

__all__ = ["HEADROOM", "make_fd_room"]

HEADROOM = 64


def make_fd_room(highest_fd: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one if ``highest_fd`` (a fd
    just received) is within HEADROOM of it. Called as connections arrive."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or highest_fd + HEADROOM < soft:
        return
    new_soft = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if new_soft <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    except (ValueError, OSError):
        pass  # not allowed here: OutOfFds tells the receiver when it runs out


def _nr_open() -> int:
    """The kernel's ceiling for any fd limit."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
