"""Serve loops: ``endpoint.serve(handler)`` and ``await endpoint.serve_async(handler)``.

The loop every channel server writes, once, with its corner cases decided:

* each message received is given to ``handler``; a :class:`Message` it
  returns goes back as the reply (``reply``: it carries the request's
  txid, so the caller's ``call`` returns it), ``None`` sends nothing (a
  one-way message, or a handler that answered by itself);
* the request is closed after its handler, reply sent: its payload view is
  released (a zero-copy payload's pages go back to the sender) and the
  handles still attached are closed. ``request.take(kind)`` the ones to keep,
  ``bytes(request)`` the data to keep;
* the loop ends, returning None, when the peer is gone (PeerClosed, once
  everything it queued was served) or when this endpoint is closed in this
  process (from another thread or task: how a server is stopped). A reply
  the peer is no longer there to read is dropped, and the loop goes on with
  what is still queued;
* anything else ends it by propagating: an exception from ``handler`` (the
  caller of that request then waits until its own timeout; to answer with
  an error instead, catch inside the handler), a ProtocolError, InvalidHandle
  if this endpoint was closed before serving or cannot receive here,
  PermissionDenied without RECEIVE (or without SEND, at the first reply).
  ``serve_async`` is cancelled like any task.

One request at a time, in order. For requests served concurrently, write
the loop (``docs/guides/channels.md`` shows it): ``recv_async`` in a loop,
a task per request, ``reply_async`` from each task.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Union

from ..core.object import Rights
from ..errors import InvalidHandle, PeerClosed
from ..message.message import Message

if TYPE_CHECKING:
    from .channel import ChannelEndpoint

__all__ = ["Handler", "AsyncHandler", "serve", "serve_async"]

Handler = Callable[[Message], Union[Message, None]]
"""What ``serve`` calls with each request: returns the answer, or None."""

AsyncHandler = Callable[[Message], Union[Awaitable[Union[Message, None]], Message, None]]
"""What ``serve_async`` calls: a coroutine function, or a plain function."""


def serve(endpoint: ChannelEndpoint, handler: Handler) -> None:
    """The loop of :meth:`ChannelEndpoint.serve` (see the module docstring)."""
    endpoint._require(Rights.RECEIVE)  # closed before it starts: an error, not a stop
    while True:
        try:
            request = endpoint.recv()
        except PeerClosed:
            return
        except InvalidHandle:
            if endpoint.valid:
                raise
            return  # closed here: the way to stop a server
        with request:
            answer = _answer(handler(request))
            if answer is not None:
                try:
                    endpoint.reply(request, answer)
                except PeerClosed:
                    answer.close()  # nobody to read it; serve what is queued
                except InvalidHandle:
                    answer.close()
                    if endpoint.valid:
                        raise
                    return


async def serve_async(endpoint: ChannelEndpoint, handler: AsyncHandler) -> None:
    """The loop of :meth:`ChannelEndpoint.serve_async` (see the module docstring)."""
    endpoint._require(Rights.RECEIVE)
    while True:
        try:
            request = await endpoint.recv_async()
        except PeerClosed:
            return
        except InvalidHandle:
            if endpoint.valid:
                raise
            return
        with request:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            answer = _answer(result)
            if answer is not None:
                try:
                    await endpoint.reply_async(request, answer)
                except PeerClosed:
                    answer.close()
                except InvalidHandle:
                    answer.close()
                    if endpoint.valid:
                        raise
                    return


def _answer(result: object) -> Message | None:
    if result is None or isinstance(result, Message):
        return result
    raise TypeError(
        f"a serve handler returns a Message (the reply) or None, not {type(result).__name__}"
    )
