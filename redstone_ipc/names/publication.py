"""Publishing a handle under a name: ``publish`` and ``Publication``.

A Publication owns three things: a duplicate of the handle (what it hands
out copies of), an abstract SOCK_SEQPACKET listener bound to the name, and a
daemon thread that serves it. The thread sleeps in ``poll`` on the listener
and an eventfd; for each connection it reads the client's credentials from
the kernel, decides (``allow.py``), answers (``protocol.py``) and closes.

One thread per publication, rather than one per process for all of them:
a process publishes a handful of names, a sleeping thread costs nothing,
and each name is then served on its own (a slow ``allow=`` callable holds up
only its own name) with a lifecycle that is just "start" and "join". The
thread never touches the user's main thread or event loop, which is why
``publish`` works the same anywhere, inside a running asyncio loop included.

Closing stops the thread, then closes the listener: the name is free the
moment ``close`` returns. Forked children never keep a name alive: a child
closes its copies of every listener first thing, and ``close`` waits for
children that have not yet (the serving threads did not survive the fork
anyway; see the end of this module).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import threading
import time
import weakref
from typing import Any

from .. import introspect
from ..core.object import Handle, ObjectType, Rights
from ..errors import NameInUse, PermissionDenied
from . import protocol
from .address import address
from .allow import AllowSpec, Policy
from .credentials import peer_credentials

__all__ = ["Publication", "publish"]

log = logging.getLogger("redstone_ipc.names")

_live: weakref.WeakSet[Publication] = weakref.WeakSet()  # for the fork handler
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def publish(name: str, handle: Handle, *, allow: AllowSpec = None) -> Publication:
    """Publish ``handle`` under ``name`` until the Publication is closed.

    Any process allowed by ``allow`` (by default: the same user) can then
    ``connect(name)`` and receives a new duplicate of the handle, with the
    rights it has here, never more. Serving happens in a daemon thread, so
    ``publish`` returns at once and works anywhere, inside a running asyncio
    loop included. Keep the Publication and close it (or use ``with``): it
    serves until then, or until the process exits.

    * The handle needs DUPLICATE and TRANSFER (PermissionDenied otherwise).
    * A Port handle holding RECEIVE is published without it: clients get
      SEND (and the rest it holds), and only this process receives.
    * A channel endpoint cannot be published (PermissionDenied): it has one
      peer, and a name has many clients. Publish a Port, and give each
      client that sends a request its own channel.
    * ``name``: 1 to 80 characters of ``A-Z a-z 0-9 _ . - /`` (ValueError
      otherwise); it lives in this user's namespace.
    * NameInUse if a live process already publishes ``name``.
    * ``allow``: None (this uid only), ``Allow(uids=..., gids=...)`` (those
      as well), or ``callable(pid, uid, gid) -> bool`` (decides alone).

    The handle passed stays yours: the Publication holds its own duplicate,
    closed when the Publication is.
    """
    return Publication(name, handle, allow=allow)


class Publication:
    """A handle published under a name; serves ``connect`` until closed.

    Made by :func:`publish`. A context manager: ``with publish(...) as pub:``
    closes it on exit.
    """

    name: str
    """The name, as published."""
    owner: int
    """The uid whose namespace holds the name (this process's effective uid)."""
    granted: int
    """How many connections were admitted (each was sent a duplicate)."""
    refused: int
    """How many connections were refused by the ``allow`` check."""

    def __init__(self, name: str, handle: Handle, *, allow: AllowSpec = None) -> None:
        self.owner = os.geteuid()
        self._address = address(name, self.owner)  # validates the name first
        self.name = name
        self._policy = Policy(self.owner, allow)
        self.granted = 0
        self.refused = 0
        self._closed = False
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._wake = -1
        self._thread: threading.Thread | None = None
        self._handle = _published_duplicate(handle)
        self._type = self._handle.type
        # Known to the fork handler before the socket exists: a fork from
        # another thread at any point from here on is covered.
        _live.add(self)
        try:
            self._listener = _listen(self._address, name)
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._thread = threading.Thread(
                target=self._serve, args=(self._listener, self._wake),
                name=f"redstone-ipc publish {name}", daemon=True,
            )
            self._thread.start()
        except BaseException:
            self._release()
            raise

    # -- what it is --------------------------------------------------------

    @property
    def rights(self) -> Rights:
        """The rights every connecting process gets."""
        return self._handle.rights

    @property
    def type(self) -> ObjectType:
        """The kind of object published."""
        return self._type

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<Publication {self.name!r} uid={self.owner} {self._type.name}"
            f" granted={self.granted} refused={self.refused}{state}>"
        )

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Stop serving and free the name; returns once both are done.

        The serving thread has ended and the listener is closed when this
        returns (called from inside an ``allow`` callable, they end as soon
        as the callable returns). Closing twice does nothing. Processes that
        already connected keep their handles.
        """
        with self._lock:  # _release closes the eventfd under the same lock
            if not self._closed:
                self._closed = True
                if self._wake >= 0:
                    os.eventfd_write(self._wake, 1)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it closes the listener as it ends
            _wait_for_forked_children()  # and no forked child holds a copy

    def __enter__(self) -> Publication:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _release(self) -> None:
        """Close the listener, the eventfd and the handle (once)."""
        _live.discard(self)
        with self._lock:
            self._closed = True
            if self._listener is not None:
                self._listener.close()  # the name is free from here on
            if self._wake >= 0:
                os.close(self._wake)
                self._wake = -1
        self._handle.close()

    def _after_fork_in_child(self) -> None:
        # The serving thread did not survive the fork; the copied listener
        # must not keep the name alive after the parent closes it.
        self._thread = threading.current_thread()  # nothing left to join
        self._lock = threading.Lock()
        self._release()

    # -- serving (the publication's thread) -------------------------------------

    def _serve(self, listener: socket.socket, wake: int) -> None:
        try:
            poller = select.poll()
            poller.register(listener, select.POLLIN)
            poller.register(wake, select.POLLIN)
            while not self._closed:
                poller.poll()
                self._accept_all(listener, wake)
        except BaseException:  # pragma: no cover - a bug: say so, stop serving
            log.exception("%s: the serving thread failed; the name is no longer served", self.name)
        finally:
            self._release()

    def _accept_all(self, listener: socket.socket, wake: int) -> None:
        """Answer every connection waiting in the backlog."""
        while not self._closed:
            try:
                conn, peer_address = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno not in _RESOURCE_ERRORS:
                    raise
                # Out of fds or memory: the connection stays queued and poll
                # would return at once. Say so, then retry a little later.
                log.error("%s: cannot accept a connection (%s); retrying", self.name, e)
                pause = select.poll()
                pause.register(wake, select.POLLIN)
                pause.poll(100)  # ms, or until close
                return
            with conn:
                try:
                    if protocol.is_query(peer_address):
                        self._answer_query(conn)
                    else:
                        self._answer(conn)
                except Exception:  # one client's trouble never stops the others
                    log.exception("%s: failed to answer a connection", self.name)

    def _answer(self, conn: socket.socket) -> None:
        """Check one client and send it the handle or the refusal."""
        conn.setblocking(False)  # one record into an empty queue: never blocks
        try:
            peer = peer_credentials(conn)
            try:
                reason = self._policy.refusal(peer, conn)
            except Exception:
                log.exception("%s: the allow= check raised; refusing pid %d", self.name, peer.pid)
                reason = f"pid {peer.pid} (uid {peer.uid}, gid {peer.gid}): the publisher's check failed"
            if reason is not None:
                self.refused += 1
                log.warning("%s: refused a connection: %s", self.name, reason)
                protocol.refuse(conn, reason)
                return
            self.granted += 1
            try:
                duplicate = self._handle.duplicate()
            except Exception as e:  # pragma: no cover - the held duplicate always can
                log.exception("%s: cannot duplicate the published handle", self.name)
                protocol.fail(conn, f"{type(e).__name__}: {e}")
                return
            protocol.grant(conn, duplicate)
            log.debug("%s: sent a handle to pid %d (uid %d, gid %d)", self.name, *peer)
        except (BrokenPipeError, ConnectionResetError, BlockingIOError) as e:
            log.debug("%s: the client went away before its answer (%s)", self.name, e)


    def _answer_query(self, conn: socket.socket) -> None:
        """Tell a status query (``status.py``) what is published and what this
        process holds: to processes of this uid only."""
        conn.setblocking(False)
        try:
            peer = peer_credentials(conn)
            if peer.uid != self.owner:
                reason = (
                    f"pid {peer.pid} (uid {peer.uid}, gid {peer.gid}) may not query: a "
                    "publication answers status queries from its own uid only"
                )
                log.info("%s: refused a status query: %s", self.name, reason)
                protocol.refuse(conn, reason)
                return
            protocol.answer_status(conn, json.dumps(self.status()).encode())
        except (BrokenPipeError, ConnectionResetError, BlockingIOError) as e:
            log.debug("%s: the querying client went away (%s)", self.name, e)

    def status(self) -> dict[str, Any]:
        """What a status query is told (see ``redstone_ipc.names.status``):
        the name, this process, the published object (``introspect.describe``,
        with the rights clients get) and every object this process holds
        (``introspect.objects``)."""
        with self._lock:
            handle = None if self._closed else self._handle
        return {
            "name": self.name,
            "pid": os.getpid(),
            "uid": self.owner,
            "kind": introspect.kind_name(self._type),
            "rights": introspect.rights_text(self._handle.rights),
            "granted": self.granted,
            "refused": self.refused,
            "object": introspect.describe(handle) if handle is not None else None,
            "objects": introspect.objects(),
        }


def _published_duplicate(handle: Handle) -> Handle:
    """The Publication's own duplicate of ``handle``: the most a client may get."""
    if not isinstance(handle, Handle):
        raise TypeError(f"publish takes a handle, not {type(handle).__name__}")
    if handle.type is ObjectType.CHANNEL:
        raise PermissionDenied(
            "a channel endpoint cannot be published: it has exactly one peer, and a name "
            "has any number of clients (endpoints cannot be duplicated). Publish a Port "
            "instead, and give each client its own channel: the client sends a request "
            "carrying one endpoint of a new pair and keeps the other."
        )
    rights = handle.rights
    missing = (Rights.DUPLICATE | Rights.TRANSFER) & ~rights
    if missing:
        raise PermissionDenied(
            f"publishing needs DUPLICATE and TRANSFER; {handle!r} lacks {missing!r}"
        )
    if rights & Rights.RECEIVE:
        # A name hands copies to every allowed process: never the receiving end.
        if not rights & Rights.SEND:
            raise PermissionDenied(
                f"{handle!r} holds RECEIVE but not SEND: published without RECEIVE, it "
                "would give clients nothing to use"
            )
        rights &= ~Rights.RECEIVE
    return handle.duplicate(rights)


def _listen(addr: bytes, name: str) -> socket.socket:
    """A non-blocking SOCK_SEQPACKET listener bound to ``addr``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.setblocking(False)
        try:
            listener.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise NameInUse(
                    f"name {name!r} is already published by a live process "
                    f"(address @{addr[1:].decode()})"
                ) from None
            raise
        listener.listen(socket.SOMAXCONN)
    except BaseException:
        listener.close()
        raise
    return listener


# -- fork: a child must not keep a name alive ------------------------------------
#
# A forked child inherits every listener fd, and a bound address lives while
# any copy does. The child closes its copies first thing after the fork, but
# it may not have run yet when the parent closes a publication and publishes
# the name again. So each fork made while something is published gets a
# pipe: the child writes a byte once it let go, and ``close`` waits for the
# bytes of children that have not yet (a fork costs a pipe, not a wait). A
# child that does not answer within _FORK_WAIT (stopped at birth, say) is
# not waited for again.

_FORK_WAIT = 1.0
_fork = threading.local()  # the pipe of the fork this thread is making
_acks: list[int] = []  # read ends from children that may not have let go yet
_acks_lock = threading.Lock()


def _before_fork() -> None:
    _fork.pipe = os.pipe2(os.O_CLOEXEC) if _live else None


def _after_fork_in_parent() -> None:
    pipe = getattr(_fork, "pipe", None)
    _fork.pipe = None
    if pipe is not None:
        os.close(pipe[1])
        with _acks_lock:
            _acks.append(pipe[0])
            _collect_acks(0)  # forget children that already let go


def _wait_for_forked_children() -> None:
    """Return once every child forked while a name was published has closed
    its copies of the listeners (or _FORK_WAIT has passed)."""
    with _acks_lock:
        _collect_acks(_FORK_WAIT)
        for r in _acks:  # never answered: not waited for again
            os.close(r)
        _acks.clear()


def _collect_acks(timeout: float) -> None:
    """Close the read ends whose child has let go (a byte, or EOF if it died),
    waiting up to ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    waiting = []
    for r in _acks:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        if poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            os.close(r)
        else:
            waiting.append(r)
    _acks[:] = waiting


def _after_fork_in_child() -> None:
    global _acks_lock
    _acks_lock = threading.Lock()  # another thread may have held it at fork time
    for r in _acks:  # the parent's, not ours
        os.close(r)
    _acks.clear()
    for publication in list(_live):
        try:
            publication._after_fork_in_child()
        except Exception:  # pragma: no cover - never fail a fork over this
            pass
    pipe = getattr(_fork, "pipe", None)
    _fork.pipe = None
    if pipe is not None:
        os.close(pipe[0])
        os.write(pipe[1], b"\0")  # a byte, not EOF: another thread's child may hold it too
        os.close(pipe[1])


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
